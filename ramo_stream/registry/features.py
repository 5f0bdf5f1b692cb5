"""What the reward model's last linear layer sees: phi(prompt, response), batched.

The reward is r = w . phi + b, where phi is the input of the sequence classifier's final
linear head (decoders: the last hidden state at the last non-pad token; BERT-style encoders:
the pooled output). A forward hook on that head reads phi during the ordinary forward pass, so
the features are exactly the ones the served reward model scores, and each batch is checked:
w . phi + b must reproduce the model's own rewards, or the hook read the wrong tensor.

For a pair (A, B): x = phi(A) - phi(B) and p = sigmoid(r_A - r_B), the model's probability
that A is preferred. These are the inputs of ``ramo_stream.core.fisher``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.registry.model import encode, format_text, load_reward_model
from ramo_stream.registry.setup import open_registry
from ramo_stream.schemas import ChatMessage

log = logging.getLogger(__name__)


def _head(model: Any) -> Any:
    """The final Linear layer with one output: the reward head."""
    import torch

    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no Linear layer with one output; a reward model is a"
            " sequence classifier with num_labels=1"
        )
    return heads[-1]


@dataclass
class PairFeatures:
    x: Any  # (n, d) float64 tensor: phi(A) - phi(B)
    p: Any  # (n,) float64 tensor: sigmoid(r_A - r_B)
    reward_a: list[float]
    reward_b: list[float]


class Featurizer:
    """phi for a loaded reward model; ``batch`` texts per forward pass."""

    def __init__(
        self, model: Any, tokenizer: Any, max_length: int, device: str = "cpu", batch: int = 32
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.device = device
        self.batch = batch
        self.head = _head(model)
        self.dim = int(self.head.in_features)

    def phi(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """(features (n, d) float64, rewards (n,) float64) of formatted texts."""
        import torch

        # Batches of similar length waste little on padding; the rows are put back in order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        feats, rewards = [], []
        for start in range(0, len(texts), self.batch):
            chunk = [texts[i] for i in order[start : start + self.batch]]
            enc = encode(self.tokenizer, chunk, self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            seen: list[Any] = []
            hook = self.head.register_forward_hook(
                lambda _m, inp, _out, seen=seen: seen.append(inp[0])
            )
            try:
                with torch.inference_mode():
                    logits = self.model(**enc).logits.squeeze(-1)
            finally:
                hook.remove()
            h = seen[-1]
            if h.dim() == 3:  # decoders run the head on every position, then pick the last
                mask = enc["attention_mask"]
                pos = torch.arange(mask.shape[1], device=mask.device)
                last = (pos * mask).argmax(-1)
                h = h[torch.arange(h.shape[0], device=h.device), last]
            h = h.double()
            feats.append(h.cpu())
            rewards.append(logits.double().cpu())
        if not feats:
            return torch.zeros((0, self.dim), dtype=torch.float64), torch.zeros(0).double()
        back = torch.empty(len(texts), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(texts))
        phi, r = torch.cat(feats)[back], torch.cat(rewards)[back]
        self._check(phi, r)
        return phi, r

    def _check(self, phi: Any, r: Any) -> None:
        w = self.head.weight.detach().double().cpu().reshape(-1)
        b = float(self.head.bias.detach().double()) if self.head.bias is not None else 0.0
        again = phi @ w + b
        gap = float((again - r).abs().max()) if len(r) else 0.0
        if gap > 1e-2 * (1 + float(r.abs().max())):
            raise RuntimeError(
                f"features do not reproduce the model's rewards (max gap {gap:.3g}): the hook"
                f" on {type(self.model).__name__}'s head read another tensor than it scores"
            )

    def pairs(
        self, prompts: Sequence[str | Sequence[ChatMessage]], a: Sequence[str], b: Sequence[str]
    ) -> PairFeatures:
        """x = phi(A) - phi(B) and p = sigmoid(r_A - r_B) for each (prompt, A, B)."""
        n = len(prompts)
        texts = [
            format_text(self.tokenizer, pr, resp)
            for side in (a, b)
            for pr, resp in zip(prompts, side, strict=True)
        ]
        phi, r = self.phi(texts)
        x = phi[:n] - phi[n:]
        p = (r[:n] - r[n:]).sigmoid()
        return PairFeatures(x, p, r[:n].tolist(), r[n:].tolist())


class ServedModel:
    """The reward model the gate reads features from: CURRENT of the registry, else the
    untrained backbone (its head is random, so p is near 1/2 and d-opt explores phi)."""

    def __init__(self, settings: Settings, registry_root: str | None = None) -> None:
        self.settings = settings
        self.registry = open_registry(settings, registry_root)
        self.version: int | None = None
        self.identity: str | None = None  # what the features come from (a saved M names it)
        self.featurizer: Any = None
        self._checked = 0.0

    def device(self) -> str:
        import torch

        d = self.settings.select.device
        return ("cuda" if torch.cuda.is_available() else "cpu") if d == "auto" else d

    def refresh(self, now: float, force: bool = False) -> bool:
        """Load the version CURRENT names if it changed; True when the model was replaced.
        CURRENT is read at most every ``select.reload_poll_s``, unless ``force``."""
        recent = now - self._checked < self.settings.select.reload_poll_s
        if self.featurizer is not None and not force and recent:
            return False
        self._checked = now
        try:
            manifest = self.registry.current()
        except Exception as e:  # a registry hiccup keeps the model we have
            log.warning("select: cannot read CURRENT of %s: %s", self.registry.root, e)
            manifest = None
        version = manifest.version if manifest is not None else None
        if self.featurizer is not None and (version is None or version == self.version):
            return False
        self._load(manifest)
        return True

    def load(self, version: int | None) -> None:
        """Hold ``version`` of the registry (None: the backbone), whatever CURRENT says now.
        A features replica answers for the version the gate asks for, so all the replicas a
        poll is spread over read phi from one model."""
        if self.featurizer is not None and version == self.version:
            return
        self._load(self.registry.get(version) if version is not None else None)

    def _load(self, manifest: Any) -> None:
        from ramo_stream.local_models import resolve

        version = manifest.version if manifest is not None else None
        if version is None:
            path = resolve(self.settings.models.reward_backbone, self.settings.paths.models_dir)
        else:
            path = str(self.registry.local_dir(version, self.registry.cache_dir))
        device = self.device()
        model, tok = load_reward_model(path)
        s = self.settings.select
        self.featurizer = Featurizer(model.to(device), tok, s.max_length, device, s.batch)
        self.version = version
        self.identity = f"backbone {path}"
        if manifest is not None:
            self.identity = f"version {version} of {manifest.created_at.isoformat()}"
        log.info("select: features from %s", f"version {version}" if version else path)
