"""Every quick subcommand on a fresh cache dir (no prepared model, no Rule Adapter, no
registry, no service): each ends with its output or a one-line error that says the fix, never
a traceback. The real `ramo` in a subprocess. Not run here: `up`, `serve`, `labeler`,
`broker`, `run`, `tail`, `train` without --from-file (they start Ray or a broker and run
until stopped; their own integration tests cover them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROW = '{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s"}\n'
DEAD_URL = "http://127.0.0.1:9"  # nothing listens on the discard port

# (arguments, exit code, what stderr or stdout must say)
CASES: list[tuple[list[str], int, str]] = [
    (["--help"], 0, "COMMAND"),
    (["config"], 0, "kafka:"),
    (["config", "--describe"], 0, "kafka.security_protocol"),
    (["rules"], 0, "rules, hash"),
    (["models", "list"], 0, "no versions in"),
    (["label", "rows.jsonl", "out.jsonl"], 1, "run `ramo models prepare`"),
    (["label", "rows.jsonl", "out.jsonl", "--selector", "adapter"], 2, "ramo adapter train"),
    (["label", "missing.jsonl", "out.jsonl"], 2, "no such file: missing.jsonl"),
    (["eval", "--data", "rows.jsonl"], 1, "no versions in the registry"),
    (["eval", "--data", "missing.jsonl"], 2, "no such file"),
    (["eval", "--data", "rows.jsonl", "--url", DEAD_URL, "--serve-max-items", "4"], 1,
     "Check that the reward service is up"),
    (["score", "--prompt", "p", "--response", "r", "--url", DEAD_URL], 1, "is up at"),
    (["train", "--from-file", "missing.jsonl"], 2, "no such file"),
    (["models", "publish", "nothing-here"], 2, "not a Hugging Face model folder"),
    (["models", "publish", "all-minilm-l6-v2"], 1, "run `ramo models prepare`"),
    (["adapter", "train"], 2, "pass --pairs FILE"),
    (["ingest", "missing.jsonl"], 2, "no such file"),
    (["config", "--kafka-security-protocol", "SASL_SSL"], 2, "needs sasl_mechanism"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "code", "says"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_subcommand_on_a_fresh_cache(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    (tmp_path / "rows.jsonl").write_text(ROW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}
    env["RAMO_PATHS__CACHE_DIR"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "ramo_stream.cli", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
    both = proc.stdout + proc.stderr
    assert "Traceback" not in both, both[-3000:]
    assert proc.returncode == code, both[-2000:]
    assert says in both, both[-2000:]
    if args[:2] == ["label", "rows.jsonl"] and "--selector" not in args:  # as `ramo up` does
        assert "labeling with --selector random" in proc.stderr
