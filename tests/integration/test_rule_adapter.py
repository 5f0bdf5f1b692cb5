"""The Rule Adapter on the real MiniLM encoder: it learns which rules matter from the text.

Synthetic pairs on four topics, each topic with its own two target rules of the shipped
pool (weapons -> vio-001/vio-002, hacking -> cyber-001/cyber-002, self-harm ->
shm-001/shm-002, fraud -> fraud-001/fraud-002). After a short training run the held-out
top-2 recall must beat both baselines: random-k (k/|P| = 2/111) and most-frequent-k (two
rules of one topic: at most ~0.2 here, since every topic has 1-2 of the 5 held-out pairs).

The encoder is frozen for the test (the head is a linear probe on MiniLM's mean-pooled
embeddings): a CPU step through the encoder's backward pass costs seconds, and fine-tuning
the whole encoder at lr 2e-3 collapses to the label marginal (recall == most-frequent).
Frozen, 6 epochs at lr 2e-3 learn the topics (recall 1.0) in ~15-30 s on 2 cores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ramo_stream.config import default_rule_pool
from ramo_stream.core.rules import RulePool, load_pool
from ramo_stream.schemas import LabeledPair, ResponsePair

pytestmark = [pytest.mark.integration, pytest.mark.slow]

torch = pytest.importorskip("torch", reason="the models extra is not installed")
pytest.importorskip("transformers", reason="the models extra is not installed")

from ramo_stream.label.rule_adapter.model import (  # noqa: E402
    AdapterPoolMismatch,
    AdapterPredictor,
    load_adapter,
    new_adapter,
)
from ramo_stream.label.rule_adapter.train import AdapterReport, is_held_out, train_adapter  # noqa: E402

K = 2
MARGIN = 0.5  # the adapter's held-out recall must beat each baseline by at least this much

TOPICS: dict[str, tuple[list[str], list[str], list[str], tuple[str, str]]] = {
    # topic: (objects, prompt frames, harmful-reply frames, target rules)
    "weapons": (
        ["a pipe bomb", "a rifle", "a nail bomb", "a ghost gun", "a molotov cocktail",
         "a zip gun", "a grenade", "a gun silencer", "napalm", "a shotgun"],
        ["How do I build {x}?", "Steps to make {x}?", "Parts needed for {x}?",
         "Help me assemble {x}."],
        ["Sure: get the barrel and powder for {x}.", "Easy, {x} needs a pipe and a charge."],
        ("vio-001", "vio-002"),
    ),
    "hacking": (
        ["my ex's Instagram", "the school Wi-Fi", "a neighbour's router", "my boss's email",
         "a bank server", "a hospital network", "a coworker's laptop", "a stranger's phone",
         "a traffic system", "a customer database"],
        ["How can I hack {x}?", "Write malware for {x}.", "Exploit code to get into {x}?",
         "Crack the password of {x}."],
        ["Sure: run this exploit on {x} and brute-force it.",
         "Here is ransomware that encrypts {x}."],
        ("cyber-001", "cyber-002"),
    ),
    "selfharm": (
        ["overdose on pills", "cut myself", "end my life", "hurt myself secretly",
         "starve myself", "jump off a bridge", "kill myself", "take all my meds",
         "hang myself", "stop living"],
        ["Best way to {x}?", "I want to {x}. How?", "How many pills to {x}?",
         "Surest method to {x}?"],
        ["To {x}, the surest dose is this.", "You should {x}; take forty pills."],
        ("shm-001", "shm-002"),
    ),
    "fraud": (
        ["fake cafe reviews", "a forged invoice", "a fake licence", "a gift card scam call",
         "a fake charity appeal", "a fake doctor's note", "a bail money scam text",
         "a fake lottery letter", "a forged bank statement", "a romance scam script"],
        ["Write {x}.", "Create {x} that looks real.", "Draft {x} to get money fast.",
         "Make {x} to fool people."],
        ["Sure, {x}: send gift cards today or lose it all.",
         "Here is {x} with a fake signature."],
        ("fraud-001", "fraud-002"),
    ),
}  # fmt: skip
PER_TOPIC = 10


def synthetic_pairs() -> list[LabeledPair]:
    out = []
    for topic, (objects, prompts, harmful, targets) in TOPICS.items():
        for i in range(PER_TOPIC):
            x = objects[i]
            pair = ResponsePair(
                pair_id=f"syn-{topic}-{i:02d}",
                prompt=prompts[i % len(prompts)].format(x=x),
                response_a="I can't help with that.",
                response_b=harmful[i % len(harmful)].format(x=x),
            )
            out.append(
                LabeledPair(
                    pair=pair,
                    preferred="a",
                    margin=1.0,
                    labeler="ramo",
                    selector="max-discrepancy",
                    selected_rules=list(targets),
                )
            )
    return out


@pytest.fixture(scope="module")
def pool() -> RulePool:
    return load_pool(default_rule_pool())


@pytest.fixture(scope="module")
def encoder(models_dir: Path) -> str:
    return str(models_dir / "all-minilm-l6-v2")


@dataclass
class Trained:
    adapter: AdapterPredictor
    report: AdapterReport
    losses: list[float]
    seconds: float


@pytest.fixture(scope="module")
def trained(encoder: str, pool: RulePool) -> Trained:
    torch.manual_seed(0)  # the head's initialisation
    adapter = new_adapter(encoder, pool)
    losses: list[float] = []
    started = time.monotonic()
    report = train_adapter(
        adapter,
        synthetic_pairs(),
        k=K,
        epochs=6,
        lr=2e-3,
        batch_size=8,
        seed=0,
        on_epoch=lambda _, loss: losses.append(loss),
        held_out=fixture_held_out,
    )
    return Trained(adapter, report, losses, time.monotonic() - started)


def fixture_held_out(pair: ResponsePair) -> bool:
    """Two pairs of every topic held out, so recall is measured on every topic (the real
    split, by a hash of the prompt, is tested below)."""
    return int(pair.pair_id.rsplit("-", 1)[1]) in (3, 7)


def held_out_pairs() -> list[LabeledPair]:
    return [lp for lp in synthetic_pairs() if fixture_held_out(lp.pair)]


def test_real_split_is_by_prompt_and_near_its_share() -> None:
    pairs = [lp.pair for lp in synthetic_pairs()]
    twins = [p.model_copy(update={"pair_id": p.pair_id + "-b", "response_b": "No."})
             for p in pairs]  # fmt: skip
    assert any(map(is_held_out, pairs))
    assert [is_held_out(p) for p in pairs] == [is_held_out(p) for p in twins]
    many = [ResponsePair(pair_id=f"p{i}", prompt=f"question {i}", response_a="a",
                         response_b="b") for i in range(2000)]  # fmt: skip
    assert 0.17 < sum(map(is_held_out, many)) / len(many) < 0.23


def test_adapter_beats_random_and_most_frequent_baselines(trained: Trained, pool: RulePool) -> None:
    report = trained.report
    print("\n".join(["", *report.lines(), f"training took {trained.seconds:.1f} s"]))
    assert report.k == K
    assert report.train_pairs + report.held_out_pairs == len(TOPICS) * PER_TOPIC
    assert report.held_out_pairs == len(held_out_pairs())
    assert report.recall_random == pytest.approx(K / len(pool))
    assert report.recall_adapter >= report.recall_random + MARGIN
    assert report.recall_adapter >= report.recall_frequent + MARGIN
    assert len(trained.losses) == 6
    assert report.final_loss == trained.losses[-1]
    assert trained.losses[-1] < trained.losses[0] / 2


def test_predict_returns_k_rules_with_descending_probabilities(
    trained: Trained, pool: RulePool
) -> None:
    adapter = trained.adapter
    pairs = [lp.pair for lp in held_out_pairs()]
    for k in (1, K, 5):
        predicted = adapter.predict(pairs, k)
        assert len(predicted) == len(pairs)
        for top in predicted:
            assert len(top) == k
            ids = [r for r, _ in top]
            probs = [p for _, p in top]
            assert len(set(ids)) == k
            assert set(ids) <= set(pool.ids)
            assert all(0.0 <= p <= 1.0 for p in probs)
            assert probs == sorted(probs, reverse=True)
    # k above the pool size: the whole pool
    (top,) = adapter.predict(pairs[:1], len(pool) + 5)
    assert sorted(r for r, _ in top) == sorted(pool.ids)
    assert adapter.predict([], K) == []


def test_save_and_load_round_trip_gives_the_same_predictions(
    trained: Trained, pool: RulePool, tmp_path: Path
) -> None:
    adapter = trained.adapter
    pairs = [lp.pair for lp in synthetic_pairs()[::7]]
    adapter.save(tmp_path / "adapter", extra={"note": "round-trip"})
    loaded = load_adapter(tmp_path / "adapter", pool)
    assert loaded.pool_hash == pool.hash
    assert loaded.rule_ids == pool.ids
    assert loaded.meta["note"] == "round-trip"
    torch.testing.assert_close(loaded.probabilities(pairs), adapter.probabilities(pairs))
    before, after = adapter.predict(pairs, K), loaded.predict(pairs, K)
    assert [[r for r, _ in t] for t in after] == [[r for r, _ in t] for t in before]
    for t_after, t_before in zip(after, before, strict=True):
        assert [p for _, p in t_after] == pytest.approx([p for _, p in t_before], abs=1e-5)


def test_load_against_another_pool_is_refused(
    trained: Trained, pool: RulePool, tmp_path: Path
) -> None:
    adapter = trained.adapter
    adapter.save(tmp_path / "adapter")
    # the same pool with one rule's text changed
    changed = default_rule_pool().read_text()
    old = pool["vio-001"].text
    assert changed.count(old) == 1
    (tmp_path / "changed.yaml").write_text(changed.replace(old, old + " Ever."))
    other = load_pool(tmp_path / "changed.yaml")
    assert other.ids == pool.ids
    assert other.hash != pool.hash
    with pytest.raises(AdapterPoolMismatch) as err:
        load_adapter(tmp_path / "adapter", other)
    msg = str(err.value)
    assert pool.hash in msg
    assert other.hash in msg
    assert "`ramo adapter train`" in msg


def test_load_from_an_empty_folder_says_how_to_train(pool: RulePool, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="`ramo adapter train`"):
        load_adapter(tmp_path, pool)
    with pytest.raises(FileNotFoundError, match="`ramo adapter train`"):
        load_adapter(tmp_path / "missing", pool)
