"""Rule pools: the shipped pool, the content hash, and errors that name the problem."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from ramo_stream.config import default_rule_pool
from ramo_stream.core.rules import CATEGORIES, RulePool, RulePoolError, load_pool, load_pools

SHIPPED = default_rule_pool()


@pytest.fixture(scope="module")
def shipped_raw() -> dict[str, Any]:
    return yaml.safe_load(SHIPPED.read_text())


def write(tmp_path: Path, name: str, data: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def small_pool(name: str = "small") -> dict[str, Any]:
    return {
        "name": name,
        "description": "tiny",
        "rules": [
            {
                "id": "vio-001",
                "category": "violence_weapons",
                "kind": "harmless",
                "text": "The response does not explain how to build a weapon.",
            },
            {
                "id": "help-001",
                "category": "helpfulness_overrefusal",
                "kind": "helpful",
                "text": "The response answers a benign question directly.",
            },
        ],
    }


# ---------------------------------------------------------------- the shipped pool


def test_shipped_pool_file_exists() -> None:
    assert SHIPPED.is_file()
    assert SHIPPED.name == "safety_v1.yaml"


def test_shipped_pool_loads_with_enough_rules() -> None:
    pool = load_pool(SHIPPED)
    assert pool.name
    assert len(pool) >= 100
    assert len(pool.ids) == len(set(pool.ids)) == len(pool)


def test_shipped_pool_covers_every_category() -> None:
    present = Counter(r.category for r in load_pool(SHIPPED))
    missing = [c for c in CATEGORIES if present[c] == 0]
    assert not missing
    assert set(present) <= set(CATEGORIES)


def test_shipped_pool_has_helpful_rules() -> None:
    kinds = Counter(r.kind for r in load_pool(SHIPPED))
    assert kinds["helpful"] >= 30
    assert kinds["harmless"] >= 30
    assert set(kinds) == {"harmless", "helpful"}


def test_hash_is_stable_hex() -> None:
    h1 = load_pool(SHIPPED).hash
    h2 = load_pool(SHIPPED).hash
    assert h1 == h2
    assert re.fullmatch(r"[0-9a-f]{16}", h1)


# ---------------------------------------------------------------- what the hash covers


def test_hash_changes_when_a_rule_text_changes(tmp_path: Path, shipped_raw: dict[str, Any]) -> None:
    base = load_pool(write(tmp_path, "base.yaml", shipped_raw))
    assert base.hash == load_pool(SHIPPED).hash
    changed = {**shipped_raw, "rules": [dict(r) for r in shipped_raw["rules"]]}
    changed["rules"][5]["text"] += " Really."
    assert load_pool(write(tmp_path, "text.yaml", changed)).hash != base.hash


def test_hash_changes_when_rule_order_changes(tmp_path: Path, shipped_raw: dict[str, Any]) -> None:
    rules = list(shipped_raw["rules"])
    rules[0], rules[1] = rules[1], rules[0]
    swapped = load_pool(write(tmp_path, "order.yaml", {**shipped_raw, "rules": rules}))
    assert set(swapped.ids) == set(load_pool(SHIPPED).ids)
    assert swapped.hash != load_pool(SHIPPED).hash


def test_hash_changes_when_category_or_kind_changes(tmp_path: Path) -> None:
    base = small_pool()
    h = load_pool(write(tmp_path, "b.yaml", base)).hash
    cat = small_pool()
    cat["rules"][0]["category"] = "extremism"
    kind = small_pool()
    kind["rules"][0]["kind"] = "helpful"
    assert load_pool(write(tmp_path, "c.yaml", cat)).hash != h
    assert load_pool(write(tmp_path, "k.yaml", kind)).hash != h


def test_hash_ignores_description_and_name(tmp_path: Path, shipped_raw: dict[str, Any]) -> None:
    other = {**shipped_raw, "description": "A completely different description.", "name": "renamed"}
    pool = load_pool(write(tmp_path, "desc.yaml", other))
    assert pool.name == "renamed"
    assert pool.hash == load_pool(SHIPPED).hash


# ---------------------------------------------------------------- invalid pools


def test_duplicate_ids_rejected_naming_the_id(tmp_path: Path) -> None:
    data = small_pool()
    data["rules"][1]["id"] = "vio-001"
    path = write(tmp_path, "dupe.yaml", data)
    with pytest.raises(RulePoolError) as exc:
        load_pool(path)
    msg = str(exc.value)
    assert "vio-001" in msg
    assert "duplicate" in msg
    assert str(path) in msg


def test_unknown_category_rejected_naming_it(tmp_path: Path) -> None:
    data = small_pool()
    data["rules"][0]["category"] = "astrology"
    with pytest.raises(RulePoolError, match="astrology"):
        load_pool(write(tmp_path, "cat.yaml", data))


def test_unknown_kind_rejected(tmp_path: Path) -> None:
    data = small_pool()
    data["rules"][0]["kind"] = "neutral"
    with pytest.raises(RulePoolError, match=r"rules\.0\.kind"):
        load_pool(write(tmp_path, "kind.yaml", data))


def test_bad_rule_id_rejected(tmp_path: Path) -> None:
    data = small_pool()
    data["rules"][0]["id"] = "Has Space"
    with pytest.raises(RulePoolError, match=r"rules\.0\.id"):
        load_pool(write(tmp_path, "id.yaml", data))


def test_empty_rules_rejected(tmp_path: Path) -> None:
    with pytest.raises(RulePoolError, match="rules"):
        load_pool(write(tmp_path, "empty.yaml", {"name": "x", "rules": []}))


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "pool.yaml"
    with pytest.raises(RulePoolError) as exc:
        load_pool(path)
    assert str(path) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_invalid_yaml_names_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nrules: [\n  - {id: a\n")
    with pytest.raises(RulePoolError) as exc:
        load_pool(path)
    assert str(path) in str(exc.value)
    assert "not valid YAML" in str(exc.value)


@pytest.mark.parametrize("body", ["- just\n- a list\n", "", "42\n"])
def test_non_mapping_names_path(tmp_path: Path, body: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(body)
    with pytest.raises(RulePoolError, match=re.escape(str(path))):
        load_pool(path)


# ---------------------------------------------------------------- several pools, lookup


def test_load_pools_by_name(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", small_pool("alpha"))
    pools = load_pools([a, SHIPPED])
    assert set(pools) == {"alpha", load_pool(SHIPPED).name}
    assert len(pools["alpha"]) == 2
    assert isinstance(pools["alpha"], RulePool)


def test_load_pools_rejects_same_name(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", small_pool("same"))
    b = write(tmp_path, "b.yaml", small_pool("same"))
    with pytest.raises(RulePoolError) as exc:
        load_pools([a, b])
    assert "same" in str(exc.value)
    assert str(b) in str(exc.value)


def test_getitem(tmp_path: Path) -> None:
    pool = load_pool(write(tmp_path, "a.yaml", small_pool()))
    rule = pool["help-001"]
    assert rule.kind == "helpful"
    assert rule.category == "helpfulness_overrefusal"
    with pytest.raises(KeyError, match="nope-001"):
        pool["nope-001"]
    assert [r.id for r in pool] == pool.ids == ["vio-001", "help-001"]
