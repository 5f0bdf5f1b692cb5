"""Grader on Hugging Face transformers: one shared-prefix KV cache per response.

For each (conversation, response) the prompt prefix (everything before the rule) is run
once; its KV cache is repeated over a batch of rules, and only the rule-specific suffixes
are run on top of it. The suffixes are left-padded *inside* the sequence: the pad tokens
sit between prefix and suffix, masked out as keys, and position ids skip them, so the last
position of every row is its real last token and only that position's logits are computed
(``logits_to_keep=1``), not a vocabulary-wide row for every token.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from ramo_stream.label.grading.base import AnswerProbs, GradeRequest, PromptTooLong, normalise
from ramo_stream.label.grading.template import (
    DEFAULT_WORDS,
    TEMPLATE_VERSION,
    AnswerWords,
    check_grader_tokenizer,
    render,
)


class TransformersGrader:
    def __init__(
        self,
        model: str,
        words: AnswerWords = DEFAULT_WORDS,
        dtype: str = "auto",
        device: str | None = None,
        rule_batch: int = 64,
        max_prompt_tokens: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.template_version = TEMPLATE_VERSION
        self.calibrate_by_default = True
        self.words = words
        self.rule_batch = rule_batch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # Refuse to run without a chat template or with a multi-token answer word.
        answer_ids = check_grader_tokenizer(self.tokenizer, model, words)
        if dtype == "auto":  # bf16 matmuls are slow on most CPUs; on GPUs they are the norm
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise ValueError(
                f"grader dtype {dtype!r} is not a torch dtype; use float32 or bfloat16"
            )
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype)
        self.model.to(self.device).eval()  # type: ignore[arg-type]  # stubs want a model
        self.answer_ids = torch.tensor(answer_ids, device=self.device)
        context = getattr(self.model.config, "max_position_embeddings", None)
        self.max_prompt_tokens = max_prompt_tokens or context
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id or 0

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @torch.inference_mode()
    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        # Group the requests that share (conversation, response): they share a prefix.
        groups: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
        for i, r in enumerate(requests):
            key = (repr(r.prompt), r.response)
            groups.setdefault(key, []).append(i)
        out: list[AnswerProbs | None] = [None] * len(requests)
        for indices in groups.values():
            first = requests[indices[0]]
            prompt = render(self.tokenizer, first.prompt, first.response, self.words)
            rules = [requests[i].rule_text for i in indices]
            for i, probs in zip(indices, self._grade_rules(prompt, rules), strict=True):
                out[i] = probs
        return [p for p in out if p is not None]

    def _grade_rules(self, prompt: Any, rules: list[str]) -> list[AnswerProbs]:
        prefix = torch.tensor([self._encode(prompt.prefix)], device=self.device)
        p_len = prefix.shape[1]
        if self.max_prompt_tokens and p_len > self.max_prompt_tokens:
            raise PromptTooLong(
                f"grading prompt is {p_len} tokens before the rule, over the limit of"
                f" {self.max_prompt_tokens} (grader.max_prompt_tokens or the model's context);"
                " shorten the conversation or raise the limit"
            )
        cache = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values
        results: list[AnswerProbs] = []
        cache_batch = 1
        for start in range(0, len(rules), self.rule_batch):
            chunk = [
                self._encode(r + prompt.suffix) for r in rules[start : start + self.rule_batch]
            ]
            n, width = len(chunk), max(len(c) for c in chunk)
            ids = torch.full((n, width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((n, width), dtype=torch.long)
            for row, toks in enumerate(chunk):
                ids[row, width - len(toks) :] = torch.tensor(toks)
                mask[row, width - len(toks) :] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            # Chunks are rule_batch long except possibly the last: repeat the prefix cache
            # to the first chunk's size, then shrink it once for a shorter last chunk.
            if start == 0:
                cache.batch_repeat_interleave(n)
            elif n < cache_batch:
                cache.batch_select_indices(torch.arange(n, device=self.device))
            cache_batch = n
            # Pads (left of each suffix) get clamped positions; they are masked as keys, and
            # the real tokens count on from the prefix as if the pads were not there.
            positions = (p_len + mask.cumsum(-1) - 1).clamp(min=p_len)
            prefix_mask = torch.ones((n, p_len), dtype=torch.long, device=self.device)
            attention = torch.cat([prefix_mask, mask], dim=1)
            logits = self.model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1, :]
            cache.crop(-width)  # drop the suffixes: the prefix cache serves the next chunk
            logp = torch.log_softmax(logits.float(), dim=-1)[:, self.answer_ids].tolist()
            results.extend(normalise(*row) for row in logp)
        return results
