"""The report: one table of every result, plots that explain it, and a scaling fit."""
