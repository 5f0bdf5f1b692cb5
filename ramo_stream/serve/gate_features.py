"""The selection gate's features on Ray Serve: phi of the served reward model, batched, on
the reward service's device, in an app ("select") deployed next to the labeler.

    gate (a thread of `ramo up`: Kafka loop, M, budget, top-k per window)
      --handle--> GateFeaturesDeployment   (ServedModel: CURRENT, or the version asked for)

The gate keeps what is stateful and must have one writer: its consumer group's offsets, M
(the information matrix of the pairs sent to be labeled) and the budget. What is heavy and
stateless moves out of the driver: loading the reward model and its forward passes.
``RemoteServedModel`` gives the gate the interface of ``registry.features.ServedModel``
(``refresh``, ``version``, ``identity``, ``featurizer.dim``, ``featurizer.pairs``) over the
deployment's handle:

- ``refresh`` asks a replica, every ``select.reload_poll_s``, which version CURRENT names
  (that replica loads it). A poll's features are then asked for that version, and a replica
  holding another one loads it first, so every replica a poll is spread over (its pairs
  are split evenly among ``gate_replicas``) reads one model, and M never mixes versions.
- A replica that dies, a reply that does not come, Serve's back-pressure: not a pair's
  fault. The proxy retries with backoff while Serve restarts the replica, for up to
  ``select.features_wait_s``, then raises ``FeaturesUnavailable`` (a ``ServiceUnavailable``):
  the processor then commits and dead-letters nothing, the gate's thread fails, and `ramo
  up` stops naming the app; the poll is delivered again to the next run. An error raised by
  the replica's own code (a pair its tokenizer refuses) is the request's, as in process:
  the processor retries the batch, then finds the pair at fault and dead-letters it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from ray import serve
from ray.serve import Application

from ramo_stream.config import Settings
from ramo_stream.label.serve_app import LabelerAppArgs
from ramo_stream.schemas import ChatMessage, prompt_from_wire, prompt_to_wire
from ramo_stream.stream.messages import ServiceUnavailable
from ramo_stream.stream.service_call import wait_for_service

log = logging.getLogger(__name__)

APP = "select"  # the Serve app's name in `ramo up`


class FeaturesUnavailable(ServiceUnavailable):
    """The gate's features deployment did not deploy, or did not answer within
    ``select.features_wait_s``."""


@serve.deployment
class GateFeaturesDeployment:
    """phi, p and rewards of pairs, with the registry's ServedModel on this replica."""

    def __init__(self, args: LabelerAppArgs) -> None:
        from ramo_stream.registry.features import ServedModel

        self.served = ServedModel(args.settings())
        # Loaded now: a model that cannot load fails the deployment, by name, at start.
        self.served.refresh(time.monotonic(), force=True)
        where = f"{self.served.identity} on {self.served.device()}"
        print(f"select: features from {where}", flush=True)  # in the Serve replica's log

    def _describe(self) -> dict[str, Any]:
        s = self.served
        return {"version": s.version, "identity": s.identity, "dim": s.featurizer.dim,
                "device": s.featurizer.device}  # fmt: skip

    def current(self) -> dict[str, Any]:
        """Load the version CURRENT names (if new) and describe the model held."""
        self.served.refresh(time.monotonic(), force=True)
        return self._describe()

    def pairs(self, rows: dict[str, list[Any]], version: int | None) -> dict[str, Any]:
        """Features of ``version`` (None: the backbone) for the pairs in ``rows`` (columns
        prompt / a / b); x and p as float64 arrays, so Ray passes them without a copy."""
        from ramo_stream.registry.store import RegistryError

        try:
            self.served.load(version)
        except RegistryError as e:  # pruned since the gate asked: answer with CURRENT
            log.warning("select: cannot load version %s (%s); answering with CURRENT", version, e)
            self.served.refresh(time.monotonic(), force=True)
        prompts = [prompt_from_wire(p) for p in rows["prompt"]]
        f = self.served.featurizer.pairs(prompts, rows["a"], rows["b"])
        return {"x": f.x.numpy(), "p": f.p.numpy(), "reward_a": f.reward_a,
                "reward_b": f.reward_b, **self._describe()}  # fmt: skip


def build_app(args: LabelerAppArgs | dict[str, Any]) -> Application:
    """The features app: ``gate_replicas`` replicas with ``gate_cpus`` CPUs and, unless
    ``gate_gpus`` says otherwise, the GPUs of a reward service replica."""
    from ramo_stream.serve.reward_app import _replica_gpus

    if isinstance(args, dict):  # `serve run` hands the YAML's args over as a dict
        args = LabelerAppArgs.model_validate(args)
    settings = args.settings()
    gpus = args.gate_gpus if args.gate_gpus is not None else _replica_gpus(
        settings.serve.replica_gpus
    )  # fmt: skip
    deployment: Any = GateFeaturesDeployment
    return deployment.options(
        num_replicas=args.gate_replicas,
        logging_config={"enable_access_log": False},
        ray_actor_options={"num_cpus": args.gate_cpus, "num_gpus": gpus},
    ).bind(args)


class _RemoteFeaturizer:
    """``Featurizer.pairs`` and ``dim`` over the deployment (see ``RemoteServedModel``)."""

    def __init__(self, owner: RemoteServedModel) -> None:
        self.owner = owner

    @property
    def dim(self) -> int:
        return self.owner.dim

    def pairs(
        self, prompts: Sequence[str | Sequence[ChatMessage]], a: Sequence[str], b: Sequence[str]
    ) -> Any:
        return self.owner.pairs(prompts, a, b)


