"""The reward service end to end: real Ray Serve on the CPU, real HTTP (httpx), MiniLM as a
real reward model, versions published to a real registry while the service runs.

Version v of every lineage here has its head's bias set to v * BIAS, so a reward tells which
version computed it (the untrained head adds well under BIAS / 2).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.registry.store import Registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")
httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

BIAS = 1000.0
POLL_S = 0.2
TOKEN = "test-token-0123456789abcdef"


class Lineage:
    """A registry whose versions score v * BIAS + (a small model output)."""

    def __init__(self, root: Path, backbone: tuple[Any, Any]) -> None:
        self.root = root
        self.registry = Registry(str(root), keep=50)
        self.model, self.tok = backbone
        self.published: dict[int, tuple[float, float]] = {}  # version -> publish call, return

    def publish(self) -> int:
        import torch

        current = self.registry.current()
        version = (current.version if current else 0) + 1
        with torch.no_grad():
            self.model.classifier.bias.fill_(version * BIAS)

        def write(d: Path) -> None:
            self.model.save_pretrained(d)
            self.tok.save_pretrained(d)

        started = time.monotonic()
        manifest = self.registry.publish(write, steps=version, samples_seen=0, offsets={},
                                         base_model="all-minilm-l6-v2")  # fmt: skip
        self.published[version] = (started, time.monotonic())
        assert manifest.version == version
        return version

    def expected(self, version: int, pairs: list[tuple[Any, str]]) -> list[float]:
        """Rewards of a version computed directly: one process, no server."""
        import torch

        from ramo_stream.registry.model import encode, format_text, load_reward_model, rewards

        model, tok = load_reward_model(self.registry.path(version))
        texts = [format_text(tok, p, r) for p, r in pairs]
        with torch.inference_mode():
            return [float(x) for x in rewards(model.eval(), encode(tok, texts, 512)).tolist()]


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def health_version(url: str) -> int | None:
    r = httpx.get(f"{url}/health", timeout=10)
    return int(r.json()["model_version"]) if r.status_code == 200 else None


@pytest.fixture(scope="module")
def backbone(models_dir: Path) -> tuple[Any, Any]:
    import torch

    from ramo_stream.registry.model import load_reward_model

    torch.manual_seed(0)
    return load_reward_model(models_dir / "all-minilm-l6-v2")


@pytest.fixture(scope="module")
def deploy(
    ray_serve: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., str]]:
    """Deploy the app as `name` under /name, on the registry at `root`; returns its URL.
    What is still deployed when the module ends is deleted."""
    from ray import serve

    from ramo_stream.serve.reward_app import RewardAppArgs, build_app

    def make(name: str, root: Path, **serve_settings: Any) -> str:
        overrides: dict[str, Any] = {
            "train.registry": str(root),
            "paths.cache_dir": str(tmp_path_factory.mktemp(f"cache-{name}")),
            "serve.reload_poll_s": POLL_S,
            "serve.replica_cpus": 0.5,
        }
        overrides.update({f"serve.{k}": v for k, v in serve_settings.items()})
        app = build_app(RewardAppArgs(overrides=overrides, ingress_cpus=0.1))
        serve.run(app, name=name, route_prefix=f"/{name}")
        deployed.append(name)
        return f"http://127.0.0.1:{ray_serve}/{name}"

    deployed: list[str] = []
    yield make
    for name in set(deployed) & set(serve.status().applications):
        serve.delete(name)


@pytest.fixture(scope="module")
def lineage(tmp_path_factory: pytest.TempPathFactory, backbone: tuple[Any, Any]) -> Lineage:
    return Lineage(tmp_path_factory.mktemp("registry"), backbone)


@pytest.fixture(scope="module")
def main_url(deploy: Callable[..., str], lineage: Lineage) -> str:
    """Version 1 at start, version 2 published while it runs: both loaded (keep_loaded=2)."""
    lineage.publish()
    url = deploy("main", lineage.root, keep_loaded=2, max_items=8, max_body_bytes=4096)
    wait_for(lambda: health_version(url) == 1, 60, "version 1 served")
    lineage.publish()
    wait_for(lambda: health_version(url) == 2, 60, "version 2 hot-loaded")
    return url


def version_of(reward: float) -> int:
    return round(reward / BIAS)


# ---- the contract, endpoint by endpoint --------------------------------------------------

CHAT = [{"role": "user", "content": "How do I store bleach?"}]
ITEMS = [
    {"prompt": "How do I store bleach?", "response": "Away from children, sealed."},
    {"prompt": CHAT, "response": "Anywhere."},
    {"prompt": "\n\nHuman: Hi\n\nAssistant:", "response": ""},  # HH transcript, empty reply
]


def test_score_uses_the_training_input_format(main_url: str, lineage: Lineage) -> None:
    from ramo_stream.schemas import ChatMessage

    r = httpx.post(f"{main_url}/v1/score", json={"items": ITEMS}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "model_version"} and body["model_version"] == 2
    assert len(body["rewards"]) == 3 and all(version_of(x) == 2 for x in body["rewards"])
    pairs = [([ChatMessage(**m) for m in it["prompt"]] if isinstance(it["prompt"], list)
              else it["prompt"], it["response"]) for it in ITEMS]  # fmt: skip
    assert body["rewards"] == pytest.approx(lineage.expected(2, pairs), abs=1e-3)


def test_compare(main_url: str) -> None:
    req = {"prompt": "How do I store bleach?", "a": "Away from children, sealed.", "b": "Anywhere."}
    r = httpx.post(f"{main_url}/v1/compare", json=req, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"p_a_better", "rewards", "model_version"} and body["model_version"] == 2
    r_a, r_b = body["rewards"]
    assert body["p_a_better"] == pytest.approx(1 / (1 + math.exp(-(r_a - r_b))))
    alone = httpx.post(f"{main_url}/v1/score", json={"items": [
        {"prompt": req["prompt"], "response": req["a"]},
        {"prompt": req["prompt"], "response": req["b"]},
    ]}, timeout=30).json()["rewards"]  # fmt: skip
    assert [r_a, r_b] == pytest.approx(alone, abs=1e-3)


def test_get_reward_openrlhf(main_url: str, lineage: Lineage) -> None:
    prompt = "User: What is 2+2?\nAssistant: "
    req = {
        "query": [prompt + "4", prompt + "5", "no prompt given for this one"],
        "prompts": [prompt, prompt, "a prompt that is not its prefix"],
        "labels": ["4", "4", None],
    }
    r = httpx.post(f"{main_url}/get_reward", json=req, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"rewards", "scores", "extra_logs", "model_version"}
    assert body["rewards"] == body["scores"] and len(body["rewards"]) == 3
    assert body["extra_logs"] == {"model_version": [2, 2, 2]} and body["model_version"] == 2
    expected = lineage.expected(2, [(prompt, "4"), (prompt, "5"),
                                    ("", "no prompt given for this one")])  # fmt: skip
    assert body["rewards"] == pytest.approx(expected, abs=1e-3)
    # Without prompts (OpenRLHF sends none for some datasets): each query is the response.
    r = httpx.post(f"{main_url}/get_reward", json={"query": ["just text"]}, timeout=30)
    assert r.status_code == 200 and r.json()["rewards"] == pytest.approx(
        lineage.expected(2, [("", "just text")]), abs=1e-3
    )


def test_models_and_health(main_url: str, lineage: Lineage) -> None:
    r = httpx.get(f"{main_url}/v1/models", timeout=10)
    assert r.status_code == 200
    assert r.json() == {"current": 2, "loaded": [1, 2], "registry": str(lineage.root)}
    r = httpx.get(f"{main_url}/health", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "ok", "model_version": 2}


def test_pin_a_loaded_version_409_for_others(main_url: str) -> None:
    item = [{"prompt": "Hi", "response": "Hello"}]
    r = httpx.post(f"{main_url}/v1/score", json={"items": item, "model_version": 1}, timeout=30)
    assert r.status_code == 200 and r.json()["model_version"] == 1
    assert version_of(r.json()["rewards"][0]) == 1  # computed by version 1 indeed
    r = httpx.post(f"{main_url}/v1/compare", timeout=30,
                   json={"prompt": "Hi", "a": "x", "b": "y", "model_version": 1})  # fmt: skip
    assert r.status_code == 200 and r.json()["model_version"] == 1
    r = httpx.post(f"{main_url}/v1/score", json={"items": item, "model_version": 99}, timeout=30)
    assert r.status_code == 409
    error = r.json()["error"]
    assert error["type"] == "version_not_loaded"
    assert "99" in error["message"] and "loaded versions: 1, 2" in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/score", b'{"items": [{"prompt": "a"}]}', "items.0.response"),
        ("/v1/score", b'{"items": []}', "items"),
        (
            "/v1/score",
            b'{"items": [{"prompt": "a", "response": "b"}], "model_version": "1"}',
            "model_version",
        ),  # fmt: skip
        ("/v1/score", b'{"items": [{"prompt": "a", "response": "b"}], "extra": 1}', "extra"),
        ("/v1/score", b"not json", "JSON"),
        ("/v1/compare", b'{"prompt": "a", "a": "x"}', "b"),
        ("/get_reward", b'{"query": ["a", "b"], "prompts": ["a"]}', "prompts"),
        ("/get_reward", b'{"prompts": ["a"]}', "query"),
    ],
)
def test_invalid_input_is_422_naming_the_field(
    main_url: str, path: str, body: bytes, field: str
) -> None:
    r = httpx.post(f"{main_url}{path}", content=body, timeout=30,
                   headers={"content-type": "application/json"})  # fmt: skip
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_input" and field in error["message"]


def test_too_large_is_413(main_url: str) -> None:
    nine = {"items": [{"prompt": "p", "response": "r"}] * 9}  # serve.max_items = 8
    r = httpx.post(f"{main_url}/v1/score", json=nine, timeout=30)
    assert r.status_code == 413 and "max_items=8" in r.json()["error"]["message"]
    r = httpx.post(f"{main_url}/get_reward", json={"query": ["q"] * 9}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    big = {"items": [{"prompt": "p", "response": "x" * 5000}]}  # serve.max_body_bytes = 4096
    r = httpx.post(f"{main_url}/v1/score", json=big, timeout=30)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]


def test_unknown_path_is_a_json_404(main_url: str) -> None:
    r = httpx.post(f"{main_url}/v2/score", json={}, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"


def test_metrics_and_batching_across_requests(main_url: str) -> None:
    import asyncio

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as c:
            rs = await asyncio.gather(*(
                c.post(f"{main_url}/v1/score",
                       json={"items": [{"prompt": f"q{i}", "response": "a" * (i % 9)}]})
                for i in range(32)
            ))  # fmt: skip
        return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 32
    httpx.post(f"{main_url}/v1/score", json={"items": []}, timeout=10)  # one 422
    text = httpx.get(f"{main_url}/metrics", timeout=10).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['ramo_reward_requests_total{endpoint="/v1/score",status="200"}'] >= 32
    assert samples['ramo_reward_requests_total{endpoint="/v1/score",status="422"}'] >= 1
    assert samples['ramo_reward_request_seconds_count{endpoint="/v1/score"}'] >= 33
    assert samples["ramo_reward_model_version"] == 2
    assert samples["ramo_reward_reloads_total"] == 2  # version 1 at start, then version 2
    assert samples["ramo_reward_loaded_versions"] == 2
    batches, items = samples["ramo_reward_batch_size_count"], samples["ramo_reward_batch_size_sum"]
    # 32 one-item requests at once: items of different requests shared forward passes.
    assert items >= 32 and batches < items
    assert samples['ramo_reward_tokens_total{kind="real"}'] > 0
    assert samples["ramo_reward_model_busy_seconds_total"] > 0


# ---- auth, start-up refusals, no model yet -----------------------------------------------


def test_bearer_token(deploy: Callable[..., str], lineage: Lineage, main_url: str) -> None:
    from ray import serve

    url = deploy("auth", lineage.root, api_token=TOKEN)
    try:
        wait_for(lambda: health_version(url) == 2, 60, "the token app")  # /health is open
        item = {"items": [{"prompt": "Hi", "response": "Hello"}]}
        for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"},
                        {"authorization": TOKEN}, {"authorization": f"Basic {TOKEN}"}):  # fmt: skip
            r = httpx.post(f"{url}/v1/score", json=item, headers=headers, timeout=30)
            assert r.status_code == 401, headers
            assert r.json()["error"]["type"] == "unauthorized"
        good = {"authorization": f"Bearer {TOKEN}"}
        r = httpx.post(f"{url}/v1/score", json=item, headers=good, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == 2
        for path in ("/v1/models", "/metrics"):
            assert httpx.get(f"{url}{path}", timeout=10).status_code == 401
            assert httpx.get(f"{url}{path}", headers=good, timeout=10).status_code == 200
        r = httpx.post(f"{url}/get_reward", json={"query": ["x"]}, timeout=10)
        assert r.status_code == 401
    finally:
        serve.delete("auth")


def test_open_address_without_token_refuses_to_start(tmp_path: Path) -> None:
    from ramo_stream.serve.reward_app import RewardAppArgs, build_app

    with pytest.raises(ValueError, match="serve.api_token is unset"):
        build_app(RewardAppArgs(overrides={"serve.host": "0.0.0.0"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}
    env["RAMO_PATHS__CACHE_DIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "ramo_stream.cli", "serve", "--serve-host", "0.0.0.0"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "RAMO_SERVE__API_TOKEN" in out.stderr


def test_models_publish_cli(models_dir: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}
    env.update(
        RAMO_PATHS__CACHE_DIR=str(tmp_path / "cache"), RAMO_TRAIN__REGISTRY=str(tmp_path / "rm")
    )

    def publish(path: Path) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "ramo_stream.cli", "models", "publish", str(path)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    backbone = models_dir / "all-minilm-l6-v2"  # a BertModel: no reward head yet
    out = publish(backbone)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "version 1" in out.stdout and "new, untrained reward head" in out.stdout
    registry = Registry(str(tmp_path / "rm"))
    m = registry.current()
    assert m is not None
    assert (m.version, m.steps, m.samples_seen, m.offsets) == (1, 0, 0, {})
    from ramo_stream.local_models import model_id

    # a portable id (name@weights digest), never this machine's path
    assert m.base_model == model_id(str(backbone), models_dir) and "@" in m.base_model
    assert not m.base_model.startswith("/") and str(models_dir) not in m.base_model
    config = json.loads((registry.path(1) / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert len(config["id2label"]) == 1
    # A reward checkpoint (here: version 1's folder) is copied as it is.
    out = publish(registry.path(1))
    assert out.returncode == 0 and "copied" in out.stdout, out.stderr[-2000:]
    weights = "model.safetensors"
    assert (registry.path(2) / weights).read_bytes() == (registry.path(1) / weights).read_bytes()
    assert registry.get(2).parent_version == 1 and registry.current().version == 2  # type: ignore[union-attr]
    out = publish(tmp_path / "cache")  # not a model folder
    assert out.returncode == 2 and "config.json" in out.stderr


def test_503_until_a_version_is_published(
    deploy: Callable[..., str], tmp_path: Path, backbone: tuple[Any, Any]
) -> None:
    from ray import serve

    empty = Lineage(tmp_path / "registry", backbone)
    url = deploy("empty", empty.root)
    try:
        item = {"prompt": "Hi", "response": "Hello"}
        for method, path, body in [
            ("GET", "/health", None),
            ("POST", "/v1/score", {"items": [item]}),
            ("POST", "/v1/compare", {"prompt": "Hi", "a": "x", "b": "y"}),
            ("POST", "/get_reward", {"query": ["Hi Hello"]}),
        ]:
            r = httpx.request(method, f"{url}{path}", json=body, timeout=30)
            assert r.status_code == 503, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "no_model"
            assert "ramo train" in error["message"] and "ramo models publish" in error["message"]
        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert models == {"current": None, "loaded": [], "registry": str(empty.root)}
        empty.publish()  # picked up without a restart
        wait_for(lambda: health_version(url) == 1, 60, "the first version")
        r = httpx.post(f"{url}/v1/score", json={"items": [item]}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == 1
    finally:
        serve.delete("empty")


# ---- hot reload under load -----------------------------------------------------------------


def load_seconds_bound(url: str) -> float:
    """Upper bound on every version load so far, from the load-time histogram."""
    buckets: list[tuple[float, float]] = []
    count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("ramo_reward_model_load_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((math.inf if le == "+Inf" else float(le), float(line.split()[-1])))
        elif line.startswith("ramo_reward_model_load_seconds_count"):
            count = float(line.split()[-1])
    return min(le for le, n in buckets if n >= count)


def test_hot_reload_under_load(
    deploy: Callable[..., str], tmp_path: Path, backbone: tuple[Any, Any]
) -> None:
    from ray import serve

    lineage = Lineage(tmp_path / "registry", backbone)
    lineage.publish()
    url = deploy("reload", lineage.root, keep_loaded=2)
    wait_for(lambda: health_version(url) == 1, 60, "version 1 served")
    stop = threading.Event()
    logs: list[list[tuple[float, float, Any, Any]]] = [[], []]

    def client(log: list[tuple[float, float, Any, Any]], seed: int) -> None:
        with httpx.Client(timeout=60) as c:
            i = 0
            while not stop.is_set():
                items = [
                    {"prompt": f"question {seed}-{i}-{k}", "response": "so " * (1 + (i + k) % 9)}
                    for k in range(3)
                ]
                t0 = time.monotonic()
                try:
                    r = c.post(f"{url}/v1/score", json={"items": items})
                    status, body = r.status_code, r.json()
                except Exception as e:  # a failed request is what this test looks for
                    status, body = repr(e), None
                log.append((t0, time.monotonic(), status, body))
                i += 1

    threads = [threading.Thread(target=client, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        for _ in range(5):  # versions 2..6, while both clients keep sending
            lineage.publish()
            time.sleep(1.5)
        wait_for(lambda: health_version(url) == 6, 60, "version 6 served")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    load_bound = load_seconds_bound(url)
    serve.delete("reload")

    # The rule asserted for each reply of version v to a request sent at t0, answered at t1:
    #   (a) v was published before t1: the call publishing v started before t1 (CURRENT
    #       flips inside that call, so a reply of v before it began is impossible);
    #   (b) v was still current, up to the reload lag, at t0: if v+1 exists, the call that
    #       published v+1 returned no earlier than t0 - LAG, where
    #       LAG = reload_poll_s + 2 * (longest version load) + 1 s of scheduling slack.
    #       The watcher notices a flip within one poll; a load it had already begun of the
    #       version before may finish first (one load), then it swaps and looks again at
    #       once, and loads the new one (a second load) before swapping it in.
    # Also: every request succeeded; per client, versions never go backwards; each reward
    # carries its version's bias, so the reply's model_version is the model that scored it.
    lag = POLL_S + 2 * load_bound + 1.0
    published = lineage.published
    assert sorted(published) == [1, 2, 3, 4, 5, 6]
    seen: set[int] = set()
    for log in logs:
        assert len(log) >= 10, f"only {len(log)} requests: the stream was not steady"
        failures = [(s, b) for _, _, s, b in log if s != 200]
        assert not failures, failures[:3]
        versions = [b["model_version"] for _, _, _, b in log]
        assert versions == sorted(versions), "a client saw the version go backwards"
        for t0, t1, _, body in log:
            v = body["model_version"]
            assert all(version_of(r) == v for r in body["rewards"]), body
            assert published[v][0] <= t1, f"v{v} replied before it was published"
            if v + 1 in published:
                superseded = published[v + 1][1]
                assert superseded >= t0 - lag, (
                    f"v{v} served {t0 - superseded:.1f}s after v{v + 1} was published"
                    f" (allowed {lag:.1f}s)"
                )
        seen.update(versions)
    assert 6 in seen and len(seen) >= 3, f"versions seen under load: {sorted(seen)}"
    print(f"\nhot reload: {sum(map(len, logs))} requests, versions seen {sorted(seen)}, "
          f"load <= {load_bound}s, lag allowed {lag:.1f}s")  # fmt: skip
