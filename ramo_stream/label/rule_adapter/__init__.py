"""The Rule Adapter: predicts, per pair, the rules worth grading."""
