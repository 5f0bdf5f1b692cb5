"""The continuous reward-model trainer on Ray Train."""
