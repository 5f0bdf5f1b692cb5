"""Human judgments -> rule-level grader examples: the one place that maps sources to rules.

A training example is (conversation, response, rule id, answer), answer one of the answer
words (Yes: the response follows the rule, No: it breaks it, NA: the rule does not apply).
How each source of ``../shared/data`` becomes examples:

- GPTFuzz (``grader/gptfuzz_train.jsonl``): each of its 80 harmful questions is mapped below
  (``GPTFUZZ_RULES``, by hand) to the pool's harm rule(s) closest to it. A jailbroken
  response breaks them (No); a refusal or deflection follows them (Yes). The pool has no
  theft rule: property crimes map to fraud-005 (use of what is not yours) or, with
  violence, vio-003 (planning an attack on a person or place); that is coarse, and said.
- refusal_direction (``grader/refusal_direction_benign_pairs.jsonl``): benign requests; the
  answer (chosen) follows ``HELP_RULES``, the steered refusal (rejected) breaks them.
- CoCoNot (``grader/coconot_pref.jsonl``): requests that should be answered; ``chosen``
  follows ``HELP_RULES``, ``rejected`` (worse, sometimes an over-refusal) breaks them.
  ``coconot_contrast_prompts.jsonl`` has no responses and ``coconot_rubric.json`` is
  per-category refusal text, not a rule of this pool: neither is used.
- rbr_gold (``rbr_gold/train.jsonl``): propositions mapped to one rule each
  (``RBR_PROPOSITIONS``), the answer read from the human boolean.
- rbr_propositions (the same file): every one of its 23 propositions as its own "rule", the
  text from the proposition pool (``rules/rbr_propositions_v1.yaml``), Yes when the human
  boolean is true. These are what Rule-Based Rewards grade; the example's rule id is
  ``prop:<id>`` (``PROP_PREFIX``), resolved by ``grading_texts``.
- NA: a response with a harm rule of a category its question is not mapped to.
- llmbar_follow (``llmbar_pairs.jsonl``, training prompts): LLMBar's gold criterion is
  whether an output executes the instruction as given, which is rule help-002 ("answers the
  question that was actually asked"): ``chosen`` follows it, ``rejected`` breaks it.
- off_topic (refusal_direction and CoCoNot training prompts): each prompt with the answer
  its most word-similar other prompt got, which breaks help-002: a fluent answer to a
  neighbouring question (LLMBar's "neighbor" construction, from our own training rows).
- cross_na (GPTFuzz, refusal_direction and CoCoNot training prompts): rules about benign
  requests (``BENIGN_ONLY_RULES``) do not apply to a harmful question, and harm rules do
  not apply to a benign request: NA, so neither kind votes on the other's pairs.
- HH harmless, LLMBar (``hh_harmless_test.jsonl``, ``llmbar_pairs.jsonl``): pairwise human
  preferences with no rule-level label. They become ``PairExample``s: the pair with
  ``PAIR_RULES`` rules drawn at random from the pool, as the random-k selector draws them,
  trained with a Bradley-Terry loss on the labeler's aggregated margin (train_classifier.py).

Held-out rows (``held_out``) are decided by question or prompt, never by row, and are never
trained on; the benchmarks (grader_quality.py, label_quality.py) evaluate on exactly those.
``rbr_gold/test.jsonl`` is held out as a whole.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ramo_stream.core.propositions import PropositionPool
from ramo_stream.core.rules import RulePool

Answer = Literal[0, 1, 2]  # index into AnswerWords.as_tuple(): Yes, No, NA
YES: Literal[0] = 0
NO: Literal[1] = 1
NA: Literal[2] = 2

HELD_OUT_SHARE = 0.2
SPLIT_SALT = "ramo-grader-split-v1"

# GPTFuzz question_id -> the harm rules a jailbroken answer breaks (by hand, one look each).
GPTFUZZ_RULES: dict[int, tuple[str, ...]] = {
    0: ("hate-002", "hate-004"), 1: ("extr-001", "hate-001"), 2: ("misinfo-001",),
    3: ("drug-005",), 4: ("cyber-001",), 5: ("vio-003",), 6: ("fraud-004",),
    7: ("fraud-001",), 8: ("fraud-002",), 9: ("fraud-001",), 10: ("misinfo-001",),
    11: ("priv-002",), 12: ("priv-001", "priv-004"), 13: ("priv-003",), 14: ("drug-003",),
    15: ("vio-003",), 16: ("fraud-001",), 17: ("vio-003",), 18: ("vio-001",),
    19: ("fraud-005",), 20: ("cyber-002",), 21: ("vio-003",), 22: ("fraud-005",),
    23: ("vio-003",), 24: ("fraud-003",), 25: ("fraud-005",), 26: ("cyber-002",),
    27: ("vio-002",), 28: ("priv-002",), 29: ("fraud-005",), 30: ("cyber-002",),
    31: ("vio-003",), 32: ("fraud-001",), 33: ("fraud-005",), 34: ("fraud-005",),
    35: ("fraud-005",), 36: ("fraud-001", "fraud-005"), 37: ("vio-003", "vio-005"),
    38: ("vio-003",), 39: ("misinfo-001",), 40: ("fraud-003",), 41: ("hate-002",),
    42: ("fraud-003",), 43: ("misinfo-001",), 44: ("priv-003",), 45: ("fraud-009",),
    46: ("fraud-001",), 47: ("fraud-005",), 48: ("fraud-005",), 49: ("fraud-001",),
    50: ("fraud-001",), 51: ("vio-003",), 52: ("hate-002",), 53: ("fraud-005",),
    54: ("fraud-005",), 55: ("vio-003",), 56: ("fraud-001",), 57: ("priv-003",),
    58: ("misinfo-001",), 59: ("vio-003",), 60: ("cyber-002",), 61: ("cyber-002",),
    62: ("cyber-002", "priv-003"), 63: ("misinfo-005",), 64: ("fraud-002",),
    65: ("fraud-005",), 66: ("misinfo-005",), 67: ("fraud-001",), 68: ("vio-003",),
    69: ("priv-002",), 70: ("priv-002",), 71: ("vio-005",), 72: ("hate-002",),
    73: ("fraud-001",), 74: ("fraud-003",), 75: ("fraud-005",), 76: ("fraud-005",),
    77: ("fraud-005",), 78: ("fraud-002",), 79: ("vio-003",),
}  # fmt: skip

# Rules a good answer to a benign request follows and an over-refusal or a worse answer breaks.
HELP_RULES: tuple[str, ...] = ("help-001", "help-002", "help-004", "help-006")
# The instruction-following rule (LLMBar's criterion, off-topic answers break it).
FOLLOW_RULE = "help-002"
# Rules whose condition is a benign request: NA for a harmful question (cross_na).
BENIGN_ONLY_RULES: tuple[str, ...] = ("help-001", "help-006", "help-007")

# rbr_gold proposition -> (rule, answer when the proposition is true, when false).
RBR_PROPOSITIONS: dict[str, tuple[str, Answer, Answer]] = {
    "judgement": ("tone-001", NO, YES),
    "insulting_language": ("tone-007", NO, YES),
    "fully_complies": ("help-002", YES, NO),
}


@dataclass(frozen=True)
class Example:
    source: str
    prompt: str | list[dict[str, str]]
    response: str
    rule_id: str
    answer: Answer
    group: str  # the question/prompt key the split is made by


@dataclass(frozen=True)
class PairExample:
    """A human preference with no rule-level label: ``chosen`` should win the labeler's
    aggregated margin over ``rule_ids``."""

    source: str
    prompt: str
    chosen: str
    rejected: str
    rule_ids: tuple[str, ...]
    group: str


# Rules drawn per training pair: 2k sequences per pair per step, so kept small on a CPU.
PAIR_RULES = 2


def held_out(source: str, key: str, share: float = HELD_OUT_SHARE) -> bool:
    """Whether the question/prompt ``key`` of ``source`` is held out (never trained on).

    Deterministic: a salted sha256 of the key, so every run, the trainer and the benchmark
    agree, and all rows of one question fall on the same side.
    """
    digest = hashlib.sha256(f"{SPLIT_SALT}:{source}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def prompt_key(prompt: object) -> str:
    """Split key of a prompt: its text (chat prompts as JSON)."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def read_jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _harm_rules(pool: RulePool) -> list[str]:
    """The pool's harm rules, in pool order (the tone rules are "harmless" too, but not harm)."""
    return [r.id for r in pool if r.kind == "harmless" and not r.id.startswith("tone-")]


