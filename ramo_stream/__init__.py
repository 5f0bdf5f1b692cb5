"""ramo-stream: a streaming, online reward-model system for LLM safety."""

__version__ = "0.1.0"
