"""Fine-tune the classifier grader on rule-level examples and publish it as an artifact.

Loss per rule-level example (x = rule + conversation + response, y its answer word):

    L_rule = -log softmax(W h_top(x))_y        (cross-entropy over Yes / No / NA)

and per human preference (chosen c, rejected r, rules R drawn as the random-k selector
draws them), a Bradley-Terry loss on the labeler's own aggregated margin:

    m      = sum_{k in R} s_k(c) - s_k(r),     s_k = P(Yes) - P(No)
    L_pair = -log sigmoid(beta * m)

The loss of a step is the mean over its items (a pair is one item, weighted ``bt_weight``).

Only the top ``train_layers`` encoder layers, the pooler and the head are trained: the
artifact then holds a few MB of tensors on top of the packaged base (see artifact.py), and
a step costs less than a full backward pass. Deterministic for a seed on one CPU thread
count (data order, head initialisation and dropout all come from ``seed``).
"""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ramo_stream.core.stats import wilson_interval
from ramo_stream.label.grading.artifact import (
    FORMAT,
    REBUILD,
    WEIGHTS,
    new_version,
    sha256_file,
    write_manifest,
)
from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.label.grading.classifier_backend import ClassifierGrader, base_sha256, build_model
from ramo_stream.label.grading.sources import Example, PairExample
from ramo_stream.label.grading.template import CLASSIFIER_TEMPLATE_VERSION, DEFAULT_WORDS
from ramo_stream.schemas import ChatMessage


@dataclass(frozen=True)
class TrainConfig:
    train_layers: int = 3
    lr: float = 1e-4
    batch: int = 16
    epochs: int = 2
    max_tokens: int = 256
    seed: int = 0
    warmup: float = 0.06
    bt_weight: float = 1.0
    bt_beta: float = 1.0


def as_request(e: Example, rule_text: str) -> GradeRequest:
    prompt = e.prompt if isinstance(e.prompt, str) else [ChatMessage(**m) for m in e.prompt]
    return GradeRequest(prompt, e.response, rule_text)


def trainable_names(model: Any, train_layers: int) -> list[str]:
    """Parameter names of the top ``train_layers`` encoder layers, the pooler and the head."""
    n_layers = model.config.num_hidden_layers
    if not 0 <= train_layers <= n_layers:
        raise ValueError(f"train_layers={train_layers}: the encoder has {n_layers} layers")
    top = {f"encoder.layer.{i}." for i in range(n_layers - train_layers, n_layers)}
    names = []
    for name, _ in model.named_parameters():
        if "classifier" in name or "pooler" in name or any(t in name for t in top):
            names.append(name)
    return names


def _top(model: Any, hidden: torch.Tensor, mask: torch.Tensor, first: int) -> torch.Tensor:
    """Logits from the hidden states entering encoder layer ``first`` (BERT-style models)."""
    bert = model.base_model
    attention, _ = bert._create_attention_masks(mask, None, hidden, None, None)
    for layer in bert.encoder.layer[first:]:
        out = layer(hidden, attention_mask=attention)
        hidden = out[0] if isinstance(out, tuple) else out
    pooled = bert.pooler(hidden) if bert.pooler is not None else hidden[:, 0]
    return model.classifier(model.dropout(pooled))  # type: ignore[no-any-return]


