"""One trainer worker's state and steps: labels absorbed, Bradley–Terry steps, held-out
accuracy, versions published. ``loop.run`` drives it; Ray Train gives it its rank, device
and model wrapping (``loop.train_worker``), and a unit test builds it without Ray.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.loss import bradley_terry_loss
from ramo_stream.registry.model import encode, format_text, load_reward_model, rewards
from ramo_stream.schemas import DeadLetter, LabeledPair, Rejection
from ramo_stream.stream.dedup import SeenIds
from ramo_stream.train.data import MicroBatcher, TrainPair, is_heldout, parse_label, to_train_pair
from ramo_stream.train.sources import LabelSource, Positions, Record

TRAINER_STATE = "trainer_state.pt"  # optimizer state, beside the Hugging Face files


@dataclass
class _Item:
    pair: TrainPair
    chosen_text: str
    rejected_text: str


@dataclass
class _Counters:
    steps: int = 0
    samples_seen: int = 0
    ties: int = 0
    dead_letters: int = 0
    duplicates: int = 0  # labels of a pair_id this lineage already trained on
    loss_ema: float | None = None
    acc_ema: float | None = None
    run_samples: int = 0  # trained by this run (since the process started)
    first_step_at: float | None = None
    last_step_at: float = 0.0
    lineage: dict[str, str | None] = field(
        default_factory=lambda: {"rule_pool_hash": None, "grader": None, "template_version": None}
    )

    def update(self, loss: float, acc: float, beta: float = 0.9) -> None:
        self.loss_ema = loss if self.loss_ema is None else beta * self.loss_ema + (1 - beta) * loss
        self.acc_ema = acc if self.acc_ema is None else beta * self.acc_ema + (1 - beta) * acc


class _Collective:
    """all-reduce / gather over the workers; plain pass-through for a single worker."""

    def __init__(self, world: int) -> None:
        import torch.distributed as dist

        self.dist = dist if world > 1 and dist.is_initialized() else None

    def sum(self, values: list[float]) -> list[float]:
        if self.dist is None:
            return values
        import torch

        t = torch.tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        if self.dist is None:
            return [obj]
        out: list[Any] = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(out, obj)
        return out


class Worker:
    """State and steps of one worker; ``run()`` is the loop described in the module doc."""

    def __init__(
        self,
        config: dict[str, Any],
        rank: int = 0,
        world: int = 1,
        device: Any = None,
        prepare_model: Callable[[Any], Any] | None = None,
        requests: Callable[[], tuple[bool, bool]] | None = None,
    ) -> None:
        """``config``: the driver's (settings, registry, backbone, source). Ray Train passes
        the worker's ``rank``/``world``, its ``device``, ``prepare_model`` (DDP) and
        ``requests`` (the driver's stop / finish flags); the defaults are one CPU worker."""
        import torch

        from ramo_stream.config import load_settings
        from ramo_stream.registry.setup import open_registry

        logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is per connection
        self.settings: Settings = load_settings(overrides=config["settings"])
        self.t = self.settings.train
        self.rank, self.world = rank, world
        self.device = device if device is not None else torch.device("cpu")
        self.driver_requests = requests
        torch.manual_seed(self.t.seed)
        self.rng = random.Random(self.t.seed + self.rank)

        self.registry = open_registry(self.settings, config["registry"])
        self.start = self.registry.current()
        init_path = self.registry.current_dir() if self.start else config["backbone"]
        self.base_model = (
            self.start.base_model if self.start else config.get("backbone_id", config["backbone"])
        )
        model, self.tok = load_reward_model(init_path)
        # Ray Train's prepare_model moves it to the device and wraps it in DDP (world > 1).
        self.model = prepare_model(model) if prepare_model else model.to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=self.t.lr, weight_decay=self.t.weight_decay
        )
        self.c = _Counters()
        # pair_ids this lineage has trained on (or held out): a second label for one, from
        # a relabel or a pair sent twice, is dropped. Saved with each version.
        self.trained = SeenIds(self.settings.kafka.dedup_window)
        self.lineage_ids = SeenIds(self.settings.kafka.dedup_window)  # rank 0's, all workers
        self.new_ids: list[str] = []  # absorbed since the last publish
        self.unpublished_reads = 0  # records read since the last publish
        if self.start:
            self.c.steps, self.c.samples_seen = self.start.steps, self.start.samples_seen
            # A version published from a checkpoint (`ramo models publish`) has no optimizer
            # state: training from it starts a fresh AdamW.
            if (Path(init_path) / TRAINER_STATE).is_file():
                state = torch.load(Path(init_path) / TRAINER_STATE, map_location=self.device)
                self.opt.load_state_dict(state["optimizer"])
                for pair_id in state.get("trained_ids", []):
                    self.trained.add(pair_id)
                    self.lineage_ids.add(pair_id)
                for group in self.opt.param_groups:  # the settings win over the saved ones
                    group.update(lr=self.t.lr, weight_decay=self.t.weight_decay)
        self.coll = _Collective(self.world)
        self.source = self._make_source(config)
        stale_upto = config.get("stale_positions_upto")
        stale = (
            self.start is not None and stale_upto is not None and self.start.version <= stale_upto
        )
        self.source.seek(self.start.offsets if self.start and not stale else {})
        self.batcher = MicroBatcher(self.t.batch_pairs, self.t.batch_tokens)
        self.heldout: deque[_Item] = deque(maxlen=self.t.heldout_max)
        self.replay: deque[_Item] = deque(maxlen=self.t.replay_size)
        self.writer = self._make_dlq_writer(config)
        if self.rank == 0:
            print(f"worker 0 of {self.world}: {self.device}, {torch.get_num_threads()} torch "
                  f"threads, starting from {init_path}", flush=True)  # fmt: skip

    # -- set-up ------------------------------------------------------------------------

    def _make_source(self, config: dict[str, Any]) -> LabelSource:
        from ramo_stream.train.sources import FileLabelSource, KafkaLabelSource

        if config.get("from_file"):
            return FileLabelSource(Path(config["from_file"]), self.rank, self.world)
        return KafkaLabelSource(
            config["bootstrap"],
            self.settings.kafka,
            self.settings.topics.labels,
            self.t.group,
            self.rank,
            self.world,
        )

    def _make_dlq_writer(self, config: dict[str, Any]) -> Any:
        if config.get("from_file"):
            return None
        from ramo_stream.stream.kafka_io import TopicWriter, make_producer

        return TopicWriter(make_producer(config["bootstrap"], self.settings.kafka))

    # -- records -----------------------------------------------------------------------

    def _item(self, pair: TrainPair) -> tuple[_Item, int]:
        chosen = format_text(self.tok, pair.prompt, pair.chosen)
        rejected = format_text(self.tok, pair.prompt, pair.rejected)
        lengths = self.tok([chosen, rejected], truncation=True, max_length=self.t.max_length)
        tokens = max(len(ids) for ids in lengths["input_ids"])
        return _Item(pair, chosen, rejected), tokens

    def absorb(self, records: list[Record]) -> None:
        self.unpublished_reads += len(records)
        for rec in records:
            label = parse_label(rec.value)
            if isinstance(label, Rejection):
                self._dead_letter(rec, label.reason)
                continue
            self._remember_lineage(label)
            pair = to_train_pair(label)
            if pair is None:
                self.c.ties += 1
                continue
            if pair.pair_id in self.trained:
                self.c.duplicates += 1
                continue
            self.trained.add(pair.pair_id)
            self.new_ids.append(pair.pair_id)
            item, tokens = self._item(pair)
            if is_heldout(pair.pair_id, self.t.heldout_every):
                self.heldout.append(item)
            else:
                self.batcher.add(item, tokens)

    def _remember_lineage(self, label: LabeledPair) -> None:
        if label.rule_pool_hash:  # human labels carry none; keep the last labeler's
            self.c.lineage = {
                "rule_pool_hash": label.rule_pool_hash,
                "grader": label.grader,
                "template_version": label.template_version,
            }

    def _dead_letter(self, rec: Record, reason: str) -> None:
        self.c.dead_letters += 1
        if self.writer is None:
            if self.c.dead_letters <= 5:
                print(f"skipped line {rec.offset + 1} of {rec.source}: {reason}", flush=True)
            return
        letter = DeadLetter.of(
            rec.value, reason, "train", source_topic=rec.source, partition=rec.partition,
            offset=rec.offset,
        )  # fmt: skip
        self.writer.send(self.settings.topics.dlq, letter)
        self.writer.flush()  # acknowledged before the position moves past it in a manifest

    # -- steps -------------------------------------------------------------------------

    def _batch_tensors(self, items: list[_Item]) -> dict[str, Any]:
        texts = [i.chosen_text for i in items] + [i.rejected_text for i in items]
        return {k: v.to(self.device) for k, v in encode(self.tok, texts, self.t.max_length).items()}

    def replay_sample(self, n_new: int) -> list[_Item]:
        """Recent pairs to train on again beside ``n_new`` new ones (``replay_ratio``)."""
        k = min(round(self.t.replay_ratio * n_new), len(self.replay))
        return self.rng.sample(list(self.replay), k) if k else []

    def step(self, batch: list[_Item], replayed: list[_Item], items_total: float) -> None:
        import torch

        if self.c.first_step_at is None:
            self.c.first_step_at = time.monotonic()
        items = batch + replayed
        # A worker with nothing this step still runs forward/backward (DDP needs every
        # worker's gradients), on a dummy pair whose loss is scaled to zero.
        real = items or [_Item(TrainPair("-", ".", ".", "."), ".", ".")]
        enc = self._batch_tensors(real)
        self.model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            r = rewards(self.model, enc).float()
        n = len(real)
        margin = None
        if self.t.use_margin and items:
            margin = torch.tensor([i.pair.margin for i in items], device=self.device)
        pl = bradley_terry_loss(r[:n], r[n:], margin, self.t.centering)
        share = len(items) * self.world / items_total  # DDP averages over workers
        (pl.loss * share).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if items:
            self.c.update(float(pl.loss.detach()), pl.accuracy)
        self.replay.extend(batch)
        self.c.last_step_at = time.monotonic()

    def heldout_hits(self) -> tuple[int, int]:
        """(correct, total) of this worker's held-out pairs: chosen scored strictly higher."""
        import torch

        module = getattr(self.model, "module", self.model)  # no DDP hooks in evaluation
        module.eval()
        items, hits = list(self.heldout), 0
        with torch.no_grad():
            for i in range(0, len(items), self.t.batch_pairs):
                chunk = items[i : i + self.t.batch_pairs]
                r = rewards(module, self._batch_tensors(chunk)).float()
                hits += int((r[: len(chunk)] > r[len(chunk) :]).sum())
        return hits, len(items)

    # -- publishing --------------------------------------------------------------------

    def publish(self) -> Any:
        import torch

        positions: Positions = {}
        for part in self.coll.gather(self.source.positions()):
            for src, offs in part.items():
                positions.setdefault(src, {}).update(offs)
        hits, total = (int(x) for x in self.coll.sum(list(map(float, self.heldout_hits()))))
        counts = self.coll.sum(
            [float(self.c.ties), float(self.c.dead_letters), float(self.c.duplicates)]
        )
        # Every worker's new ids go into the version, so any worker of a restart drops them.
        for ids in self.coll.gather(self.new_ids):
            for pair_id in ids if self.rank == 0 else ():
                self.lineage_ids.add(pair_id)
        self.new_ids = []
        manifest = None
        if self.rank == 0:
            module = getattr(self.model, "module", self.model)

            def write(folder: Path) -> None:
                module.save_pretrained(folder)
                self.tok.save_pretrained(folder)
                torch.save(
                    {"optimizer": self.opt.state_dict(), "trained_ids": list(self.lineage_ids)},
                    folder / TRAINER_STATE,
                )

            # Throughput of this run's training: first step's start to last step's end.
            busy = self.c.last_step_at - (self.c.first_step_at or self.c.last_step_at)
            metrics = {
                "loss_ema": self.c.loss_ema or 0.0,
                "train_accuracy_ema": self.c.acc_ema or 0.0,
                "run_samples": float(self.c.run_samples),
                "run_train_s": busy,
                "samples_per_s": self.c.run_samples / busy if busy > 0 else 0.0,
                "ties_skipped": counts[0],
                "dead_letters": counts[1],
                "duplicates_skipped": counts[2],
                "lr": self.t.lr,
            }
            manifest = self.registry.publish(
                write,
                steps=self.c.steps,
                samples_seen=self.c.samples_seen,
                offsets=positions,
                metrics=metrics,
                heldout_accuracy=hits / total if total else None,
                heldout_size=total,
                base_model=self.base_model,
                settings=self.t.model_dump(mode="json"),
                **self.c.lineage,
            )
            acc = f"{hits / total:.3f} on {total}" if total else "n/a (no held-out pairs yet)"
            print(f"published v{manifest.version}: step {self.c.steps}, "
                  f"{self.c.samples_seen} pairs, held-out accuracy {acc}", flush=True)  # fmt: skip
        self.source.commit(positions)
        self.unpublished_reads = 0
        return manifest

    def requests(self) -> tuple[bool, bool]:
        """(stop now, finish: train what is on the topic, then stop), from the driver."""
        if self.t.max_steps is not None and self.c.steps >= self.t.max_steps:
            return True, False
        if self.driver_requests is None:
            return False, False
        return self.driver_requests()
