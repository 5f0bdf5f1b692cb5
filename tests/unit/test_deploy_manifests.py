"""The manifests under deploy/, checked without a cluster.

Every YAML parses; every Serve app's import path names a builder and its args are what the
builder accepts, the way Serve hands them over; every RAMO_* variable is a real setting and
the settings each pod would load validate; the Kafka topics are the ones the settings name;
and what must agree across manifests agrees: the registry the trainer writes and the reward
replicas read, the token, the image, the apps, the bridge's target.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from types import FunctionType
from typing import Any, get_args, get_type_hints
from unittest import mock

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from ramo_stream.config import Settings, load_settings, settings_fields

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SECRET_SETTINGS = {
    "RAMO_SERVE__API_TOKEN",
    "RAMO_GRADER__OPENAI_API_KEY",
    "RAMO_KAFKA__SASL_PASSWORD",
}
NOT_A_SETTING = {"RAMO_CONFIG"}  # the settings file, read by load_settings itself
FAKE_SECRET = "s" * 32  # what a secretKeyRef resolves to here
LABELER_BUILDER = "ramo_stream.label.serve_app:build_app"


# --- reading deploy/ ----------------------------------------------------------------------


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        with path.open() as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    docs.append((str(path.relative_to(DEPLOY)), doc))
    return docs


DOCS = _documents()


def _resources(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d.get("kind") == kind]


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    """(where, config): plain Serve config files and each RayService's serveConfigV2."""
    out = [(where, d) for where, d in DOCS if "applications" in d]
    for rs in _resources("RayService"):
        out.append(
            (f"RayService {rs['metadata']['name']}", yaml.safe_load(rs["spec"]["serveConfigV2"]))
        )
    return out


def _apps() -> list[Any]:
    return [
        pytest.param(where, cfg, app, id=f"{where}:{app['name']}")
        for where, cfg in _serve_configs()
        for app in cfg["applications"]
    ]


def _pod_templates(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource["spec"]
    if resource["kind"] == "Deployment":
        return [spec["template"]]
    cluster = (
        spec["rayClusterConfig"] if resource["kind"] == "RayService" else spec["rayClusterSpec"]
    )
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster.get("workerGroupSpecs", [])
    ]


def _containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for t in _pod_templates(resource) for c in t["spec"]["containers"]]


RAMO_WORKLOADS = [
    r
    for kind in ("RayService", "RayJob", "Deployment")
    for r in _resources(kind)
    if r["metadata"]["name"].startswith("ramo")
]


def _runtime_env_vars(resource: dict[str, Any]) -> dict[str, str]:
    if resource["kind"] != "RayJob" or not resource["spec"].get("runtimeEnvYAML"):
        return {}
    env = yaml.safe_load(resource["spec"]["runtimeEnvYAML"]).get("env_vars", {})
    return {k: str(v) for k, v in env.items()}


