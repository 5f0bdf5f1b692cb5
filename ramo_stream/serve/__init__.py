"""Ray Serve apps: the labeler (and, later, the reward service)."""
