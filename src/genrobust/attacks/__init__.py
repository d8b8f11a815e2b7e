"""White-box attacks used inside training and for validation (AutoAttack lives in evaluation/)."""
