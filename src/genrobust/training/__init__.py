"""Standard and adversarial training: losses, batch mixing, EMA, resumable state."""
