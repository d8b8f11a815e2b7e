"""Robustness evaluation with AutoAttack and the result JSON."""