def _other_harm_rule(pool: RulePool, exclude: set[str], rng: random.Random) -> str:
    cats = {pool[r].category for r in exclude}
    return rng.choice([r for r in _harm_rules(pool) if pool[r].category not in cats])


def gptfuzz_examples(
    path: Path, pool: RulePool, split: Literal["train", "test"], na_share: float, seed: int
) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for row in read_jsonl(path):
        qid = int(str(row["question_id"]))
        if held_out("gptfuzz", str(qid)) != (split == "test"):
            continue
        rules = GPTFUZZ_RULES[qid]
        prompt, response = str(row["prompt"]), str(row["response"])
        answer: Answer = NO if row["jailbroken"] else YES
        out.append(Example("gptfuzz", prompt, response, rng.choice(rules), answer, str(qid)))
        if rng.random() < na_share:
            na_rule = _other_harm_rule(pool, set(rules), rng)
            out.append(Example("gptfuzz-na", prompt, response, na_rule, NA, str(qid)))
    return out


def split_rows(
    path: Path, source: str, split: Literal["train", "test"]
) -> Iterator[tuple[dict[str, object], str]]:
    """(row, prompt key) of the rows of a prompt/chosen/rejected file on ``split``'s side."""
    for row in read_jsonl(path):
        key = prompt_key(row["prompt"])
        if held_out(source, key) == (split == "test"):
            yield row, key


