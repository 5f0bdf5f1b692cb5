"""`ramo up`: the whole loop in one process: broker, Ray, labeler, trainer, reward service.

Start order: the broker (or the configured Kafka), Ray (a local one, or the cluster that
RAY_ADDRESS names), Ray Serve with two apps (``labeler``, no HTTP route; ``reward`` on
``serve.host:serve.port``), then threads of this process: the selection gate when
``select.enabled`` resolves on (``up_gate``; its features come from a third Serve app,
``select``, deployed then), the Kafka bridge that feeds the labeler
(from ``topics.selected`` behind the gate, else ``topics.pairs``), the continuous trainer
(Ray Train), and, with ``--demo`` or ``--file``, an ingest of pairs. The main thread draws
the live view.

Stop order (Ctrl-C, SIGTERM, ``--exit-when-idle``, or a component failing): the ingest,
then the gate, then the bridge, then the trainer, then the reward service once it serves
the final version, then Serve, Ray and the broker. When this process started the broker,
its topics end with it, so a stop first drains: the gate sorts every pair on the pairs
topic, the bridge labels every pair it reads, then the trainer trains on every label and
publishes a final version. A second
Ctrl-C skips the rest of the drain (the bridge finishes its batch in flight, the trainer
publishes what it has) and says how many accepted pairs that drops; a third gives up at
once. With a broker that outlives the command, nothing is lost by not draining, so the
first Ctrl-C stops like the second. ``--exit-when-idle S`` stops once the ingest is done,
no accepted pair waits to be labeled, and nothing moved for S seconds; it always drains
(the work is done by then, and a benchmark wants every label in the final version). Each
piece is the same code that ``ramo labeler|train|serve`` run on their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from ramo_stream.cli.up_view import LiveView
from ramo_stream.config import Settings, flat_settings

# What `--demo` changes unless a flag, variable or file sets it: 40 pairs are few, so
# publish often and hold out more of them, or nothing would be seen to happen.
DEMO_SETTINGS: dict[str, Any] = {
    "select.enabled": "off",  # 40 pairs: the labeler takes them all within a minute
    "train.batch_pairs": 4,
    "train.publish_every_steps": 2,
    "train.publish_every_s": 10.0,
    "train.heldout_every": 5,
}


def demo_files() -> list[Path]:
    data = resources.files("ramo_stream") / "data"
    return [Path(str(data / "demo_pairs.jsonl")), Path(str(data / "demo_malformed.jsonl"))]


# --- components --------------------------------------------------------------------------


@dataclass
class Component:
    """One piece of the loop, running in its own thread of this process."""

    name: str
    stop: threading.Event = field(default_factory=threading.Event)  # stop after the work in hand
    finish: threading.Event = field(default_factory=threading.Event)  # finish what was accepted
    thread: threading.Thread | None = None
    error: BaseException | None = None
    result: Any = None

    def start(self, target: Callable[[threading.Event, threading.Event], Any]) -> None:
        def run() -> None:
            try:
                self.result = target(self.stop, self.finish)
            except BaseException as e:  # reported by the main thread, which stops the rest
                self.error = e

        self.thread = threading.Thread(target=run, name=f"ramo-up-{self.name}", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def halt(self, timeout_s: float) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout_s)
            if self.thread.is_alive():
                print(f"warning: {self.name} did not stop within {timeout_s:.0f} s",
                      file=sys.stderr)  # fmt: skip


# --- ray and serve -----------------------------------------------------------------------


def cpus_needed(settings: Settings) -> float:
    """Ray CPUs the loop reserves: labeler deployments, reward replicas, trainer workers."""
    from ramo_stream.label.serve_app import LabelerAppArgs
    from ramo_stream.serve.reward_app import RewardAppArgs

    rew, s, t = RewardAppArgs(), settings.serve, settings.train
    labeler = LabelerAppArgs().reserved_cpus(gate=settings.select.enabled != "off")
    replicas = s.autoscaling_min_replicas or s.replicas
    reward = rew.ingress_cpus + s.replica_cpus * replicas
    return labeler + reward + t.workers * (t.worker_cpus or 1.0)


@contextlib.contextmanager
def ray_session(settings: Settings) -> Iterator[None]:
    """A local Ray sized for the loop (logical CPUs may exceed the cores), or RAY_ADDRESS."""
    import ray

    # Worker output stays in Ray's log files (ray_log_hint), not on top of the live view.
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level="WARNING", log_to_driver=False)
    else:
        cpus = max(os.cpu_count() or 1, int(cpus_needed(settings) + 0.999))
        # the trainer's placement-group cleaner needs the dashboard's state API (loopback)
        ray.init(num_cpus=cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level="WARNING", log_to_driver=False)  # fmt: skip
    from ramo_stream.cli.ray_stop import quiet_ray_stop

    # Ray's error listener prints asynchronously, from serve.shutdown() until ray.shutdown()
    # returns, so the filter spans the whole session (it drops only those exact lines).
    with quiet_ray_stop():
        try:
            yield
        finally:
            ray.shutdown()


def ray_log_dir() -> str:
    """Where this machine's Ray writes its processes' logs (Ray's default temp dir)."""
    if os.environ.get("RAY_ADDRESS"):
        return "on the Ray cluster's nodes"
    return "/tmp/ray/session_latest/logs"


def wait_for_version(url: str, version: int, headers: dict[str, str], timeout_s: float) -> bool:
    """Whether the reward service at ``url`` serves ``version`` within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            reply = httpx.get(f"{url}/v1/models", headers=headers, timeout=2.0)
            if reply.status_code == 200 and reply.json().get("current") == version:
                return True
        time.sleep(0.5)
    return False


# --- the loop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    files: tuple[Path, ...] = ()  # pairs to ingest once the loop runs (--demo: demo_files())
    limit: int | None = None  # lines per file
    exit_when_idle_s: float | None = None  # stop when nothing waits and nothing moved this long
    view_every_s: float = 2.0
    heartbeat_s: float = 30.0  # no terminal: a line after this long without a change


def _ingest(settings: Settings, bootstrap: str, files: tuple[Path, ...], limit: int | None,
            stop: threading.Event, _finish: threading.Event) -> list[Any]:  # fmt: skip
    from ramo_stream.stream.setup import ingest_path

    reports = []
    for path in files:
        if stop.is_set():
            break
        reports.append(ingest_path(settings, bootstrap, path, limit=limit))
    return reports


def _label(bridge: Any, stop: threading.Event, finish: threading.Event) -> Any:
    try:
        return bridge.run(stop=stop, finish=finish)
    finally:
        bridge.close()


def _committed(processor: Any) -> int:
    """Records a stage has committed (its thread writes the dict while we read it)."""
    for _ in range(5):
        with contextlib.suppress(RuntimeError):  # "dictionary changed size during iteration"
            return sum(list(processor.stats.committed.values()))
    return 0


def _unlabeled(snap: Any, labeling: Any) -> int:
    """Accepted pairs not labeled yet: not sorted by the gate, or selected and not labeled."""
    if labeling.gate is None:
        return max(0, snap.pairs - _committed(labeling.bridge))
    ungated = max(0, snap.pairs - _committed(labeling.gate.processor))
    return ungated + max(0, (snap.selected or 0) - _committed(labeling.bridge))


def _nothing_left(snap: Any, labeling: Any) -> bool:
    """Every accepted pair labeled. This run's commits answer first; they count a partition
    this run never read as all unlabeled (a broker that outlives `ramo up` keeps earlier
    pairs), so a nonzero count is checked against the groups' offsets on the broker."""
    if _unlabeled(snap, labeling) == 0:
        return True
    read = getattr(labeling, "left_on_broker", None)
    return read is not None and read() == 0


def run_up(settings: Settings, options: UpOptions, out: TextIO = sys.stdout) -> int:
    """Run the loop until stopped; 0 on a clean stop, 1 if a component failed."""
    import signal

    from ray import serve

    from ramo_stream.cli.up_gate import (
        count_lines,
        decide,
        deploy_features,
        save_rate,
        start_labeling,
        waiting_on_topic,
    )
    from ramo_stream.label.serve_app import LabelerAppArgs
    from ramo_stream.label.serve_app import build_app as build_labeler
    from ramo_stream.serve.reward_app import RewardAppArgs
    from ramo_stream.serve.reward_app import build_app as build_reward
    from ramo_stream.stream.broker import kafka_session, running_broker
    from ramo_stream.train.driver import run_trainer

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "application ready" lines
    s = settings.serve
    host = f"[{s.host}]" if ":" in s.host else s.host
    url = f"http://{host}:{s.port}"
    stop = threading.Event()  # the first Ctrl-C: stop, draining what was accepted
    abort = threading.Event()  # the second: skip the drain

    def on_signal(*_: Any) -> None:
        if abort.is_set():  # a third Ctrl-C: give up on the orderly stop
            raise KeyboardInterrupt
        (abort if stop.is_set() else stop).set()

    def install() -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)

    install()
    headers = {"Authorization": f"Bearer {s.api_token}"} if s.api_token else {}
    overrides = flat_settings(settings)
    failed: Component | None = None
    # Whether the topics end with this process (a broker it starts, in memory).
    ephemeral = not (settings.kafka.bootstrap_servers or running_broker(settings))

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    with kafka_session(settings, announce=True) as bootstrap, ray_session(settings):
        install()  # ray.init replaced the SIGTERM handler with sys.exit: SIGTERM drains too
        say(f"broker {bootstrap}; Ray up (its logs: {ray_log_dir()}); starting Serve on {url}")
        quiet = {"enable_access_log": False, "log_level": "WARNING"}
        serve.start(http_options={"host": s.host, "port": s.port}, logging_config=quiet)
        try:
            # The reward service first: it answers (503 until a version exists) while the
            # labeler loads its grader.
            serve.run(build_reward(RewardAppArgs(overrides=overrides)), name="reward",
                      route_prefix="/")  # fmt: skip
            app_args = LabelerAppArgs(overrides=overrides)  # the gate's features app too
            labeler = serve.run(build_labeler(app_args), name="labeler", route_prefix=None)
            say(f"labeler and reward service deployed; reward API at {url} (POST /v1/score,"
                " /v1/compare, /get_reward; GET /v1/models, /health, /metrics)")  # fmt: skip
            ingest, gate, bridge, trainer = (
                Component(n) for n in ("ingest", "gate", "labeler", "trainer")
            )
            waiting = count_lines(options.files, options.limit)
            if settings.select.enabled == "auto" and not ephemeral:
                waiting += waiting_on_topic(settings, bootstrap)
            gate_on, why = decide(settings, waiting)
            features = deploy_features(app_args, settings) if gate_on else None
            labeling = start_labeling(settings, bootstrap, labeler, gate_on, features)
            processor = labeling.bridge
            t = settings.topics
            say(f"selection gate: {why}" + (f"; {t.pairs} -> {t.selected} (labeled) +"
                f" {t.skipped}; features from {features.where()}" if features else ""))  # fmt: skip
            if labeling.gate is not None:
                gate.start(labeling.gate.run)
            bridge.start(lambda ev, fin: _label(processor, ev, fin))
            trainer.start(lambda ev, fin: run_trainer(settings, bootstrap, stop_event=ev,
                                                      finish_event=fin,
                                                      new_topics=ephemeral))  # fmt: skip
            if options.files:
                ingest.start(lambda ev, fin: _ingest(settings, bootstrap, options.files,
                                                     options.limit, ev, fin))  # fmt: skip
            parts = [ingest, *([gate] if gate_on else []), bridge, trainer]
            view = LiveView(settings, bootstrap, url, out, options.heartbeat_s,
                            labeling.budget_text if gate_on else None)  # fmt: skip
            try:
                failed, idle = _watch(view, settings, options, stop, out, parts, labeling)
                ingest.halt(30)
                if failed is None and (ephemeral or idle):
                    why = "the embedded broker's topics end with it" if ephemeral else "idle"
                    failed = _drain(view, settings, options, abort, labeling, parts, say, why)
                else:
                    say(
                        "stopping: the labeler finishes its batch in flight, the trainer "
                        "publishes a final version"
                        + (
                            ""
                            if ephemeral
                            else f"; what is left on {settings.topics.pairs} waits for the next run"
                        )
                    )
                gate.halt(120)  # after its poll in hand: both outputs acknowledged, committed
                if labeling.gate is not None:
                    say(labeling.gate_summary())
                bridge.halt(300)
                trainer.halt(600)
                save_rate(settings, labeling.pace)  # for the next run's select.enabled=auto
                if abort.is_set() and ephemeral and failed is None:
                    snap = view.sample(wait_s=10.0)  # every partition read, for the count
                    pairs = _unlabeled(snap, labeling)
                    labels = max(0, snap.labels - snap.labels_read)
                    say(
                        f"dropped {pairs} accepted pairs not yet labeled and {labels} labels "
                        "not yet trained on (the embedded broker's topics end with it)"
                    )
            finally:
                view.close()
            final = trainer.result
            if final is not None and failed is None:
                served = wait_for_version(url, final.version, headers, timeout_s=60)
                say(f"final version v{final.version} ({final.samples_seen} pairs trained)"
                    + ("" if served else "; the reward service had not loaded it yet"))  # fmt: skip
        finally:
            serve.shutdown()
    if failed is not None:
        print(f"error: {failed.name} failed: {type(failed.error).__name__}: {failed.error}",
              file=sys.stderr)  # fmt: skip
        return 1
    if ephemeral:
        say("stopped: Serve, Ray and the broker are down")
    else:  # a broker this command found or was given: it keeps running, topics and all
        say(f"stopped: Serve and Ray are down; the broker at {bootstrap} keeps running")
    return 0


