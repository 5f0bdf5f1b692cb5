"""Reward model, its input format, and the versioned registry."""
