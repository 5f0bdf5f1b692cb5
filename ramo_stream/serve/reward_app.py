"""The reward service on Ray Serve: a thin HTTP ingress in front of the reward model.

    HTTP --> RewardIngress (FastAPI: auth, limits, parsing, errors; reward_http.py)
               --handle--> RewardModelServer (versions, hot reload, dynamic batching;
                                              reward_model_server.py)
               --handle--> RBRDeployment     (serve.rbr not off: proposition grader and
                                              RBR weights; reward_rbr.py)

``build_app`` is the typed builder that ``deploy/serve.yaml`` and ``ramo serve`` use. The
settings (section ``serve``, plus ``train.registry`` / ``paths.cache_dir`` for the
registry) come from ``RewardAppArgs``: a YAML file and dotted overrides.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from ray.serve import Application

from ramo_stream.config import Settings, load_settings


class RewardAppArgs(BaseModel):
    """Arguments of the reward app (the `args:` of deploy/serve.yaml)."""

    config_file: str | None = Field(default=None, description="ramo settings YAML.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="Dotted settings, e.g. {'serve.max_batch_size': 64, 'train.registry':"
        " 's3://bucket/rm'}.",
    )
    ingress_cpus: float = Field(default=0.25, gt=0, description="CPUs per ingress replica.")

    def settings(self) -> Settings:
        return load_settings(self.config_file, self.overrides)


# A log line per request costs more than scoring a small batch; Prometheus counts them.
_NO_ACCESS_LOG = {"enable_access_log": False}


def _replica_gpus(requested: float | None) -> float:
    if requested is not None:
        return requested
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(args: RewardAppArgs | dict[str, Any]) -> Application:
    from ramo_stream.serve.reward_http import RewardIngress as _Ingress
    from ramo_stream.serve.reward_model_server import RewardModelServer as _Server
    from ramo_stream.serve.reward_rbr import RBRDeployment as _RBR

    ingress: Any = _Ingress  # serve.Deployment objects (the decorator's type is lost)
    server: Any = _Server

    if isinstance(args, dict):  # `serve run` hands the YAML's args over as a dict
        args = RewardAppArgs.model_validate(args)
    s = args.settings().serve
    s.check_exposure()
    gpus = _replica_gpus(s.replica_gpus)
    model_options: dict[str, Any] = {
        "logging_config": _NO_ACCESS_LOG,
        "max_ongoing_requests": s.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": s.replica_cpus, "num_gpus": gpus},
    }
    if s.autoscaling_min_replicas is not None:
        most = s.autoscaling_max_replicas or s.autoscaling_min_replicas
        model_options["autoscaling_config"] = {
            "min_replicas": s.autoscaling_min_replicas,
            "max_replicas": most,
            # A replica is busy when it has about a batch's worth of requests.
            "target_ongoing_requests": s.max_batch_size,
        }
    else:
        most = s.replicas
        model_options["num_replicas"] = s.replicas
    model = server.options(**model_options).bind(args)
    rbr_dep: Any = _RBR
    rbr = None
    if s.rbr != "off":  # the proposition grader, only where RBR may be asked for
        rbr = rbr_dep.options(
            num_replicas=1,
            logging_config=_NO_ACCESS_LOG,
            ray_actor_options={"num_cpus": s.rbr_cpus, "num_gpus": 0},
        ).bind(args)
    # The ingress only waits on the model, so it takes every request the replicas can; the
    # replicas' token queues decide what is admitted. Past that, the proxy queues at most as
    # many again and answers 503 to the rest at once instead of holding them until clients
    # time out.
    return ingress.options(
        num_replicas=1,
        logging_config=_NO_ACCESS_LOG,
        max_ongoing_requests=s.max_ongoing_requests * most,
        max_queued_requests=s.max_ongoing_requests * most,
        ray_actor_options={"num_cpus": args.ingress_cpus},
    ).bind(args, model, rbr)
