"""genrobust."""
