"""Dead letters that always fit their topic, and where the whole record goes when cut.

A letter carries at most ``max_original_bytes`` of the original value. A longer value is
written whole to ``spill_dir/<sha256>.bin`` (content-addressed: the same poison sent a
thousand times is kept once) and the letter names ``host:path``, so an operator can fetch
it from the machine that rejected it. If the file cannot be written the letter still goes
out, cut, and its reason says why the whole record was not kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from ramo_stream.schemas import DEAD_LETTER_ORIGINAL_BYTES, DeadLetter

log = logging.getLogger(__name__)


def spill(raw: bytes, spill_dir: Path) -> str:
    """Write ``raw`` to ``spill_dir/<sha256>.bin`` (once, atomically); return host:path."""
    path = spill_dir / f"{hashlib.sha256(raw).hexdigest()}.bin"
    if not path.exists():
        spill_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=spill_dir, prefix=".spill-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return f"{socket.gethostname()}:{path.resolve()}"


def make_letter(
    raw: bytes,
    reason: str,
    stage: str,
    *,
    max_original_bytes: int = DEAD_LETTER_ORIGINAL_BYTES,
    spill_dir: Path | None = None,
    **where: Any,
) -> DeadLetter:
    """A DeadLetter for ``raw``; cut to ``max_original_bytes``, the whole kept in spill_dir."""
    stored_at = None
    if len(raw) > max_original_bytes:
        if spill_dir is None:
            reason += f" [original cut to {max_original_bytes} of {len(raw)} bytes; not kept]"
        else:
            try:
                stored_at = spill(raw, spill_dir)
            except OSError as e:
                log.error("dead letter: cannot keep a %d-byte record in %s: %s",
                          len(raw), spill_dir, e)  # fmt: skip
                reason += (
                    f" [original cut to {max_original_bytes} of {len(raw)} bytes; the whole"
                    f" record could not be kept in {spill_dir}: {e}]"
                )
    return DeadLetter.of(
        raw, reason, stage, max_original_bytes=max_original_bytes, stored_at=stored_at, **where
    )
