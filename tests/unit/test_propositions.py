"""The proposition pool of Rule-Based Rewards: loading, checks, hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ramo_stream.config import Settings
from ramo_stream.core.propositions import (
    RESPONSE_TYPES,
    PropositionPoolError,
    load_propositions,
    response_type_id,
)

GOLD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rbr_gold" / "train.jsonl"


def _write(tmp_path: Path, props: list[dict[str, object]]) -> Path:
    path = tmp_path / "props.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "propositions": props}))
    return path


def test_shipped_pool_loads_and_separates_only_known_types() -> None:
    pool = load_propositions(Settings().paths.propositions)
    assert len(pool) == 23
    assert {t for p in pool for t in p.separates} <= set(RESPONSE_TYPES)


@pytest.mark.skipif(not GOLD.is_file(), reason=f"{GOLD} absent (../shared/data not beside)")
def test_shipped_pool_names_exactly_the_gold_propositions() -> None:
    gold = set(json.loads(GOLD.read_text().splitlines()[0])["propositions"])
    assert set(load_propositions(Settings().paths.propositions).ids) == gold


def test_duplicate_ids_and_unknown_types_are_named(tmp_path: Path) -> None:
    p = {"id": "apology", "text": "The response apologises.", "separates": ["comply"]}
    with pytest.raises(PropositionPoolError, match="apology"):
        load_propositions(_write(tmp_path, [p, p]))
    bad = dict(p, separates=["refuse_softly"])
    with pytest.raises(PropositionPoolError, match="refuse_softly"):
        load_propositions(_write(tmp_path, [bad]))


def test_missing_file_says_which_setting(tmp_path: Path) -> None:
    with pytest.raises(PropositionPoolError, match="paths.propositions"):
        load_propositions(tmp_path / "nope.yaml")


def test_hash_follows_text_not_description(tmp_path: Path) -> None:
    p = {"id": "apology", "text": "The response apologises.", "separates": ["comply"]}
    base = load_propositions(_write(tmp_path, [p])).hash
    path = tmp_path / "props.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "description": "x", "propositions": [p]}))
    assert load_propositions(path).hash == base
    reworded = _write(tmp_path, [dict(p, text="The response says sorry.")])
    assert load_propositions(reworded).hash != base


def test_response_type_ids_follow_the_gold_spelling() -> None:
    assert response_type_id("Safe Refuse 2") == "safe_refuse_2"
    assert response_type_id("Hard Refuse") == "hard_refuse"
    with pytest.raises(ValueError, match="Soft Refuse"):
        response_type_id("Soft Refuse")
