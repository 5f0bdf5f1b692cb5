"""One Ray Train worker's loop: labels in, Bradley–Terry steps, versions out. No epochs.

Every iteration, all workers agree (two tiny all-reduces) on what happens next, so the
data-parallel steps stay in lockstep however unevenly labels arrive:

1. control: should we stop (rank 0: Ctrl-C, ``max_steps``; everyone: idle), is a publish
   due (rank 0's clock and the shared step count)?
2. each worker takes a micro-batch: a full one, or a partial one once its oldest pair has
   waited ``flush_s`` (freshness), or everything while draining for a publish or a stop.
   If any worker has pairs, all step; a worker without pairs back-propagates a zero loss,
   and each worker's loss is scaled by its share of the step's pairs, so the DDP average
   of gradients is exactly the mean over all the step's pairs.
3. once every queue is drained, rank 0 publishes a version whose manifest holds every
   worker's read positions: everything before them is trained (or held out, dead-lettered
   or a tie), nothing after. A restart loads that version and seeks to those positions,
   so no pair is skipped; pairs trained after the version are trained again, on the
   restored weights, so the surviving lineage counts each pair once.
"""

from __future__ import annotations

import time
from typing import Any

from ramo_stream.train.worker import Worker

LOG_EVERY_S = 10.0


def run(w: Worker) -> None:
    """The loop of the module doc, until every worker stops."""
    t = w.t
    last_record = last_publish = last_log = last_flag_check = time.monotonic()
    stop_req = finish_req = False
    steps_at_publish = w.c.steps
    drain_started: float | None = None  # when the current publish was decided
    while True:
        now = time.monotonic()
        if w.rank == 0 and now - last_flag_check >= 1.0:
            (stop_req, finish_req), last_flag_check = w.requests(), now
        publish_due = (
            w.rank == 0
            and w.c.steps > steps_at_publish
            and (
                w.c.steps - steps_at_publish >= t.publish_every_steps
                or now - last_publish >= t.publish_every_s
            )
        )
        idle = len(w.batcher) == 0 and (
            w.source.exhausted()
            or (t.idle_stop_s is not None and now - last_record >= t.idle_stop_s)
        )
        ctrl = w.coll.sum([float(stop_req), float(publish_due), float(idle), float(finish_req)])
        if ctrl[3] > 0:  # read to the topic's end, then all are idle and stop together
            w.source.finish()
        stopping = ctrl[0] > 0 or ctrl[2] == w.world
        draining = stopping or ctrl[1] > 0
        if draining:
            # Not polling is not idleness: the idle clock runs only while we poll.
            last_record = now
            drain_started = drain_started if drain_started is not None else now
        room = 2 * t.batch_pairs - len(w.batcher)  # bounded queue: fresh pairs
        if not draining and room > 0:
            records = w.source.poll(0.2, room)
            if records:
                last_record = time.monotonic()
                w.absorb(records)
        force = draining or w.batcher.oldest_age() >= t.flush_s
        batch = w.batcher.take(force=force)
        replayed = w.replay_sample(len(batch))
        new, items, pending, reads = w.coll.sum(
            [float(len(batch)), float(len(batch) + len(replayed)), float(len(w.batcher)),
             float(w.unpublished_reads)]
        )  # fmt: skip
        if items > 0:
            w.step(batch, replayed, items)
            w.c.steps += 1
            w.c.samples_seen += int(new)
            w.c.run_samples += int(new)
            # Nor is stepping: a step slower than idle_stop_s (a starved CPU) must not
            # stop the trainer with labels still waiting on the topic.
            last_record = time.monotonic()
        if draining and pending == 0:
            # A final version also for reads that trained nothing (duplicates, ties,
            # dead letters), so a restart does not read them again.
            if w.c.steps > steps_at_publish or (stopping and reads > 0):
                w.publish()
                steps_at_publish = w.c.steps
                # The cadence counts from when the publish was due, not from when the
                # drain and the save ended, so versions come every publish_every_s.
                last_publish = drain_started if drain_started is not None else now
                last_record = time.monotonic()
            drain_started = None
            if stopping:
                break
        if w.rank == 0 and now - last_log >= LOG_EVERY_S:
            last_log = now
            loss = f"{w.c.loss_ema:.4f}" if w.c.loss_ema is not None else "-"
            print(f"step {w.c.steps}: {w.c.samples_seen} pairs trained, "
                  f"loss(ema) {loss}, ties {w.c.ties}, "
                  f"dead letters {w.c.dead_letters}, "
                  f"duplicates {w.c.duplicates}", flush=True)  # fmt: skip
    w.source.close()


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's ``train_loop_per_worker``: the worker with Ray's rank, device, DDP and
    the driver's stop flag."""
    import ray
    import ray.train
    import ray.train.torch as rtt

    ctx = ray.train.get_context()
    flag = config.get("stop")

    def requests() -> tuple[bool, bool]:
        stop, finish = ray.get(flag.state.remote(), timeout=30)
        return bool(stop), bool(finish)

    worker = Worker(
        config,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=rtt.get_device(),
        prepare_model=rtt.prepare_model,
        requests=requests if flag is not None else None,
    )
    run(worker)