class RemoteServedModel:
    """What the gate reads features from in `ramo up`: the deployment behind ``handle``
    (a DeploymentHandle to GateFeaturesDeployment). Blocking: call from a thread, not an
    event loop. ``sleep`` is for tests."""

    def __init__(
        self,
        handle: Any,
        settings: Settings,
        replicas: int = 1,
        app: str = APP,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.handle = handle
        self.settings = settings
        self.replicas = replicas
        self.app = app
        self.sleep = sleep
        self.version: int | None = None
        self.identity: str | None = None
        self.dim = 0
        self.device: str | None = None
        self.featurizer: Any = None  # set by the first refresh, as ServedModel's
        self.requests = 0  # feature requests the deployment answered
        self.pairs_scored = 0
        self._checked = 0.0

    def where(self) -> str:
        """Where the features are computed, in words (for `ramo up`'s lines)."""
        n = f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"
        on = f" on {self.device}" if self.device else ""
        return f"Serve app {self.app!r} ({n}{on})"

    def refresh(self, now: float) -> bool:
        """Ask the deployment which model CURRENT names; True when it is not the one the
        gate had (the first answer included, as ``ServedModel.refresh``)."""
        s = self.settings.select
        if self.featurizer is not None and now - self._checked < s.reload_poll_s:
            return False
        self._checked = now
        info = self._call("current", lambda: self.handle.current.remote())
        first = self.featurizer is None
        changed = first or info["version"] != self.version or info["identity"] != self.identity
        self._adopt(info)
        self.featurizer = self.featurizer or _RemoteFeaturizer(self)
        return changed

    def _adopt(self, info: dict[str, Any]) -> None:
        self.version, self.identity = info["version"], info["identity"]
        self.dim, self.device = int(info["dim"]), str(info["device"])

    def pairs(
        self, prompts: Sequence[str | Sequence[ChatMessage]], a: Sequence[str], b: Sequence[str]
    ) -> Any:
        """``PairFeatures`` of the pairs, from the version ``refresh`` last saw; the pairs
        are split evenly over the replicas, at least ``select.batch`` per request."""
        import torch

        from ramo_stream.registry.features import PairFeatures

        n, version = len(prompts), self.version
        if n == 0:
            empty = torch.zeros((0, self.dim), dtype=torch.float64)
            return PairFeatures(empty, torch.zeros(0, dtype=torch.float64), [], [])
        size = max(math.ceil(n / self.replicas), self.settings.select.batch)
        chunks = [range(i, min(i + size, n)) for i in range(0, n, size)]
        rows = [{"prompt": [prompt_to_wire(prompts[i]) for i in c], "a": [a[i] for i in c],
                 "b": [b[i] for i in c]} for c in chunks]  # fmt: skip
        # All requests go out before the first reply is awaited: the replicas work at once.
        sent = [self.handle.pairs.remote(r, version) for r in rows]
        outs = []
        for response, row in zip(sent, rows, strict=True):
            again = functools.partial(self.handle.pairs.remote, row, version)
            outs.append(self._call("pairs", again, first=response))
        moved = [o["version"] for o in outs if o["version"] != version]
        if moved:
            # The version asked for left the registry (retention): CURRENT answered. Not
            # this poll's features: fail it, so the processor retries it after a refresh
            # that tells the gate of the new version (and resets M as configured).
            self._checked = -math.inf
            raise RuntimeError(f"features of version {version} were asked for, version"
                               f" {moved[0]} answered (the registry moved on)")  # fmt: skip
        self.requests += len(outs)
        self.pairs_scored += n
        x = torch.cat([torch.from_numpy(o["x"]) for o in outs])
        p = torch.cat([torch.from_numpy(o["p"]) for o in outs])
        reward_a = [r for o in outs for r in o["reward_a"]]
        reward_b = [r for o in outs for r in o["reward_b"]]
        return PairFeatures(x.double(), p.double(), reward_a, reward_b)

    def _call(self, method: str, send: Callable[[], Any], first: Any = None) -> Any:
        """The reply of a request (``first`` if already sent, else ``send()``), sent again
        with backoff after a service error until ``select.features_wait_s`` has passed."""

        def gave_up(waited: float, attempts: int, e: BaseException) -> FeaturesUnavailable:
            return FeaturesUnavailable(self._gave_up(method, waited, attempts, e))

        return wait_for_service(send, self.settings.select.features_wait_s,
                                f"select: the features app {self.app!r} on {method}", gave_up,
                                first=first, sleep=self.sleep)  # fmt: skip

    def _gave_up(self, method: str, waited: float, attempts: int, e: BaseException) -> str:
        return (
            f"the gate's features deployment (Serve app {self.app!r}) did not answer {method!r}"
            f" for {waited:.0f} s ({attempts} attempts; last: {type(e).__name__}: {e}). Its"
            " replicas' logs are under Ray's logs (serve/replica_*); if it was only slow, raise"
            f" select.features_wait_s ({self.settings.select.features_wait_s:g}). Nothing was"
            " committed: on a broker that outlives this run (not the embedded one) the poll is"
            " delivered again to the next run"
        )
