"""The grader's source -> rule mapping and its held-out split (pure logic, no models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ramo_stream.config import default_rule_pool
from ramo_stream.core.rules import load_pool
from ramo_stream.core.stats import wilson_interval as wilson
from ramo_stream.label.grading.sources import (
    GPTFUZZ_RULES,
    HELP_RULES,
    NA,
    NO,
    RBR_PROPOSITIONS,
    YES,
    gptfuzz_examples,
    held_out,
    pair_examples,
    training_examples,
)
from ramo_stream.label.grading.train_classifier import ece


def test_mapping_names_only_rules_of_the_shipped_pool() -> None:
    pool = load_pool(default_rule_pool())
    mapped = {r for rules in GPTFUZZ_RULES.values() for r in rules} | set(HELP_RULES)
    mapped |= {r for r, _, _ in RBR_PROPOSITIONS.values()}
    assert mapped <= set(pool.ids)
    assert sorted(GPTFUZZ_RULES) == list(range(80))
    harm = {r.id for r in pool if r.kind == "harmless"}
    assert {r for rules in GPTFUZZ_RULES.values() for r in rules} <= harm


def test_held_out_is_deterministic_and_near_its_share() -> None:
    keys = [f"prompt {i}" for i in range(2000)]
    first = [held_out("coconot", k) for k in keys]
    assert first == [held_out("coconot", k) for k in keys]
    assert 0.16 < sum(first) / len(keys) < 0.24
    # another source salts differently: the same text is not held out everywhere together
    assert first != [held_out("refusal_direction", k) for k in keys]


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gptfuzz_split_is_by_question_and_labels_follow_jailbroken(tmp_path: Path) -> None:
    pool = load_pool(default_rule_pool())
    rows = [
        {"prompt": f"q{q}", "question_id": q, "response": f"r{q}-{i}", "jailbroken": i % 2 == 0}
        for q in range(80)
        for i in range(4)
    ]
    path = _write(tmp_path / "fuzz.jsonl", rows)
    train = gptfuzz_examples(path, pool, "train", 0.5, seed=0)
    test = gptfuzz_examples(path, pool, "test", 0.0, seed=0)
    assert {e.group for e in train}.isdisjoint({e.group for e in test})
    assert test and train
    for e in test:
        assert e.answer == (NO if int(e.response.split("-")[1]) % 2 == 0 else YES)
        assert e.rule_id in GPTFUZZ_RULES[int(e.group)]
    na = [e for e in train if e.answer == NA]
    assert na and all(e.rule_id not in GPTFUZZ_RULES[int(e.group)] for e in na)


def test_pairs_split_by_prompt_chosen_follows(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(200)]
    path = _write(tmp_path / "pairs.jsonl", rows)
    train = pair_examples(path, "coconot", "train", seed=0)
    test = pair_examples(path, "coconot", "test", seed=0)
    assert {e.group for e in train}.isdisjoint({e.group for e in test})
    assert len(train) + len(test) == 400
    assert all((e.answer == YES) == (e.response == "good") for e in train + test)


def test_training_examples_refuse_a_pool_without_the_mapped_rules(tmp_path: Path) -> None:
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(
        "name: tiny\nrules:\n  - id: x-001\n    category: tone\n    kind: helpful\n"
        "    text: The response is polite.\n"
    )
    with pytest.raises(ValueError, match="sources.py"):
        training_examples(tmp_path, load_pool(pool_file), {})


def test_wilson_and_ece() -> None:
    lo, hi = wilson(90, 100)
    assert 0.82 < lo < 0.9 < hi < 0.95
    assert ece([1.0, 1.0, 0.0, 0.0], [True, True, False, False]) == 0.0
    assert ece([0.9] * 10, [True] * 5 + [False] * 5) == pytest.approx(0.4)


def test_auto_backend_uses_the_shipped_grader_only_for_its_pool(tmp_path: Path) -> None:
    from ramo_stream.config import load_settings
    from ramo_stream.label.grading.factory import NoTrainedGrader, choose_backend

    assert choose_backend(load_settings(None, {"paths.cache_dir": str(tmp_path)})) == (
        "transformers",
        None,
    )  # the default until the classifier stops preferring refusals (README)
    settings = load_settings(None, {"paths.cache_dir": str(tmp_path), "grader.backend": "auto"})
    backend, artifact = choose_backend(settings)
    assert backend == "classifier" and artifact is not None  # the shipped artifact
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["rule_pool_hash"] == load_pool(default_rule_pool()).hash
    other = tmp_path / "pool.yaml"
    other.write_text(
        "name: tiny\nrules:\n  - id: x-001\n    category: tone\n    kind: helpful\n"
        "    text: The response is polite.\n"
    )
    custom = load_settings(
        None,
        {"paths.cache_dir": str(tmp_path), "paths.rule_pool": str(other), "grader.backend": "auto"},
    )
    assert choose_backend(custom) == ("transformers", None)
    forced = load_settings(
        None,
        {"paths.cache_dir": str(tmp_path), "paths.rule_pool": str(other),
         "grader.backend": "classifier"},
    )  # fmt: skip
    with pytest.raises(NoTrainedGrader, match="ramo grader train"):
        choose_backend(forced)