@torch.inference_mode()
def _bottom(model: Any, enc: Any, first: int) -> torch.Tensor:
    """Hidden states entering layer ``first``: the frozen part, computed once per example."""
    bert = model.base_model
    hidden = bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
    attention, _ = bert._create_attention_masks(enc["attention_mask"], None, hidden, None, None)
    for layer in bert.encoder.layer[:first]:
        out = layer(hidden, attention_mask=attention)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def train(
    base: str | Path,
    examples: Sequence[Example],
    rule_text: Callable[[str], str],
    cfg: TrainConfig,
    on_step: Callable[[int, int, float], None] | None = None,
    pairs: Sequence[PairExample] = (),
) -> tuple[Any, list[float], list[str]]:
    """Fine-tune; returns (model, per-step losses, trained parameter names).

    The frozen layers' output is computed once per sequence (no gradient flows there), so
    each step runs only the trained top layers: on a CPU that is most of the cost saved.
    """
    from transformers import AutoTokenizer

    from ramo_stream.label.grading.template import classifier_text

    torch.manual_seed(cfg.seed)
    model = build_model(base)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    names = trainable_names(model, cfg.train_layers)
    params = []
    for name, p in model.named_parameters():
        p.requires_grad = name in names
        if p.requires_grad:
            params.append(p)
    first = model.config.num_hidden_layers - cfg.train_layers
    model.eval()
    # Every (rule, text) sequence; an item is one example (one sequence) or one pair
    # (chosen x rules, then rejected x rules).
    seqs: list[tuple[str, str]] = []
    items: list[tuple[int, list[int]]] = []  # (answer, or -1 for a pair; its sequences)
    for e in examples:
        text = classifier_text(as_request(e, "").prompt, e.response, cfg.max_tokens)
        items.append((e.answer, [len(seqs)]))
        seqs.append((rule_text(e.rule_id), text))
    for pe in pairs:
        ids = []
        for response in (pe.chosen, pe.rejected):
            text = classifier_text(pe.prompt, response, cfg.max_tokens)
            for rule in pe.rule_ids:
                ids.append(len(seqs))
                seqs.append((rule_text(rule), text))
        items.append((-1, ids))
    cached = _cache_bottom(model, tokenizer, seqs, first, cfg.max_tokens, on_step)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps = math.ceil(len(items) / cfg.batch) * cfg.epochs
    warm = max(1, int(steps * cfg.warmup))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    rng = random.Random(cfg.seed)
    losses: list[float] = []
    for layer in model.base_model.encoder.layer[first:]:
        layer.train()
    model.dropout.train()
    step = 0
    positions = list(range(len(items)))
    for _ in range(cfg.epochs):
        rng.shuffle(positions)
        for start in range(0, len(positions), cfg.batch):
            chunk = [items[i] for i in positions[start : start + cfg.batch]]
            rows = [j for _, ids in chunk for j in ids]
            logits = _top(model, *_padded(cached, rows, model.config.hidden_size), first)
            loss = _item_losses(logits, chunk, cfg).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if on_step:
                on_step(step, steps, losses[-1])
    return model.eval(), losses, names


def _cache_bottom(model: Any, tokenizer: Any, seqs: Sequence[tuple[str, str]], first: int,
                  max_tokens: int, on_step: Callable[[int, int, float], None] | None,
                  ) -> list[torch.Tensor]:  # fmt: skip
    """Each sequence's hidden states entering layer ``first``, unpadded, in fp16 (memory:
    thousands of sequences of up to ``max_tokens``)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][1]))
    cached: list[torch.Tensor | None] = [None] * len(seqs)
    for start in range(0, len(order), 32):
        idx = order[start : start + 32]
        enc = tokenizer(
            [seqs[i][0] for i in idx], [seqs[i][1] for i in idx],
            truncation="only_second", max_length=max_tokens, padding=True, return_tensors="pt",
        )  # fmt: skip
        hidden = _bottom(model, enc, first)
        for j, i in enumerate(idx):
            n = int(enc["attention_mask"][j].sum())
            cached[i] = hidden[j, :n].half().clone()
        if on_step:
            on_step(0, 0, float("nan"))
    return [h for h in cached if h is not None]


def _padded(cached: Sequence[torch.Tensor], rows: Sequence[int], size: int,
            ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    width = max(cached[r].shape[0] for r in rows)
    hidden = torch.zeros(len(rows), width, size)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        n = cached[r].shape[0]
        hidden[i, :n] = cached[r].float()
        mask[i, :n] = 1
    return hidden, mask


def _item_losses(logits: torch.Tensor, chunk: Sequence[tuple[int, list[int]]],
                 cfg: TrainConfig) -> torch.Tensor:  # fmt: skip
    """One loss per item of the step (see the module docstring); ``logits`` hold the
    items' sequences in order."""
    out = []
    at = 0
    for answer, ids in chunk:
        part = logits[at : at + len(ids)]
        at += len(ids)
        if answer >= 0:
            out.append(torch.nn.functional.cross_entropy(part, torch.tensor([answer])))
            continue
        probs = torch.softmax(part, -1)
        s = probs[:, 0] - probs[:, 1]
        half = len(ids) // 2
        margin = s[:half].sum() - s[half:].sum()
        out.append(cfg.bt_weight * torch.nn.functional.softplus(-cfg.bt_beta * margin))
    return torch.stack(out)


