"""Starts the continuous trainer on Ray Train and stops it cleanly.

``run_trainer`` builds a ``TorchTrainer`` whose workers run ``loop.train_worker``. A stop
(Ctrl-C or SIGTERM to the driver) does not kill the workers: it sets a flag in a small
actor that rank 0 polls, and the workers drain their queues, publish a final version and
return. A second Ctrl-C aborts at once; what the last version recorded is still safe.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings, flat_settings


def _stop_flag_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class StopFlag:
        """Stop (drain the queue, publish, return) or finish (first read to the end of
        the labels topic, then stop), as the driver asks; rank 0 polls ``state``."""

        def __init__(self) -> None:
            self.stopped = False
            self.finishing = False

        def set(self) -> None:
            self.stopped = True

        def finish(self) -> None:
            self.finishing = True

        def state(self) -> tuple[bool, bool]:
            return self.stopped, self.finishing

    return StopFlag


@contextlib.contextmanager
def _stop_requests(
    flag: Any, stop_event: threading.Event | None, finish_event: threading.Event | None = None
) -> Iterator[None]:
    """Route stop requests to the stop-flag actor: from ``stop_event`` (and
    ``finish_event``) when given (a caller running the trainer in a thread), else from
    Ctrl-C / SIGTERM, restored afterwards."""
    if stop_event is not None:

        def relay(event: threading.Event, call: Any) -> None:
            event.wait()
            call.remote()

        relays = [(stop_event, flag.set)] + ([(finish_event, flag.finish)] if finish_event else [])
        for event, call in relays:
            threading.Thread(target=relay, args=(event, call), name="ramo-trainer-stop",
                             daemon=True).start()  # fmt: skip
        yield
        return

    def request_stop(signum: int, _frame: Any) -> None:
        print("stopping: draining and publishing a final version (Ctrl-C again aborts)",
              flush=True)  # fmt: skip
        flag.set.remote()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    old_int = signal.signal(signal.SIGINT, request_stop)
    old_term = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def init_ray() -> None:
    """Start (or join) Ray as the trainer needs it, unless it already runs in this process."""
    import ray

    if not ray.is_initialized():
        # Ray Train's placement-group cleaner asks the state API, which the dashboard
        # serves: without it, it logs a warning every few seconds. Loopback only.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", logging_level="WARNING")


def run_trainer(
    settings: Settings,
    bootstrap: str | None,
    from_file: Path | None = None,
    stop_event: threading.Event | None = None,
    finish_event: threading.Event | None = None,
    new_topics: bool = False,
) -> Any:
    """Train until stopped (or idle / max_steps / end of file); return the last manifest.

    Ctrl-C or SIGTERM stops it (drain, publish, return), or, when ``stop_event`` is given
    (a caller running this in a thread, such as `ramo up`), setting that event does.
    Setting ``finish_event`` instead first trains on everything on the labels topic (for
    a caller that has stopped the labels' producer and wants nothing left behind).
    ``new_topics``: the labels topic was created for this run (an in-memory broker started
    by the caller), so the read positions in the versions already published name records
    of a topic that is gone: training continues from the current version's weights but
    reads the new topic from its start.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ramo_stream.local_models import model_id, resolve
    from ramo_stream.registry.setup import open_registry, registry_root
    from ramo_stream.train.loop import train_worker

    t = settings.train
    if from_file is None and bootstrap is None:
        raise ValueError("the trainer needs a Kafka bootstrap address or --from-file")
    init_ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = t.use_gpu if t.use_gpu is not None else gpus >= t.workers
    cpus = ray.cluster_resources().get("CPU", 1)
    # torch uses that many threads
    per_worker = {"CPU": t.worker_cpus or max(1, int(cpus) // t.workers)}
    stop = _stop_flag_class().remote()
    current = open_registry(settings).current()
    config = {
        # positions in versions up to this one refer to another incarnation of the topic
        "stale_positions_upto": current.version if new_topics and current else None,
        "settings": flat_settings(settings),
        "registry": registry_root(settings),
        "backbone": resolve(settings.models.reward_backbone, settings.paths.models_dir),
        # What manifests record as base_model: portable, never this machine's path.
        "backbone_id": model_id(settings.models.reward_backbone, settings.paths.models_dir),
        "bootstrap": bootstrap,
        "from_file": str(from_file.resolve()) if from_file else None,
        "stop": stop,
    }
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=t.workers, use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=f"ramo-train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(settings.paths.cache_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    source = from_file or f"{settings.topics.labels} via {bootstrap}"
    print(f"trainer: {t.workers} worker(s), {'GPU' if use_gpu else 'CPU'}, reading {source}, "
          f"publishing to {config['registry']}; Ctrl-C publishes a final version and stops",
          flush=True)  # fmt: skip

    with _stop_requests(stop, stop_event, finish_event):
        trainer.fit()
    return open_registry(settings, config["registry"]).current()
