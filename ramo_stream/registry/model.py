"""The reward model: a Hugging Face sequence classifier with one output, and its input format.

Any backbone works through ``AutoModelForSequenceClassification(num_labels=1)``: decoders
(SmolLM2, Llama, Qwen) read the reward at the last non-pad token, encoders (MiniLM, BERT)
at the pooled output. A published version is a plain Hugging Face folder, so transformers
and vLLM (``--task reward`` / pooling runners) load it directly.

The text a reward is computed on is built in one place, ``format_text``: the conversation
and the response through the tokenizer's chat template when it has one, else a plain
"User: ... / Assistant: ..." transcript. Training and serving both call it, so the model is
always scored on the format it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ramo_stream.schemas import ChatMessage

# HH-RLHF style transcripts: "\n\nHuman: ...\n\nAssistant: ...".
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")


def to_messages(prompt: str | Sequence[ChatMessage], response: str) -> list[dict[str, str]]:
    """The conversation as chat messages, ending with ``response`` as the assistant's turn."""
    if isinstance(prompt, str):
        parts = _TURN.split(prompt)
        if len(parts) >= 3 and not parts[0].strip():
            # parts = ['', 'Human', text, 'Assistant', text, ...]; the trailing empty
            # "Assistant:" of an HH prompt is where the response goes.
            roles = {"Human": "user", "Assistant": "assistant"}
            messages = [
                {"role": roles[who], "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2], strict=True)
            ]
            if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages.pop()
        else:
            messages = [{"role": "user", "content": prompt.strip()}]
    else:
        messages = [{"role": m.role, "content": m.content} for m in prompt]
    return [*messages, {"role": "assistant", "content": response}]


def format_text(tokenizer: Any, prompt: str | Sequence[ChatMessage], response: str) -> str:
    """The exact text the reward model scores for (prompt, response)."""
    messages = to_messages(prompt, response)
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False))
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def torch_dtype(name: str, device: str) -> Any:
    """A ``serve.dtype`` name as a torch dtype; "auto" is bfloat16 on a GPU and float32 on a
    CPU, where bf16 matmuls are slow on most chips."""
    import torch

    if name == "auto":
        name = "bfloat16" if device == "cuda" else "float32"
    return getattr(torch, name)


def load_reward_model(path: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) from a backbone or a published version.

    A backbone without a pad token gets one (its EOS or UNK token, no new embedding row),
    written into the model config too: decoders find the last real token through it.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer of {path} has no pad, eos or unk token to pad with")
    # Truncate from the left: the response's end (where decoders read the reward) survives.
    tokenizer.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype or torch.float32
    )
    if model.config.num_labels != 1:
        raise ValueError(
            f"{path} has num_labels={model.config.num_labels}; a reward model needs num_labels=1"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def encode(tokenizer: Any, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    """Right-padded token tensors for ``texts``, each cut to its last ``max_length`` tokens."""
    return dict(
        tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
    )


def rewards(model: Any, batch: dict[str, Any]) -> Any:
    """One scalar reward per row of ``batch`` (a 1-D tensor)."""
    return model(**batch).logits.squeeze(-1)