def _env(resource: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container's processes see (secrets resolved to a stand-in)."""
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in _resources("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            assert ref["name"] in maps or ref.get("optional"), f"no ConfigMap {ref['name']}"
            env.update({k: str(v) for k, v in maps.get(ref["name"], {}).items()})
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "secretKeyRef" in var.get("valueFrom", {}):
            env[var["name"]] = FAKE_SECRET
    return env | _runtime_env_vars(resource)


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """Exactly ``env`` as the RAMO_* variables (the developer's own are hidden)."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}
    with mock.patch.dict(os.environ, kept | env, clear=True):
        yield


def _settings(env: dict[str, str]) -> Settings:
    with _environ(env):
        return load_settings()


def _cluster_env() -> dict[str, str]:
    """What the RayService's head sees: the context its Serve apps are built in."""
    (rs,) = _resources("RayService")
    return _env(rs, _containers(rs)[0])


def _setting_keys() -> set[str]:
    return {key for key, *_ in settings_fields()}


# --- the files ----------------------------------------------------------------------------


def test_every_yaml_parses_and_is_known() -> None:
    files = {where for where, _ in DOCS}
    for expected in ("serve.yaml", "topics.yaml", "kafka-user.yaml", "kafka-compose.yaml",
                     "kuberay/settings.yaml",
                     "kuberay/rayservice.yaml", "kuberay/rayjob-trainer.yaml",
                     "kuberay/labeler-bridge.yaml"):  # fmt: skip
        assert expected in files
    for where, doc in DOCS:
        kinds = ("services" in doc, "applications" in doc, {"apiVersion", "kind"} <= doc.keys())
        assert sum(kinds) == 1, f"{where}: neither compose, Serve config nor Kubernetes"
        if kinds[2]:
            assert doc["metadata"]["name"], where


# --- Serve apps ---------------------------------------------------------------------------


def _builder(import_path: str) -> Any:
    module, _, attr = import_path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _args_model(builder: Any) -> type[BaseModel]:
    (param,) = inspect.signature(builder).parameters
    hint = get_type_hints(builder)[param]
    models = [
        t for t in (hint, *get_args(hint)) if isinstance(t, type) and issubclass(t, BaseModel)
    ]
    assert len(models) == 1, f"{builder.__qualname__}({param}: {hint}) names no one pydantic model"
    return models[0]


def _validate_args(model: type[BaseModel], args: dict[str, Any]) -> Any:
    # The args models ignore unknown keys, so a misspelt one (grader_gpu: 1) would vanish.
    unknown = set(args) - set(model.model_fields)
    if unknown:
        raise ValueError(f"{model.__name__} has no {sorted(unknown)}")
    return model.model_validate(args)


@pytest.mark.parametrize(("where", "cfg"), _serve_configs())
def test_serve_config_is_valid_for_ray(where: str, cfg: dict[str, Any]) -> None:
    schema = pytest.importorskip("ray.serve.schema", reason="the serve extra is not installed")
    schema.ServeDeploySchema.model_validate(cfg)
    names = [a["name"] for a in cfg["applications"]]
    assert sorted(names) == ["labeler", "reward"], where


@pytest.mark.parametrize(("where", "cfg"), _serve_configs())
def test_reward_app_judges_the_address_serve_binds(where: str, cfg: dict[str, Any]) -> None:
    (reward,) = [a for a in cfg["applications"] if a["name"] == "reward"]
    assert reward["args"]["overrides"]["serve.host"] == cfg["http_options"]["host"], where


def test_rayservice_runs_the_apps_of_serve_yaml() -> None:
    (plain,) = [c for w, c in _serve_configs() if w == "serve.yaml"]
    (rs,) = [c for w, c in _serve_configs() if w.startswith("RayService")]

    def shape(cfg: dict[str, Any]) -> set[tuple[str, str, str | None]]:
        return {(a["name"], a["import_path"], a.get("route_prefix")) for a in cfg["applications"]}

    assert shape(plain) == shape(rs)


@pytest.mark.parametrize(("where", "cfg", "app"), _apps())
def test_import_path_names_a_builder(where: str, cfg: dict[str, Any], app: dict[str, Any]) -> None:
    pytest.importorskip("ray.serve", reason="the serve extra is not installed")
    builder = _builder(app["import_path"])
    assert isinstance(builder, FunctionType), f"{app['import_path']} is not a function"
    args = _validate_args(_args_model(builder), app.get("args", {}))
    with _environ(_cluster_env() if where.startswith("RayService") else {}):
        args.settings()  # type: ignore[attr-defined]  # the dotted overrides are real settings


@pytest.mark.parametrize(("where", "cfg", "app"), _apps())
def test_serve_builds_the_app_from_its_args(
    where: str, cfg: dict[str, Any], app: dict[str, Any]
) -> None:
    """Serve's own path: the YAML's args turned into what the builder takes, then the call.
    It only binds deployments: nothing starts, no model loads."""
    pytest.importorskip("ray.serve", reason="the serve extra is not installed")
    from ray.serve import Application
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    with _environ(_cluster_env() if where.startswith("RayService") else {}):
        built = call_user_app_builder_with_args_if_necessary(
            _builder(app["import_path"]), dict(app.get("args", {}))
        )
    assert isinstance(built, Application)


def test_args_that_do_not_fit_are_refused() -> None:
    pytest.importorskip("ray.serve", reason="the serve extra is not installed")
    for path in (LABELER_BUILDER, "ramo_stream.serve.reward_app:build_app"):
        model = _args_model(_builder(path))
        with pytest.raises(ValueError, match="no_such_arg"):
            _validate_args(model, {"no_such_arg": 1})
        with pytest.raises(ValidationError):
            _validate_args(model, {"overrides": "not a mapping"})
        args = _validate_args(model, {"overrides": {"serve.no_such_setting": 1}})
        with pytest.raises(ValueError, match="no_such_setting"):
            args.settings()


def test_public_reward_app_refuses_to_start_without_its_token() -> None:
    pytest.importorskip("ray.serve", reason="the serve extra is not installed")
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    (cfg,) = [c for w, c in _serve_configs() if w.startswith("RayService")]
    (reward,) = [a for a in cfg["applications"] if a["name"] == "reward"]
    env = {k: v for k, v in _cluster_env().items() if k != "RAMO_SERVE__API_TOKEN"}
    with _environ(env), pytest.raises(ValueError, match="api_token"):
        call_user_app_builder_with_args_if_necessary(_builder(reward["import_path"]),
                                                     dict(reward["args"]))  # fmt: skip


# --- settings through the environment -----------------------------------------------------


def _ramo_names() -> list[tuple[str, str]]:
    """(where, name) of every RAMO_* variable a manifest sets, wherever it sets it."""
    found = []
    for m in _resources("ConfigMap"):
        found += [(f"ConfigMap {m['metadata']['name']}", k) for k in m.get("data", {})]
    for r in RAMO_WORKLOADS:
        where = f"{r['kind']} {r['metadata']['name']}"
        found += [(where, v["name"]) for c in _containers(r) for v in c.get("env", [])]
        found += [(where, k) for k in _runtime_env_vars(r)]
    return [(w, n) for w, n in found if n.startswith("RAMO_")]


def test_manifests_set_ramo_variables() -> None:
    names = {n for _, n in _ramo_names()}
    assert {
        "RAMO_KAFKA__BOOTSTRAP_SERVERS",
        "RAMO_TRAIN__REGISTRY",
        "RAMO_SERVE__API_TOKEN",
    } <= names


def _is_setting(name: str) -> bool:
    section, sep, key = name.removeprefix("RAMO_").partition("__")
    return name in NOT_A_SETTING or (
        bool(sep) and f"{section.lower()}.{key.lower()}" in _setting_keys()
    )


@pytest.mark.parametrize(("where", "name"), _ramo_names())
def test_every_ramo_variable_is_a_setting(where: str, name: str) -> None:
    assert _is_setting(name), (
        f"{where}: {name} is no setting (RAMO_<SECTION>__<KEY>; `ramo config --describe`)"
    )


def test_a_misspelt_variable_is_caught() -> None:
    assert _is_setting("RAMO_SERVE__API_TOKEN")
    for wrong in ("RAMO_SERVE_API_TOKEN", "RAMO_SERVE__API_TOKN", "RAMO_SERVER__API_TOKEN"):
        assert not _is_setting(wrong)


@pytest.mark.parametrize(
    "resource", RAMO_WORKLOADS, ids=lambda r: f"{r['kind']}-{r['metadata']['name']}"
)
def test_each_pod_loads_valid_settings(resource: dict[str, Any]) -> None:
    for container in _containers(resource):
        settings = _settings(_env(resource, container))
        assert settings.kafka.bootstrap_servers, "a pod without Kafka would look for a broker"


def test_secrets_come_from_secrets() -> None:
    for m in _resources("ConfigMap"):
        assert not SECRET_SETTINGS & m.get("data", {}).keys(), m["metadata"]["name"]
    for r in RAMO_WORKLOADS:
        assert not SECRET_SETTINGS & _runtime_env_vars(r).keys()
        for c in _containers(r):
            for var in c.get("env", []):
                if var["name"] in SECRET_SETTINGS:
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{var['name']} literal"


def test_every_rayservice_container_has_the_token() -> None:
    for rs in _resources("RayService"):
        for c in _containers(rs):
            assert "RAMO_SERVE__API_TOKEN" in _env(rs, c), c["name"]


def test_trainer_and_reward_replicas_share_the_registry() -> None:
    registries = set()
    for r in RAMO_WORKLOADS:
        for template in _pod_templates(r):
            pvc_mounts = {
                v["name"]
                for v in template["spec"].get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            for c in template["spec"]["containers"]:
                root = _settings(_env(r, c)).train.registry
                assert root, f"{r['metadata']['name']}: train.registry unset: a local folder"
                registries.add(root)
                if "://" not in root:  # a path: only shared if a PVC is mounted above it
                    assert any(
                        m["name"] in pvc_mounts and root.startswith(m["mountPath"])
                        for m in c.get("volumeMounts", [])
                    ), f"{r['metadata']['name']}: registry {root} is on no shared volume"
    assert len(registries) == 1, f"the pods disagree on the registry: {registries}"


def test_one_image_and_ray_version() -> None:
    images = {c["image"] for r in RAMO_WORKLOADS for c in _containers(r)}
    assert len(images) == 1, images
    clusters = [r["spec"].get("rayClusterConfig") or r["spec"]["rayClusterSpec"]
                for r in RAMO_WORKLOADS if r["kind"] != "Deployment"]  # fmt: skip
    assert len({c["rayVersion"] for c in clusters}) == 1


def _gpus(cluster: dict[str, Any]) -> list[float]:
    """GPUs per worker pod, one entry per pod."""
    out = []
    for g in cluster.get("workerGroupSpecs", []):
        (c,) = g["template"]["spec"]["containers"]
        out += [float(c["resources"]["limits"].get("nvidia.com/gpu", 0))] * g["replicas"]
    return out


def test_the_gpus_asked_for_exist() -> None:
    (rs,) = _resources("RayService")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    args = {a["name"]: a["args"] for a in cfg["applications"]}
    labeler, reward = args["labeler"], args["reward"]["overrides"]
    per_replica = [labeler.get("grader_gpus", 0)] * labeler.get("grader_replicas", 1)
    most = reward.get("serve.autoscaling_max_replicas") or reward.get("serve.replicas", 1)
    per_replica += [reward.get("serve.replica_gpus", 1)] * most
    pods = sorted(_gpus(rs["spec"]["rayClusterConfig"]), reverse=True)
    for need in sorted(per_replica, reverse=True):  # first fit, largest first
        slot = next((i for i, free in enumerate(pods) if free >= need), None)
        assert slot is not None, f"no worker pod has {need} GPU left for {per_replica}"
        pods[slot] -= need

    (job,) = _resources("RayJob")
    train = _settings(_env(job, _containers(job)[0])).train
    assert train.use_gpu, "set RAMO_TRAIN__USE_GPU: the default counts GPUs at driver start"
    assert len([g for g in _gpus(job["spec"]["rayClusterSpec"]) if g >= 1]) >= train.workers


# --- trainer, bridge, topics --------------------------------------------------------------


def test_rayjob_runs_ramo_train() -> None:
    from ramo_stream.cli import build_parser
    from ramo_stream.cli.train import cmd_train

    (job,) = _resources("RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "ramo"
    assert build_parser().parse_args(argv[1:]).fn is cmd_train


def test_bridge_attaches_to_the_rayservice_labeler() -> None:
    """The bridge Deployment runs `ramo labeler --attach APP` for the RayService's labeler
    app, through the RayService's Ray Client address, with the Kafka cluster configured."""
    from ramo_stream.cli import build_parser
    from ramo_stream.cli.label import cmd_labeler

    (deployment,) = [r for r in RAMO_WORKLOADS if r["kind"] == "Deployment"]
    (container,) = _containers(deployment)
    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "ramo" and args.fn is cmd_labeler
    (rs,) = _resources("RayService")
    apps = {a["name"]: a for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]}
    assert apps[args.attach]["import_path"] == LABELER_BUILDER
    env = _env(deployment, container)
    assert env["RAY_ADDRESS"] == f"ray://{rs['metadata']['name']}-head-svc:10001"
    assert env.get("RAMO_KAFKA__BOOTSTRAP_SERVERS")  # never an embedded broker in a pod


def test_topics_are_the_settings_topics() -> None:
    topics = _resources("KafkaTopic")
    defaults = _settings({}).topics
    names = {t["spec"].get("topicName", t["metadata"]["name"]) for t in topics}
    assert names == {defaults.pairs, defaults.labels, defaults.dlq}
    # What a ramo process would create, were a topic missing, must be what is declared.
    declared = _settings(_cluster_env()).topics
    for t in topics:
        assert t["spec"]["partitions"] == declared.partitions, t["metadata"]["name"]
        assert t["spec"]["replicas"] == declared.replication_factor, t["metadata"]["name"]
        assert int(t["spec"]["config"]["min.insync.replicas"]) < t["spec"]["replicas"]


def test_every_ramo_pod_reaches_kafka_as_the_kafka_user_over_tls() -> None:
    """SASL_SSL with SCRAM as the Strimzi KafkaUser: the user name and mechanism agree with
    the KafkaUser, the password comes from its Secret, the CA file is mounted where
    kafka.ssl_cafile points."""
    (user,) = _resources("KafkaUser")
    mechanism = user["spec"]["authentication"]["type"].upper()  # scram-sha-512
    for r in RAMO_WORKLOADS:
        for template in _pod_templates(r):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for c in template["spec"]["containers"]:
                k = _settings(_env(r, c)).kafka
                where = f"{r['metadata']['name']}/{c['name']}"
                assert k.security_protocol == "SASL_SSL", where
                assert k.sasl_mechanism == mechanism, where
                assert k.sasl_username == user["metadata"]["name"], where
                assert k.sasl_password is not None, where
                assert k.sasl_password.get_secret_value() == FAKE_SECRET, f"{where}: literal"
                assert k.ssl_cafile is not None
                ca = str(k.ssl_cafile)
                mounts = [m for m in c.get("volumeMounts", [])
                          if ca.startswith(m["mountPath"].rstrip("/") + "/")]  # fmt: skip
                assert mounts, f"{where}: nothing mounted at {k.ssl_cafile}"
                assert "secret" in volumes[mounts[0]["name"]], f"{where}: CA not from a Secret"


def test_kafka_user_may_use_the_topics_and_groups() -> None:
    (user,) = _resources("KafkaUser")
    acls = user["spec"]["authorization"]["acls"]
    settings = _settings(_cluster_env())

    def allowed(kind: str, name: str, op: str) -> bool:
        for acl in acls:
            res = acl["resource"]
            if res["type"] != kind or op not in acl["operations"]:
                continue
            if res.get("patternType") == "prefix" and name.startswith(res["name"]):
                return True
            if res.get("name") == name:
                return True
        return False

    t = settings.topics
    for topic in (t.pairs, t.labels, t.dlq):
        for op in ("Read", "Write", "Describe"):
            assert allowed("topic", topic, op), (topic, op)
    from ramo_stream.label.bridge import GROUP

    for group in (GROUP, settings.train.group):
        assert allowed("group", group, "Read"), group
