"""The second candidate: fine-tune the LLM grader (SmolLM2-135M) on the answer word.

Same examples as the classifier (grading/sources.py), rendered with the LLM grading
template (template.render + rule); the loss is the next-token cross-entropy of the answer
word at the prompt's end,

    L = -log p(word_y | grading prompt)          (over the whole vocabulary)

Only the top ``train_layers`` decoder layers and the final norm are trained (the embeddings
are tied to the output head and stay frozen). The result is a plain Hugging Face folder,
which the transformers, vllm and openai backends load unchanged (``models.grader``), with
a manifest like the classifier's (kind ``llm``). It is a full model (~270 MB in bf16), so
it is built into ``paths.cache_dir/graders``, never shipped in git.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ramo_stream.label.grading.sources import Example
from ramo_stream.label.grading.template import DEFAULT_WORDS, answer_token_ids, render
from ramo_stream.label.grading.train_classifier import as_request


def train_llm(
    base: str | Path,
    examples: Sequence[Example],
    rule_text: Callable[[str], str],
    train_layers: int = 2,
    lr: float = 5e-5,
    max_tokens: int = 384,
    seed: int = 0,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, Any, list[float]]:
    """One pass, batch 1 (prompts differ a lot in length); returns (model, tokenizer, losses)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    word_ids = answer_token_ids(tokenizer, DEFAULT_WORDS)
    n = model.config.num_hidden_layers
    top = {f"model.layers.{i}." for i in range(n - train_layers, n)}
    params = []
    for name, p in model.named_parameters():
        p.requires_grad = any(t in name for t in top) or name == "model.norm.weight"
        if p.requires_grad:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rows = list(examples)
    random.Random(seed).shuffle(rows)
    losses: list[float] = []
    model.train()
    for step, e in enumerate(rows, 1):
        req = as_request(e, rule_text(e.rule_id))
        prompt = render(tokenizer, req.prompt, req.response, DEFAULT_WORDS).full(req.rule_text)
        ids = tokenizer.encode(prompt, add_special_tokens=False)[-max_tokens:]
        logits = model(input_ids=torch.tensor([ids]), logits_to_keep=1).logits[0, -1]
        loss = torch.nn.functional.cross_entropy(
            logits.unsqueeze(0), torch.tensor([word_ids[e.answer]])
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if on_step:
            on_step(step, len(rows), losses[-1])
    return model.eval(), tokenizer, losses


def save_llm(model: Any, tokenizer: Any, folder: Path, manifest: dict[str, Any]) -> Path:
    """A Hugging Face folder (bf16) plus manifest.json; loadable as ``models.grader``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    manifest = {"kind": "llm", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                **manifest}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder
