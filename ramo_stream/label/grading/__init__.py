"""LLM graders: the interface, the prompt template, and the backends."""
