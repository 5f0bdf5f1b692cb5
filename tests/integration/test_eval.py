"""`ramo eval` for real: two versions published from the packaged all-MiniLM-L6-v2 to a real
registry (`ramo models publish`, new untrained heads: accuracy near chance, so this checks the
plumbing and the arithmetic, not the model), scored on real rows of ../shared/data."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.cli import eval as cli_eval
from ramo_stream.config import load_settings
from tests.helpers import shared_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("transformers", reason="the models extra is not installed")

MAX_LENGTH = 128  # serve.max_length: short items keep the test quick on two CPU cores
HH_ROWS, LLMBAR_PER_SUBSET = 6, 2
TOLERANCE = 1e-4  # float32 on CPU: padding to another batch's length moves a reward ~1e-6


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real rows: the first of HH harmless (a subset RewardBench does not know) and the first
    of each LLMBar subset (RewardBench's chat-hard section)."""
    hh = shared_file("hh_harmless_test.jsonl").read_text().splitlines()[:HH_ROWS]
    llmbar: dict[str, list[str]] = {}
    for line in shared_file("llmbar_pairs.jsonl").read_text().splitlines():
        llmbar.setdefault(json.loads(line)["subset"], []).append(line)
    rows = hh + [line for lines in llmbar.values() for line in lines[:LLMBAR_PER_SUBSET]]
    path = tmp_path_factory.mktemp("data") / "real_rows.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def settings(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings on a fresh registry holding versions 1 and 2 (heads seeded 0 and 1)."""
    from ramo_stream.cli.serve import cmd_models_publish

    root = tmp_path_factory.mktemp("eval")
    settings = load_settings(overrides={
        "paths.cache_dir": str(root / "cache"), "train.registry": str(root / "registry"),
        "serve.max_length": MAX_LENGTH,
    })  # fmt: skip
    for seed in (0, 1):
        args = argparse.Namespace(path=str(models_dir / "all-minilm-l6-v2"), seed=seed)
        assert cmd_models_publish(args, settings) == 0
    return settings


def run_eval(argv: list[str], settings: Any) -> int:
    parser = argparse.ArgumentParser()
    cli_eval.add_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["eval", *argv])
    return int(args.fn(args, settings))


def direct_rewards(folder: Path, rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(chosen, rejected) rewards computed straight from the model: one batch, no service code."""
    import torch

    from ramo_stream.registry.model import encode, format_text, load_reward_model, rewards

    model, tok = load_reward_model(folder)
    texts = [
        format_text(tok, r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")
    ]
    with torch.inference_mode():
        flat = [float(x) for x in rewards(model.eval(), encode(tok, texts, MAX_LENGTH)).tolist()]
    return list(zip(flat[0::2], flat[1::2], strict=True))


def test_all_versions_on_real_rows(
    data: Path, settings: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "out" / "report"
    assert run_eval(["--data", str(data), "--all-versions", "--out", str(prefix)], settings) == 0
    out = capsys.readouterr().out
    report = json.loads(prefix.with_suffix(".json").read_text())
    results = report["results"]
    assert [r["version"] for r in results] == [1, 2]

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    v1 = results[0]
    assert v1["subsets"]["anthropic_harmless"]["n"] == HH_ROWS
    assert v1["sections"]["anthropic_harmless"]["n"] == HH_ROWS
    llmbar_subsets = sorted({r["subset"] for r in rows} - {"anthropic_harmless"})
    assert sorted(v1["sections"]["chat-hard"]["subsets"]) == llmbar_subsets
    assert v1["sections"]["chat-hard"]["n"] == LLMBAR_PER_SUBSET * len(llmbar_subsets)
    assert set(v1["sections"]) == {"chat-hard", "anthropic_harmless"}

    for result in results:  # the scores follow from the per-example rewards
        examples = result["examples"]
        assert [e["id"] for e in examples] == [r["id"] for r in rows]
        correct = [e["chosen_reward"] > e["rejected_reward"] for e in examples]
        assert [e["correct"] for e in examples] == correct
        assert result["correct"] == sum(correct) and result["n"] == len(rows)
        for name, section in result["sections"].items():
            in_section = [ok for ok, r in zip(correct, rows, strict=True)
                          if r["subset"] in section["subsets"]]  # fmt: skip
            assert section["correct"] == sum(in_section), name
        means = [s["accuracy"] for s in result["sections"].values()]
        assert result["overall"] == pytest.approx(sum(means) / len(means))

    # The rewards are the model's on the one input format (format_text, last MAX_LENGTH tokens).
    from ramo_stream.registry.store import Registry

    registry = Registry(settings.train.registry)
    for result in results:
        expected = direct_rewards(registry.path(result["version"]), rows)
        got = [(e["chosen_reward"], e["rejected_reward"]) for e in result["examples"]]
        assert [x for pair in got for x in pair] == pytest.approx(
            [x for pair in expected for x in pair], abs=TOLERANCE
        )
    assert results[0]["examples"][0]["chosen_reward"] != results[1]["examples"][0]["chosen_reward"]

    md = prefix.with_suffix(".md").read_text()
    assert md in out and "| subset | section | n | v1 | v2 |" in md
    assert "| **overall** (mean of sections) |" in md
    try:
        import matplotlib  # noqa: F401

        assert prefix.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert "pip install -e '.[bench]'" in out


def test_one_version_with_limit(
    data: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_eval(["--data", str(data), "--version", "1", "--limit", "3"], settings) == 0
    out = capsys.readouterr().out
    assert "3 examples" in out and "| subset | section | n | v1 |" in out
    assert "| anthropic_harmless | anthropic_harmless | 3 |" in out
