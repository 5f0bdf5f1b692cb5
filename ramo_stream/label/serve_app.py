"""The labeler on Ray Serve: Rule Adapter and grader as separately scalable deployments.

    LabelerDeployment --handle--> RuleAdapterDeployment   (encoder, cheap)
                      --handle--> GraderDeployment        (the LLM: vLLM or transformers)

The labeler runs the same ``labeling.Labeler`` as offline labeling, with the adapter and
grader replaced by proxies that call the other deployments through their handles. Records
cross the handles as JSON-able dicts. ``build_app`` is the typed builder that
``deploy/serve.yaml`` points at.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ramo_stream.config import Settings, load_settings
from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.schemas import ChatMessage, ResponsePair

AUX_CPUS = 0.25  # per Rule Adapter and labeler (orchestration) replica


class LabelerAppArgs(BaseModel):
    """Arguments of the labeler app (the `args:` of deploy/serve.yaml)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not ignored

    config_file: str | None = Field(default=None, description="ramo settings YAML.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted settings, e.g. {'labeling.selector': 'random'}."
    )
    grader_replicas: int = Field(default=1, ge=1, description="Replicas holding the LLM.")
    adapter_replicas: int = Field(default=1, ge=1, description="Rule Adapter replicas.")
    labeler_replicas: int = Field(default=1, ge=1, description="Labeler (orchestration).")
    grader_cpus: float = Field(default=1.0, gt=0, description="CPUs reserved per grader replica.")
    grader_gpus: float = Field(default=0.0, ge=0, description="GPUs per grader replica.")
    # The selection gate's features app ("select", serve/gate_features.py) is deployed next
    # to this one when the gate runs, from these same args: one settings source for both.
    gate_replicas: int = Field(
        default=1, ge=1, description="Replicas computing the gate's features (phi, p)."
    )
    gate_cpus: float = Field(default=1.0, gt=0, description="CPUs per gate features replica.")
    gate_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs per gate features replica; unset: as the reward service's replicas"
        " (serve.replica_gpus, else 1 when Ray sees a GPU), so phi is computed on the device"
        " the served reward model runs on.",
    )

    def reserved_cpus(self, gate: bool = False) -> float:
        """Ray CPUs the app reserves, at most: the Rule Adapter's replicas are counted even
        when the selector does not deploy them; with ``gate``, the features app's too."""
        aux = self.labeler_replicas + self.adapter_replicas
        gate_cpus = self.gate_cpus * self.gate_replicas if gate else 0.0
        return self.grader_cpus * self.grader_replicas + AUX_CPUS * aux + gate_cpus

    def settings(self) -> Settings:
        return load_settings(self.config_file, self.overrides)


def _request_dict(r: GradeRequest) -> dict[str, Any]:
    prompt = r.prompt if isinstance(r.prompt, str) else [m.model_dump() for m in r.prompt]
    return {"prompt": prompt, "response": r.response, "rule_text": r.rule_text}


def _request(d: dict[str, Any]) -> GradeRequest:
    p = d["prompt"]
    prompt = p if isinstance(p, str) else [ChatMessage.model_validate(m) for m in p]
    return GradeRequest(prompt, d["response"], d["rule_text"])


@serve.deployment
class GraderDeployment:
    def __init__(self, args: LabelerAppArgs) -> None:
        from ramo_stream.label.grading.factory import describe, make_grader

        self.grader = make_grader(args.settings())
        print(f"labeler: {describe(self.grader)}", flush=True)  # in the Serve replica's log

    def info(self) -> dict[str, Any]:
        g = self.grader
        return {"name": g.name, "template_version": g.template_version,
                "calibrate_by_default": g.calibrate_by_default}  # fmt: skip

    def grade(self, requests: list[dict[str, Any]]) -> list[dict[str, float]]:
        return [asdict(a) for a in self.grader.grade([_request(d) for d in requests])]


@serve.deployment
class RuleAdapterDeployment:
    def __init__(self, args: LabelerAppArgs) -> None:
        from ramo_stream.core.rules import load_pool
        from ramo_stream.label.rule_adapter.model import load_adapter

        settings = args.settings()
        self.adapter = load_adapter(settings.paths.adapter_dir, load_pool(settings.paths.rule_pool))

    def pool_hash(self) -> str:
        return self.adapter.pool_hash

    def predict(self, pairs: list[dict[str, Any]], k: int) -> list[list[tuple[str, float]]]:
        return self.adapter.predict([ResponsePair.model_validate(p) for p in pairs], k)


class _RemoteGrader:
    """The Grader protocol over a GraderDeployment handle (blocking: call from a thread)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        info = handle.info.remote().result()
        self.name, self.template_version = info["name"], info["template_version"]
        # Without it the labeler would not know the grader's calibration default: the
        # trained classifier must not be calibrated (it flips benign pairs to refusals).
        self.calibrate_by_default: bool = bool(info["calibrate_by_default"])

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        out = self.handle.grade.remote([_request_dict(r) for r in requests]).result()
        return [AnswerProbs(**d) for d in out]


class _RemoteAdapter:
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle
        self.pool_hash: str = handle.pool_hash.remote().result()

    def predict(self, pairs: Sequence[ResponsePair], k: int) -> list[list[tuple[str, float]]]:
        payload = [p.model_dump(mode="json") for p in pairs]
        return [[tuple(x) for x in row] for row in self.handle.predict.remote(payload, k).result()]


@serve.deployment
class LabelerDeployment:
    """Orchestration only: the adapter and the grader run in their own deployments.

    ``Labeler`` is synchronous and the proxies block on handle results, which Serve forbids
    on the replica's event loop; so it is built and run in a worker thread.
    """

    def __init__(
        self, args: LabelerAppArgs, grader: DeploymentHandle, adapter: DeploymentHandle | None
    ) -> None:
        self.args, self.grader_handle, self.adapter_handle = args, grader, adapter
        self.labeler: Any = None

    def _build(self) -> Any:
        from ramo_stream.label.setup import build_labeler

        # The adapter handle exists exactly when the selector is ``adapter`` (build_app).
        adapter = _RemoteAdapter(self.adapter_handle) if self.adapter_handle else None
        return build_labeler(self.args.settings(), None, _RemoteGrader(self.grader_handle), adapter)

    def _label(self, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.labeler is None:
            self.labeler = self._build()
        labeled = self.labeler.label([ResponsePair.model_validate(p) for p in pairs])
        return [lp.model_dump(mode="json") for lp in labeled]

    async def label(self, pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """ResponsePair dicts in, LabeledPair dicts out (same order). Raises on failure."""
        return await asyncio.to_thread(self._label, pairs)


def build_app(args: LabelerAppArgs | dict[str, Any]) -> Application:
    if isinstance(args, dict):  # `serve run` and RayService hand the YAML's args over as a dict
        args = LabelerAppArgs.model_validate(args)
    settings = args.settings()
    grader = GraderDeployment.options(
        num_replicas=args.grader_replicas,
        ray_actor_options={"num_cpus": args.grader_cpus, "num_gpus": args.grader_gpus},
    ).bind(args)
    adapter = None
    if settings.labeling.selector == "adapter":
        adapter = RuleAdapterDeployment.options(
            num_replicas=args.adapter_replicas, ray_actor_options={"num_cpus": AUX_CPUS}
        ).bind(args)
    return LabelerDeployment.options(
        num_replicas=args.labeler_replicas, ray_actor_options={"num_cpus": AUX_CPUS}
    ).bind(args, grader, adapter)
