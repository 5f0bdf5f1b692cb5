"""The gate's information matrix M, kept across restarts of the gate.

M^-1 (with lambda, the number of pairs behind it, and the reward model whose features it
is built from) is written to ``paths.cache_dir/select/<group>.pt`` after a poll, at most
every ``SAVE_EVERY_S`` seconds, and when the gate stops; a new file replaces the old one
atomically (written beside it, then renamed), so a crash leaves the previous one whole.

A restarted gate loads it when it belongs to the model the gate now reads features from
(the same registry version, published at the same time, or the same backbone) and has the
same lambda and dimension; otherwise M starts again from lambda I, the same as on a new
version (unless ``select.keep_m_on_new_version``, which then also keeps a saved M of an
older version, dimension permitting).

What a crash costs: up to ``SAVE_EVERY_S`` seconds of M's updates are not on disk; a crash
between a save and the poll's commit makes the redelivered poll add its pairs to M twice.
Both only shift the scores slightly; no pair is lost either way (that is the offsets' job).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ramo_stream.core.fisher import FisherInfo

log = logging.getLogger(__name__)

SAVE_EVERY_S = 10.0


def model_identity(model: Any) -> str:
    """What M's features come from: ``ServedModel.identity``, else its version."""
    return str(getattr(model, "identity", None) or f"version {model.version}")


@dataclass(frozen=True)
class SavedInfo:
    info: FisherInfo
    identity: str


class InfoStore:
    """Save and load M^-1 for one gate (its consumer group) under ``root``."""

    def __init__(self, root: Path, group: str) -> None:
        self.path = Path(root) / f"{group.replace('/', '_')}.pt"
        self.saved_at: float | None = None

    def save(self, info: FisherInfo, identity: str, lam: float, now: float) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        state = {"identity": identity, "lam": lam, "labeled": info.labeled,
                 "m_inv": info.m_inv.detach().cpu()}  # fmt: skip
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self.saved_at = now

    def due(self, now: float) -> bool:
        return self.saved_at is None or now - self.saved_at >= SAVE_EVERY_S

    def load(self, identity: str, lam: float, dim: int, any_version: bool) -> FisherInfo | None:
        """The saved M if it fits (see the module's docstring), else None."""
        import torch

        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            m_inv, saved_lam, saved_id = state["m_inv"], float(state["lam"]), state["identity"]
            labeled = int(state["labeled"])
        except Exception as e:  # a damaged file costs M, not the gate
            log.warning("select: cannot read the saved M in %s (%s); starting from lambda I",
                        self.path, e)  # fmt: skip
            return None
        fits = tuple(m_inv.shape) == (dim, dim) and saved_lam == lam
        if not fits or (saved_id != identity and not any_version):
            log.info("select: the saved M (%s, lambda %g, dim %d) is not for %s, lambda %g, dim"
                     " %d: starting from lambda I", saved_id, saved_lam, m_inv.shape[0],
                     identity, lam, dim)  # fmt: skip
            return None
        info = FisherInfo(m_inv.to(torch.float64))
        info.labeled = labeled
        return info
