"""Classifier architectures and their checkpoints."""