def pair_examples(
    path: Path,
    source: str,
    split: Literal["train", "test"],
    seed: int,
    rules: tuple[str, ...] = HELP_RULES,
    name: str | None = None,
) -> list[Example]:
    """Preference pairs as rule examples: chosen follows one of ``rules`` (drawn per pair),
    rejected breaks it. ``source`` decides the split; ``name`` (default ``source``) labels."""
    rng = random.Random(seed)
    out = []
    for row, key in split_rows(path, source, split):
        rule = rng.choice(rules)
        prompt = str(row["prompt"])
        out.append(Example(name or source, prompt, str(row["chosen"]), rule, YES, key))
        out.append(Example(name or source, prompt, str(row["rejected"]), rule, NO, key))
    return out


def follow_examples(path: Path, split: Literal["train", "test"]) -> list[Example]:
    """LLMBar pairs: ``chosen`` follows the instruction-following rule, ``rejected`` breaks it
    (split as the pairwise benchmark splits LLMBar)."""
    return pair_examples(path, "llmbar", split, 0, (FOLLOW_RULE,), "llmbar_follow")


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split()
                     if len(w) > 2)  # fmt: skip


def off_topic_examples(paths: dict[str, Path], split: Literal["train", "test"]) -> list[Example]:
    """Each prompt of ``paths`` (source -> file) on ``split``'s side with the ``chosen`` answer
    of the other prompt sharing most words with it (Jaccard): it breaks ``FOLLOW_RULE``.
    Neighbours come from the same side of the split, so no held-out answer is trained on."""
    rows = [
        (str(r["prompt"]), str(r["chosen"]), k)
        for source, path in paths.items()
        for r, k in split_rows(path, source, split)
    ]
    words = [_words(p) for p, _, _ in rows]
    out = []
    for i, (prompt, _, key) in enumerate(rows):
        best, best_j = -1.0, -1
        for j, w in enumerate(words):
            if rows[j][0] == prompt:
                continue
            union = len(words[i] | w)
            sim = len(words[i] & w) / union if union else 0.0
            if sim > best:
                best, best_j = sim, j
        if best_j >= 0:
            out.append(Example("off_topic", prompt, rows[best_j][1], FOLLOW_RULE, NO, key))
    return out


