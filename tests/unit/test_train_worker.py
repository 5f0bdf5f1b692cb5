"""The trainer worker's logic without Ray: one CPU worker on a tiny randomly initialised
BERT (built here, a few hundred kB), labels from a file, versions in a local registry.
Ray Train, DDP and the broker are in tests/integration/test_trainer.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ramo_stream.config import flat_settings, load_settings
from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.train.data import is_heldout

torch = pytest.importorskip("torch", reason="the train extra is not installed")
transformers = pytest.importorskip("transformers", reason="the models extra is not installed")

WORDS = "what is tea chess jazz honey kites bread here sure good question user assistant"


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer BERT with a 16-wide hidden state and a word-level vocabulary."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ".", "?", "(", ")", "-"]
    vocab.write_text("\n".join(specials + WORDS.split() + [str(i) for i in range(100)]) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def label(i: int, preferred: str = "a", **pair: Any) -> LabeledPair:
    fields = {"prompt": f"what is tea ({i})", "response_a": "good", "response_b": "sure",
              **pair}  # fmt: skip
    return LabeledPair.model_validate(
        {"pair": ResponsePair(**fields), "preferred": preferred, "margin": 1.0, "labeler": "test",
         "rule_pool_hash": "pool1", "grader": "g", "template_version": "t"}
    )  # fmt: skip


def worker_config(tmp_path: Path, backbone: Path, data: Path, **train: Any) -> dict[str, Any]:
    settings = load_settings(
        overrides={
            "paths.cache_dir": str(tmp_path / "cache"),
            "train.batch_pairs": 4,
            "train.batch_tokens": 4096,
            "train.max_length": 32,
            "train.flush_s": 0.0,
            "train.heldout_every": 5,
            "train.publish_every_steps": 1000,
            "train.idle_stop_s": 5.0,
            **{f"train.{k}": v for k, v in train.items()},
        }
    )
    return {
        "settings": flat_settings(settings),
        "registry": str(tmp_path / "registry"),
        "backbone": str(backbone),
        "from_file": str(data),
    }


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_absorb_sorts_labels_into_training_held_out_ties_duplicates_and_letters(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    from ramo_stream.train.sources import Record
    from ramo_stream.train.worker import Worker

    data = write_lines(tmp_path / "labels.jsonl", [b"{}"])
    w = Worker(worker_config(tmp_path, tiny_backbone, data))
    labels = [label(i) for i in range(20)]
    tie = label(99, preferred="tie")
    records = [lp.model_dump_json().encode() for lp in [*labels, labels[0], tie]] + [b"{bad"]
    w.absorb([Record("f", 0, i, v) for i, v in enumerate(records)])

    held = [lp.pair_id for lp in labels if is_heldout(lp.pair_id, 5)]
    assert 0 < len(held) < len(labels)  # the ids split both ways
    assert [i.pair.pair_id for i in w.heldout] == held
    assert len(w.batcher) == len(labels) - len(held)
    assert (w.c.ties, w.c.duplicates, w.c.dead_letters) == (1, 1, 1)
    assert w.new_ids == [lp.pair_id for lp in labels]
    assert w.c.lineage == {"rule_pool_hash": "pool1", "grader": "g", "template_version": "t"}
    assert w.unpublished_reads == len(records)


def test_run_trains_every_pair_once_publishes_and_a_restart_reads_nothing_again(
    tmp_path: Path, tiny_backbone: Path
) -> None:
    from ramo_stream.registry.store import Registry
    from ramo_stream.train.loop import run
    from ramo_stream.train.worker import TRAINER_STATE, Worker

    labels = [label(i, preferred="ab"[i % 2]) for i in range(30)]
    lines = [lp.model_dump_json().encode() for lp in labels] + [
        b"{bad",
        labels[3].model_dump_json().encode(),
    ]
    data = write_lines(tmp_path / "labels.jsonl", lines)
    config = worker_config(tmp_path, tiny_backbone, data)

    run(Worker(config))

    registry = Registry(config["registry"])
    (version,) = registry.versions()
    trained = [lp for lp in labels if not is_heldout(lp.pair_id, 5)]
    assert version.samples_seen == len(trained)
    assert version.heldout_size == len(labels) - len(trained)
    assert version.steps >= -(-len(trained) // 4)  # micro-batches of at most 4 pairs
    assert version.offsets == {f"file:{data.resolve()}": {0: len(lines)}}
    assert (version.metrics["dead_letters"], version.metrics["duplicates_skipped"]) == (1, 1)
    assert version.rule_pool_hash == "pool1" and version.base_model == str(tiny_backbone)
    saved = torch.load(registry.path(version.version) / TRAINER_STATE)
    assert sorted(saved["trained_ids"]) == sorted(lp.pair_id for lp in labels)

    # A restart loads that version, seeks past every line, and has nothing to publish.
    again = Worker(config)
    assert again.c.steps == version.steps and again.source.exhausted()
    run(again)
    assert [v.version for v in registry.versions()] == [version.version]


def test_driver_requests_reach_the_worker(tmp_path: Path, tiny_backbone: Path) -> None:
    from ramo_stream.train.worker import Worker

    data = write_lines(tmp_path / "labels.jsonl", [label(0).model_dump_json().encode()])
    asked: list[int] = []

    def requests() -> tuple[bool, bool]:
        asked.append(1)
        return False, True

    w = Worker(worker_config(tmp_path, tiny_backbone, data), requests=requests)
    assert w.requests() == (False, True) and asked == [1]
    assert Worker(worker_config(tmp_path, tiny_backbone, data)).requests() == (False, False)
    # max_steps is the worker's own stop, asked before the driver.
    capped = Worker(worker_config(tmp_path, tiny_backbone, data, max_steps=2), requests=requests)
    capped.c.steps = 1
    assert capped.requests() == (False, True)
    capped.c.steps = 2
    assert capped.requests() == (True, False) and asked == [1, 1]
