"""Pure logic over numbers and small typed records: no ray, kafka, vllm or transformers."""