def cross_na_examples(
    data: Path, pool: RulePool, split: Literal["train", "test"], seed: int
) -> list[Example]:
    """NA examples across kinds: a benign-request rule on a GPTFuzz (harmful) question, and a
    harm rule on a refusal_direction or CoCoNot (benign) request, either response."""
    rng = random.Random(seed)
    harm = _harm_rules(pool)
    out = []
    for row in read_jsonl(data / TRAIN_FILES["gptfuzz"]):
        qid = str(row["question_id"])
        if held_out("gptfuzz", qid) == (split == "test"):
            rule = rng.choice(BENIGN_ONLY_RULES)
            out.append(Example("cross_na", str(row["prompt"]), str(row["response"]), rule, NA, qid))
    for source in ("refusal_direction", "coconot"):
        for row, key in split_rows(data / TRAIN_FILES[source], source, split):
            side = rng.choice(("chosen", "rejected"))
            out.append(Example("cross_na", str(row["prompt"]), str(row[side]), rng.choice(harm),
                               NA, key))  # fmt: skip
    return out


def rbr_examples(path: Path) -> list[Example]:
    """Every mapped proposition of every completion (the file decides train or test)."""
    out = []
    for row in read_jsonl(path):
        props = row["propositions"]
        assert isinstance(props, dict)
        prompt = row["prompt"]
        assert isinstance(prompt, list)
        for name, (rule, if_true, if_false) in RBR_PROPOSITIONS.items():
            answer = if_true if props.get(name) else if_false
            out.append(
                Example(
                    f"rbr:{name}", prompt, str(row["completion"]), rule, answer, prompt_key(prompt)
                )  # fmt: skip
            )
    return out


PROP_PREFIX = "prop:"


def proposition_examples(path: Path, props: PropositionPool) -> list[Example]:
    """Every proposition of ``props`` for every completion, Yes when the human says true."""
    out = []
    for row in read_jsonl(path):
        gold = row["propositions"]
        assert isinstance(gold, dict)
        prompt = row["prompt"]
        assert isinstance(prompt, list)
        missing = [p for p in props.ids if p not in gold]
        if missing:
            raise ValueError(f"{path}: row {row.get('id')} has no human label for {missing}")
        for pid in props.ids:
            answer: Answer = YES if gold[pid] else NO
            out.append(Example(f"prop:{pid}", prompt, str(row["completion"]),
                               PROP_PREFIX + pid, answer, prompt_key(prompt)))  # fmt: skip
    return out


def grading_texts(pool: RulePool, props: PropositionPool | None) -> Callable[[str], str]:
    """Rule id -> the text the grader reads: a pool rule, or ``prop:<id>`` a proposition."""

    def text(rule_id: str) -> str:
        if rule_id.startswith(PROP_PREFIX):
            if props is None:
                raise ValueError(f"{rule_id}: proposition examples need a proposition pool")
            return props[rule_id.removeprefix(PROP_PREFIX)].text
        return pool[rule_id].text

    return text


def preference_examples(
    path: Path, source: str, pool: RulePool, split: Literal["train", "test"], seed: int
) -> list[PairExample]:
    """Pairwise preferences (prompt, chosen, rejected) of the ``split`` prompts, each with
    ``PAIR_RULES`` rules of the pool drawn at random (seeded)."""
    rng = random.Random(seed)
    out = []
    for row, key in split_rows(path, source, split):
        rules = tuple(rng.sample(list(pool.ids), PAIR_RULES))
        out.append(PairExample(source, str(row["prompt"]), str(row["chosen"]),
                               str(row["rejected"]), rules, key))  # fmt: skip
    return out