def publish(
    model: Any,
    names: list[str],
    root: Path,
    manifest: dict[str, Any],
    base: str | Path,
    pool_hash: str,
    evaluate: Callable[[ClassifierGrader], dict[str, Any]] | None = None,
) -> Path:
    """Write the artifact under ``root/<version>``, evaluated as it will be loaded (fp16)."""
    from safetensors.torch import save_file

    version = new_version("classifier")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        state = model.state_dict()
        save_file({n: state[n].detach().half().contiguous() for n in names}, str(tmp / WEIGHTS))
        model.config.save_pretrained(tmp)
        full = {
            "format": FORMAT,
            "kind": "classifier",
            "version": version,
            "base_sha256": base_sha256(base),
            "trained_tensors": sorted(names),
            "weights_sha256": sha256_file(tmp / WEIGHTS),
            "template_version": CLASSIFIER_TEMPLATE_VERSION,
            "answer_words": list(DEFAULT_WORDS.as_tuple()),
            "rule_pool_hash": pool_hash,
            "metrics": {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rebuild": REBUILD,
            **manifest,
        }
        write_manifest(tmp, full)
        if evaluate is not None:
            full["metrics"] = evaluate(ClassifierGrader(tmp, base, pool_hash))
            write_manifest(tmp, full)
        tmp.chmod(0o755)
        target = root / version
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# --- metrics shared with benchmarks/grader_quality.py ---------------------------------------


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: sum_b |B|/n * |acc(B) - conf(B)| over equal-width bins."""
    n = len(confidences)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(confidences) if lo <= c < hi or (b == bins - 1 and c == 1)]
        if idx:
            acc = sum(correct[i] for i in idx) / len(idx)
            conf = sum(confidences[i] for i in idx) / len(idx)
            total += len(idx) / n * abs(acc - conf)
    return total


def yes_no_metrics(probs: Sequence[AnswerProbs], examples: Sequence[Example]) -> dict[str, Any]:
    """Accuracy of Yes-vs-No (the larger of P(Yes), P(No)) on Yes/No examples, F1 of No
    (the rule broken), and the ECE of P(Yes) as the probability that the answer is Yes."""
    pairs = [(p, e) for p, e in zip(probs, examples, strict=True) if e.answer != 2]
    n = len(pairs)
    hits = sum((p.p_yes >= p.p_no) == (e.answer == 0) for p, e in pairs)
    tp = sum(p.p_no > p.p_yes and e.answer == 1 for p, e in pairs)
    fp = sum(p.p_no > p.p_yes and e.answer == 0 for p, e in pairs)
    fn = sum(p.p_no <= p.p_yes and e.answer == 1 for p, e in pairs)
    p_yes = [p.p_yes / max(p.p_yes + p.p_no, 1e-12) for p, _ in pairs]
    lo, hi = wilson_interval(hits, n)
    return {
        "n": n,
        "accuracy": hits / n if n else float("nan"),
        "accuracy_ci95": [lo, hi],
        "f1_no": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "ece_p_yes": ece(p_yes, [e.answer == 0 for _, e in pairs]) if n else float("nan"),
    }