def _watch(
    view: LiveView,
    settings: Settings,
    options: UpOptions,
    stop: threading.Event,
    out: TextIO,
    parts: list[Component],
    labeling: Any,
) -> tuple[Component | None, bool]:
    """Draw the live view until a stop is asked for, the loop is idle, or a part fails.
    Returns (the part that failed, whether the loop went idle). ``parts``: ingest, the gate
    (when on), labeler bridge, trainer; ``labeling``: the bridge's StreamProcessor, whose
    health (the broker reachable or not) the view shows, and the gate's.

    Idle (``--exit-when-idle S``): the ingest is done, no accepted pair waits to be
    labeled, and nothing moved for S seconds. A labeler slower than S per batch (a starved
    CPU) is not idle while pairs wait for it."""
    ingest, trainer = parts[0], parts[-1]
    processor = labeling.bridge
    selector = settings.labeling.selector
    hint = "Ctrl-C stops (a final version is published first)"
    last_change, last_key, last_check = time.monotonic(), None, 0.0
    while not stop.wait(options.view_every_s):
        for part in parts:
            if part.error is not None:
                return part, False
        if trainer.thread is not None and not trainer.running:  # it stopped by itself
            return None, False  # (train.idle_stop_s or train.max_steps)
        health = processor.health
        status = hint if health.state == "ok" else f"labeler: {health.line()}; {hint}"
        snap = view.draw(selector, status)
        key = (snap.pairs, snap.labels, snap.dead_letters, snap.version, snap.selected,
               snap.skipped)  # fmt: skip
        if key != last_key:
            last_change, last_key = time.monotonic(), key
        idle = options.exit_when_idle_s
        if (idle is not None and not ingest.running and time.monotonic() - last_change > idle
                and time.monotonic() - last_check > idle):  # fmt: skip
            last_check = time.monotonic()  # a broker read at most once per idle window
            if _nothing_left(snap, labeling):
                print(f"every pair labeled and nothing moved for {idle:.0f} s: stopping",
                      file=out, flush=True)  # fmt: skip
                return None, True
    return None, False