# Training files, relative to the shared data folder, and the rows drawn from each.
TRAIN_FILES = {
    "gptfuzz": "grader/gptfuzz_train.jsonl",
    "refusal_direction": "grader/refusal_direction_benign_pairs.jsonl",
    "coconot": "grader/coconot_pref.jsonl",
    "rbr_gold": "rbr_gold/train.jsonl",
    "rbr_propositions": "rbr_gold/train.jsonl",
    "hh_harmless": "hh_harmless_test.jsonl",
    "llmbar": "llmbar_pairs.jsonl",
}
PREFERENCE_SOURCES = ("hh_harmless", "llmbar")  # trained pairwise (PairExample)
# Sources derived from the files above (their rows' files, for the manifest).
DERIVED_FILES = {
    "llmbar_follow": ("llmbar",),
    "off_topic": ("refusal_direction", "coconot"),
    "cross_na": ("gptfuzz", "refusal_direction", "coconot"),
}


def source_files(name: str) -> tuple[str, ...]:
    """The data files (relative to the shared data folder) a source's rows come from."""
    return tuple(TRAIN_FILES[s] for s in DERIVED_FILES.get(name, (name,)))


def training_examples(
    data: Path,
    pool: RulePool,
    limits: dict[str, int],
    seed: int = 0,
    props: PropositionPool | None = None,
) -> list[Example]:
    """The training split of every source, each capped at ``limits[source]`` rows (drawn
    with ``seed``), shuffled. Raises if a mapped rule is missing from ``pool``. The
    proposition examples come only with ``props`` and a non-zero ``rbr_propositions`` limit."""
    missing = sorted(
        {r for rules in GPTFUZZ_RULES.values() for r in rules}.union(HELP_RULES)
        .union(r for r, _, _ in RBR_PROPOSITIONS.values()).union(BENIGN_ONLY_RULES, [FOLLOW_RULE])
        - set(pool.ids)
    )  # fmt: skip
    if missing:
        raise ValueError(
            f"rules {missing} of the grader's source mapping (ramo_stream/label/grading/sources.py)"
            f" are not in pool {pool.name}; update the mapping for this pool"
        )
    rng = random.Random(seed)
    parts = {
        "gptfuzz": gptfuzz_examples(data / TRAIN_FILES["gptfuzz"], pool, "train", 0.15, seed),
        "refusal_direction": pair_examples(
            data / TRAIN_FILES["refusal_direction"], "refusal_direction", "train", seed
        ),
        "coconot": pair_examples(data / TRAIN_FILES["coconot"], "coconot", "train", seed),
        "rbr_gold": rbr_examples(data / TRAIN_FILES["rbr_gold"]),
    }
    if limits.get("llmbar_follow", 0) > 0:
        parts["llmbar_follow"] = follow_examples(data / TRAIN_FILES["llmbar"], "train")
    if limits.get("off_topic", 0) > 0:
        files = {s: data / TRAIN_FILES[s] for s in ("refusal_direction", "coconot")}
        parts["off_topic"] = off_topic_examples(files, "train")
    if limits.get("cross_na", 0) > 0:
        parts["cross_na"] = cross_na_examples(data, pool, "train", seed)
    if props is not None and limits.get("rbr_propositions", 0) > 0:
        parts["rbr_propositions"] = proposition_examples(
            data / TRAIN_FILES["rbr_propositions"], props
        )
    out: list[Example] = []
    for name, rows in parts.items():
        rng.shuffle(rows)
        out += rows[: limits.get(name, len(rows))]
    rng.shuffle(out)
    return out


def training_pairs(
    data: Path, pool: RulePool, limits: dict[str, int], seed: int = 0
) -> list[PairExample]:
    """The training split of the pairwise sources, each capped at ``limits[source]``."""
    rng = random.Random(seed)
    out: list[PairExample] = []
    for name in PREFERENCE_SOURCES:
        rows = preference_examples(data / TRAIN_FILES[name], name, pool, "train", seed)
        rng.shuffle(rows)
        out += rows[: limits.get(name, len(rows))]
    rng.shuffle(out)
    return out
