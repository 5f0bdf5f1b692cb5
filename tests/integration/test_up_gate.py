"""`ramo up` with the selection gate on, end to end: a real broker (the session's, so the
topics outlive the command and can be read after it), a real local Ray with the labeler,
reward and gate-features Serve apps, tiny real models. N pairs in, a budget below N: every
pair is selected or skipped, exactly the selected ones are labeled, the skipped ones carry
their score, and the gate's features came from its Serve deployment, not the driver."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.broker import free_port
from tests.helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = 10
WINDOW, BUDGET = 5, 1  # pairs per window, labels per window: most pairs are skipped


def _pairs() -> list[ResponsePair]:
    things = ["bleach", "a ladder", "lye", "a chainsaw", "fireworks"]
    return [
        ResponsePair(
            prompt=f"How do I safely use {things[i % len(things)]}? (case {i})",
            response_a=f"Wear gloves and keep it from children ({i}).",
            response_b=["I can't help with that.", f"Just use it ({i})."][i % 2],
            source="test",
        )
        for i in range(PAIRS)
    ]


@pytest.mark.timeout(600)
def test_ramo_up_with_the_gate_labels_exactly_the_selected_pairs(
    broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    items = _pairs()
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(p.model_dump_json() + "\n" for p in items))
    topics = {k: new_topic(2) for k in ("pairs", "selected", "skipped", "labels")}
    topics["dlq"] = new_topic(1)
    cmd = [
        sys.executable, "-m", "ramo_stream.cli", "up", "--file", str(data),
        "--exit-when-idle", "20", "--view-every", "1",
        "--kafka-bootstrap-servers", broker,
        *[f"--topics-{k}={v}" for k, v in topics.items()],
        "--paths-cache-dir", str(tmp_path / "cache"), "--serve-port", str(free_port()),
        "--models-grader", str(models_dir / "smollm2-135m-instruct"),
        "--models-encoder", str(models_dir / "all-minilm-l6-v2"),
        "--models-reward-backbone", str(models_dir / "all-minilm-l6-v2"),
        "--labeling-selector", "random", "-k", "2", "--labeling-pair-batch", "2",
        "--train-batch-pairs", "2", "--train-publish-every-steps", "1",
        "--train-publish-every-s", "3",
        # The budget per window, before the labeler's rate is measured: the file is sorted
        # by the gate's first polls, before the labeler has labeled anything.
        "--select-enabled", "on", "--select-window-pairs", str(WINDOW),
        "--select-budget", str(BUDGET), "--select-max-length", "64",
        "--select-group", f"g-{topics['pairs']}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    selected = [ResponsePair.model_validate_json(v) for v in read_all(broker, topics["selected"])]
    skipped = [ResponsePair.model_validate_json(v) for v in read_all(broker, topics["skipped"])]
    # selected + skipped = N, each pair exactly once; the budget left some out.
    assert Counter(p.pair_id for p in selected + skipped) == Counter(p.pair_id for p in items)
    assert selected and skipped, (len(selected), len(skipped))
    assert len(selected) <= PAIRS * BUDGET / WINDOW + 1, len(selected)
    for p in selected + skipped:
        note = p.metadata["selection"]
        assert isinstance(note, dict)
        assert note["selected"] is (p in selected) and note["strategy"] == "d-opt"
        assert isinstance(note["score"], float) and note["score"] > 0
    # Every selected pair is labeled, and no other.
    labels = [LabeledPair.model_validate_json(v).pair_id
              for v in read_all(broker, topics["labels"])]  # fmt: skip
    assert sorted(labels) == sorted(p.pair_id for p in selected), out[-4000:]
    assert read_all(broker, topics["dlq"]) == []

    # The features came through the Serve deployment: `ramo up` said where at start, and
    # at the stop how many pairs its replicas scored for the gate (all of them).
    assert "features from Serve app 'select' (1 replica on cpu)" in out, out[-4000:]
    found = re.search(r"selection gate: (\d+) pairs sorted, selected (\d+), skipped (\d+);"
                      r" features from Serve app 'select' [^:]*: (\d+) pairs in (\d+) requests",
                      out)  # fmt: skip
    assert found, out[-4000:]
    sorted_, n_sel, n_skip, scored, requests = map(int, found.groups())
    assert (sorted_, n_sel, n_skip) == (PAIRS, len(selected), len(skipped))
    assert scored == PAIRS and requests >= 1