def _drain(
    view: LiveView,
    settings: Settings,
    options: UpOptions,
    abort: threading.Event,
    labeling: Any,
    parts: list[Component],
    say: Callable[[str], None],
    why: str,
) -> Component | None:
    """Finish what was accepted, in data-flow order: the gate sorts every pair on the pairs
    topic (when it runs), the bridge labels every pair it reads, then the trainer trains on
    every label and publishes. Returns a part that failed meanwhile; stops early when
    ``abort`` (a second Ctrl-C) is set."""
    selector = settings.labeling.selector
    say(f"stopping: labeling and training every accepted pair first ({why}); Ctrl-C again"
        " skips that")  # fmt: skip
    for part in parts[1:]:
        part.finish.set()
        while part.running and not abort.wait(options.view_every_s):
            if part.error is not None:
                return part
            last = view.history[-1] if view.history else None  # one view old
            status = "draining; Ctrl-C again drops what is left"
            if last is not None:
                to_label = _unlabeled(last, labeling)
                to_train = max(0, last.labels - last.labels_read)
                status = (f"draining: {to_label} pairs left to label, {to_train} labels not in"
                          " a published version yet; Ctrl-C again drops them")  # fmt: skip
            view.draw(selector, status)
        if abort.is_set() or part.error is not None:
            return part if part.error is not None else None
    return None
