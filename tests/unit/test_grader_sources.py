"""The grader's source -> rule mapping and its held-out split (pure logic, no models)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ramo_stream.config import default_propositions, default_rule_pool
from ramo_stream.core.propositions import load_propositions
from ramo_stream.core.rules import load_pool
from ramo_stream.core.stats import wilson_interval as wilson
from ramo_stream.label.grading.sources import (
    BENIGN_ONLY_RULES,
    FOLLOW_RULE,
    GPTFUZZ_RULES,
    HELP_RULES,
    NA,
    NO,
    PAIR_RULES,
    RBR_PROPOSITIONS,
    YES,
    cross_na_examples,
    follow_examples,
    gptfuzz_examples,
    grading_texts,
    held_out,
    off_topic_examples,
    pair_examples,
    preference_examples,
    proposition_examples,
    source_files,
    training_examples,
)
from ramo_stream.label.grading.train_classifier import ece


def test_mapping_names_only_rules_of_the_shipped_pool() -> None:
    pool = load_pool(default_rule_pool())
    mapped = {r for rules in GPTFUZZ_RULES.values() for r in rules} | set(HELP_RULES)
    mapped |= {r for r, _, _ in RBR_PROPOSITIONS.values()} | {*BENIGN_ONLY_RULES, FOLLOW_RULE}
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


def test_preference_pairs_split_by_prompt_with_random_pool_rules(tmp_path: Path) -> None:
    pool = load_pool(default_rule_pool())
    rows = [{"prompt": f"p{i // 2}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(400)]
    path = _write(tmp_path / "hh.jsonl", rows)
    train = preference_examples(path, "hh_harmless", pool, "train", seed=0)
    test = preference_examples(path, "hh_harmless", pool, "test", seed=0)
    assert {e.group for e in train}.isdisjoint({e.group for e in test})  # by prompt
    assert len(train) + len(test) == 400 and 0.1 < len(test) / 400 < 0.3
    assert all(len(set(e.rule_ids)) == PAIR_RULES and set(e.rule_ids) <= set(pool.ids)
               for e in train)  # fmt: skip
    assert len({e.rule_ids for e in train}) > len(train) // 2  # drawn per pair, not fixed
    assert preference_examples(path, "hh_harmless", pool, "train", seed=0) == train


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
    from ramo_stream.label.grading.template import CLASSIFIER_TEMPLATE_VERSION

    settings = load_settings(None, {"paths.cache_dir": str(tmp_path)})
    assert settings.grader.backend == "auto"  # the default
    backend, artifact = choose_backend(settings)
    assert backend == "classifier" and artifact is not None  # the shipped artifact
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["rule_pool_hash"] == load_pool(default_rule_pool()).hash
    assert manifest["template_version"] == CLASSIFIER_TEMPLATE_VERSION
    # A grader trained on an older template, newer than the shipped one, is passed over.
    stale = tmp_path / "graders" / "classifier-29990101T000000Z"
    stale.mkdir(parents=True)
    (stale / "manifest.json").write_text(json.dumps(
        {**manifest, "created": "2999-01-01T00:00:00Z", "template_version": "ramo-cls-v1"}
    ))  # fmt: skip
    assert choose_backend(settings) == ("classifier", artifact)
    # An explicit LLM grader model means that LLM, zero-shot.
    llm = load_settings(None, {"paths.cache_dir": str(tmp_path), "models.grader": "some/llm"})
    assert choose_backend(llm) == ("transformers", None)
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


def test_every_proposition_is_an_example_graded_by_its_own_text(tmp_path: Path) -> None:
    props = load_propositions(default_propositions())
    prompt = [{"role": "user", "content": "help"}]
    gold = {pid: pid in ("apology", "judgement") for pid in props.ids}
    path = _write(tmp_path / "rbr.jsonl", [{"prompt": prompt, "completion": "Sorry, no.",
                                            "propositions": gold}])  # fmt: skip
    examples = proposition_examples(path, props)
    assert [e.rule_id for e in examples] == [f"prop:{p}" for p in props.ids]
    assert {e.rule_id for e in examples if e.answer == YES} == {"prop:apology", "prop:judgement"}
    assert all(e.answer in (YES, NO) for e in examples)
    text = grading_texts(load_pool(default_rule_pool()), props)
    assert text("prop:apology") == props["apology"].text
    assert text("tone-001") == load_pool(default_rule_pool())["tone-001"].text
    with pytest.raises(ValueError, match="prop:apology"):
        grading_texts(load_pool(default_rule_pool()), None)("prop:apology")
    del gold["apology"]
    _write(path, [{"prompt": prompt, "completion": "x", "propositions": gold}])
    with pytest.raises(ValueError, match="apology"):
        proposition_examples(path, props)


def test_llmbar_follow_uses_the_pairwise_split_and_the_follow_rule(tmp_path: Path) -> None:
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(300)]
    path = _write(tmp_path / "llmbar.jsonl", rows)
    train = follow_examples(path, "train")
    # The same prompts as the pairwise benchmark holds out (source "llmbar"), never trained on.
    held = {e.group for e in preference_examples(path, "llmbar", load_pool(default_rule_pool()),
                                                 "test", seed=0)}  # fmt: skip
    assert held and held.isdisjoint({e.group for e in train})
    assert len(train) == 2 * (300 - len(held))
    assert all(e.rule_id == FOLLOW_RULE for e in train)
    assert all((e.answer == YES) == e.response.startswith("c") for e in train)


def test_off_topic_pairs_a_prompt_with_its_nearest_neighbours_answer(tmp_path: Path) -> None:
    topics = ["bake bread flour yeast", "train puppy leash walk", "tune guitar strings pitch"]
    rows = [{"prompt": f"{t} question {i}", "chosen": f"answer to {t} {i}", "rejected": "no"}
            for t in topics for i in range(40)]  # fmt: skip
    a = _write(tmp_path / "a.jsonl", rows[:60])
    b = _write(tmp_path / "b.jsonl", rows[60:])
    out = off_topic_examples({"refusal_direction": a, "coconot": b}, "train")
    assert out and all(e.answer == NO and e.rule_id == FOLLOW_RULE for e in out)
    for e in out:
        topic = e.prompt.split(" question ")[0]
        assert e.response.startswith(f"answer to {topic}")  # a neighbour: same topic words
        assert e.response != f"answer to {e.prompt.replace(' question ', ' ')}"  # not its own
    # Neighbours come from the training side only: no held-out prompt's answer appears.
    held = {
        f"answer to {r['prompt'].replace(' question ', ' ')}"
        for r in rows
        if held_out("refusal_direction" if r in rows[:60] else "coconot", str(r["prompt"]))
    }
    assert held and held.isdisjoint({e.response for e in out})


def test_cross_na_marks_the_other_kinds_rules_not_applicable(tmp_path: Path) -> None:
    pool = load_pool(default_rule_pool())
    (tmp_path / "grader").mkdir()
    _write(tmp_path / "grader" / "gptfuzz_train.jsonl",
           [{"prompt": f"harm {q}", "question_id": q, "response": "r", "jailbroken": False}
            for q in range(80)])  # fmt: skip
    for name in ("refusal_direction_benign_pairs", "coconot_pref"):
        _write(
            tmp_path / "grader" / f"{name}.jsonl",
            [{"prompt": f"{name} {i}", "chosen": "c", "rejected": "r"} for i in range(50)],
        )
    out = cross_na_examples(tmp_path, pool, "train", seed=0)
    assert out and all(e.answer == NA for e in out)
    harmful = [e for e in out if e.prompt.startswith("harm")]
    benign = [e for e in out if not e.prompt.startswith("harm")]
    assert harmful and all(e.rule_id in BENIGN_ONLY_RULES for e in harmful)
    assert benign and all(pool[e.rule_id].kind == "harmless" for e in benign)
    assert not any(held_out("gptfuzz", e.group) for e in harmful)
    assert source_files("cross_na") == ("grader/gptfuzz_train.jsonl",
                                        "grader/refusal_direction_benign_pairs.jsonl",
                                        "grader/coconot_pref.jsonl")  # fmt: skip
    assert source_files("gptfuzz") == ("grader/gptfuzz_train.jsonl",)
