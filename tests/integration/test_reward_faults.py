"""The reward service when things go wrong: wrong media types, bad tokens, overload, and a
model replica killed with SIGKILL under load. Real Ray Serve on the CPU, real HTTP, MiniLM.

The fixtures (a lineage of versions whose rewards tell their version, the app deployer) are
those of test_reward_service.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import replica_pids
from tests.integration import test_reward_service as base
from tests.integration.test_reward_service import TOKEN, Lineage, health_version, wait_for

backbone = base.backbone  # the same fixtures, for this module
deploy = base.deploy

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psutil = pytest.importorskip("psutil")
httpx = pytest.importorskip("httpx")

ITEM = {"prompt": "How do I store bleach?", "response": "Away from children, sealed."}
# What a reply must never show: Ray's error text names actors, pids, nodes and namespaces.
INTERNALS = ("Actor", "actor_id", "pid=", "ip=", "namespace", "Traceback", "ray.")


@pytest.fixture(scope="module")
def served(deploy: Callable[..., str], tmp_path_factory: pytest.TempPathFactory,
           backbone: tuple[Any, Any]) -> tuple[str, Lineage]:  # fmt: skip
    lineage = Lineage(tmp_path_factory.mktemp("faults-registry"), backbone)
    lineage.publish()
    url = deploy("faults", lineage.root, keep_loaded=2, api_token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: httpx.get(f"{url}/health", timeout=10).status_code == 200, 60, "v1 served")
    lineage.publish()
    wait_for(lambda: httpx.get(f"{url}/v1/models", headers=headers, timeout=10).json()["current"]
             == 2, 60, "v2 hot-loaded")  # fmt: skip
    return url, lineage


def test_post_bodies_must_be_json_and_401_names_the_scheme(served: tuple[str, Lineage]) -> None:
    url, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{url}/v1/score", headers=auth, timeout=30,
                   data={"items": "x"})  # a form, as `curl -d` sends  # fmt: skip
    assert r.status_code == 415, r.text
    error = r.json()["error"]
    assert error["type"] == "unsupported_media_type" and "application/json" in error["message"]
    r = httpx.post(f"{url}/v1/score", json={"items": [ITEM]}, timeout=30)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in r.text
    r = httpx.post(f"{url}/v1/score", json={"items": [ITEM]}, timeout=30,
                   headers={**auth, "X-Request-Timeout": "soon"})  # fmt: skip
    assert r.status_code == 422 and "X-Request-Timeout" in r.json()["error"]["message"]


def test_get_reward_pins_a_version_and_caps_text(served: tuple[str, Lineage]) -> None:
    from ramo_stream.schemas import MAX_TEXT_CHARS

    url, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for version in (1, 2):
        r = httpx.post(f"{url}/get_reward", headers=auth, timeout=30,
                       json={"query": ["Hi there"], "model_version": version})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == version
        assert round(r.json()["rewards"][0] / 1000.0) == version  # scored by that version
    r = httpx.post(f"{url}/get_reward", headers=auth, timeout=30,
                   json={"query": ["Hi"], "model_version": 9})  # fmt: skip
    assert r.status_code == 409 and r.json()["error"]["type"] == "version_not_loaded"
    r = httpx.post(f"{url}/get_reward", headers=auth, timeout=30,
                   json={"query": ["x" * (2 * MAX_TEXT_CHARS + 1)]})  # fmt: skip
    assert r.status_code in (413, 422), r.text  # past max_body_bytes or the per-text cap


def _requests_by_status(url: str) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", headers=auth, timeout=10).text.splitlines():
        if line.startswith('ramo_reward_requests_total{endpoint="/v1/score"'):
            status = line.split('status="')[1].split('"')[0]
            out[status] = out.get(status, 0.0) + float(line.split()[-1])
    return out


def test_a_client_that_hangs_up_is_499_not_a_server_error(served: tuple[str, Lineage]) -> None:
    url, _ = served
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Request-Timeout": "120"}
    before = _requests_by_status(url)
    # 40 items of MiniLM's full 512 tokens: about 30 s of work on a 2-core CPU, inside the
    # 120 s deadline admission allows. (16 such items once came back within the 2 s a CI
    # machine's client waited, so it hung up on nothing; now 2.5x the work, half the patience.)
    long_items = [{"prompt": f"{i} " + "word " * 300, "response": "reply " * 300}
                  for i in range(40)]  # fmt: skip
    for _ in range(3):
        try:
            r = httpx.post(f"{url}/v1/score", json={"items": long_items}, headers=auth,
                           timeout=1.0)  # fmt: skip
        except httpx.TimeoutException:
            continue
        raise AssertionError(f"answered within 1 s: {r.status_code} {r.text[:300]}")

    def closed() -> bool:
        return _requests_by_status(url).get("499", 0) > before.get("499", 0)

    # Not every hang-up reaches the ingress: Serve's proxy may drop a request whose client
    # left before routing (here 1 of 3 was counted in one run, 0 of 3 in a CI run). What
    # must hold is that none is counted as a server error, so wait for the work to end
    # (a 499 showing up, or a minute) and then compare.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not closed():
        time.sleep(1)
    after = _requests_by_status(url)
    server_errors = {k: v for k, v in after.items() if k.startswith("5")}
    assert server_errors == {k: v for k, v in before.items() if k.startswith("5")}, after
    assert after.get("499", 0) - before.get("499", 0) <= 3, after


def test_overload_is_shed_at_once_with_retry_after(
    deploy: Callable[..., str], tmp_path: Path, backbone: tuple[Any, Any]
) -> None:
    """Many times more work than a 4 s deadline allows: the excess is refused at once with
    503 + Retry-After; what is admitted finishes near its deadline, not at a client timeout."""
    from ray import serve

    lineage = Lineage(tmp_path / "registry", backbone)
    lineage.publish()
    url = deploy("overload", lineage.root, request_timeout_s=4.0)
    wait_for(lambda: health_version(url) == 1, 60, "v1 served")
    items = [{"prompt": "word " * 60, "response": "reply " * 60}] * 4  # ~170 tokens each

    def one(timeout: str) -> tuple[int, float, str, str | None]:
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/score", json={"items": items}, timeout=60,
                       headers={"X-Request-Timeout": timeout})  # fmt: skip
        return r.status_code, time.monotonic() - t0, r.text, r.headers.get("retry-after")

    try:
        for _ in range(3):  # warm up: the replica measures its speed on real batches
            warm = one("30")
            assert warm[0] == 200, warm[2]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            results = list(pool.map(one, ["4"] * 96))
    finally:
        serve.delete("overload")
    ok = [s for s in results if s[0] == 200]
    shed = [s for s in results if s[0] == 503]
    assert len(ok) + len(shed) == len(results), [s[:3] for s in results if s[0] not in (200, 503)]
    kinds = {s[2][:160] for s in results if s[0] != 200}
    assert ok and shed, f"{len(ok)} admitted, {len(shed)} shed: {kinds}; warm-up {warm[1]:.2f}s"
    assert all(s[3] is not None and int(s[3]) >= 1 for s in shed)
    assert all('"overloaded"' in s[2] or '"deadline_exceeded"' in s[2] for s in shed)
    shed_fast = sorted(s[1] for s in shed if '"overloaded"' in s[2])
    admitted = sorted(s[1] for s in ok)
    assert shed_fast, "nothing refused up front"
    shed_median, ok_median = shed_fast[len(shed_fast) // 2], admitted[len(admitted) // 2]
    # Refused before any queue: faster than admitted work. (Absolute figures on an idle
    # machine are benchmarks/serve_overload.py's; this CPU is shared with other test runs.)
    assert shed_median < ok_median, (shed_median, ok_median)
    # The deadline (4 s), plus the HTTP hops on a shared CPU: nothing admitted runs on
    # unbounded (the ingress answers 503 deadline_exceeded at the deadline).
    assert admitted[-1] < 6.0, admitted[-5:]
    print(f"\noverload: {len(ok)} admitted (median {ok_median:.2f}s, slowest"
          f" {admitted[-1]:.2f}s), {len(shed)} shed (median"
          f" {shed_median * 1000:.0f} ms)")  # fmt: skip


def _pids() -> list[int]:
    return replica_pids("crash", "RewardModelServer")


@pytest.mark.timeout(300)
def test_sigkill_of_the_replica_under_load_loses_no_unpinned_request(
    deploy: Callable[..., str], tmp_path: Path, backbone: tuple[Any, Any]
) -> None:
    from ray import serve

    from ramo_stream.client import RewardClient

    lineage = Lineage(tmp_path / "registry", backbone)
    lineage.publish()
    url = deploy("crash", lineage.root)
    wait_for(lambda: health_version(url) == 1, 60, "v1 served")
    wait_for(lambda: len(_pids()) == 1, 30, "the replica's process found")
    (victim,) = _pids()
    stop = threading.Event()
    outcomes: list[tuple[float, str]] = []  # (time, "ok" or the error), client with retries
    raw: list[tuple[float, int, str]] = []  # (time, status, body), plain HTTP without retries
    health: list[tuple[float, int | str, float]] = []  # (time, status, seconds)

    def client_loop(seed: int) -> None:
        with RewardClient(url, timeout_s=30, retries=4, backoff_s=0.5) as rm:
            i = 0
            while not stop.is_set():
                try:
                    rm.score("p", [f"answer {seed}-{i}"])
                    outcomes.append((time.monotonic(), "ok"))
                except Exception as e:  # what this test counts
                    outcomes.append((time.monotonic(), repr(e)))
                i += 1

    def raw_loop() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                r = c.post(f"{url}/v1/score", json={"items": [ITEM]})
                raw.append((time.monotonic(), r.status_code, r.text))

    def health_loop() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.wait(0.25):
                t0 = time.monotonic()
                try:
                    status: int | str = c.get(f"{url}/health").status_code
                except httpx.TimeoutException:
                    status = "timeout"
                health.append((t0, status, time.monotonic() - t0))

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(3)]
    threads += [threading.Thread(target=raw_loop), threading.Thread(target=health_loop)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: any(p != victim for p in _pids()), 60, "a new replica")
        wait_for(lambda: any(t > killed_at and s == 200 for t, s, _ in health), 90,
                 "healthy again")  # fmt: skip
        recovered_at = next(t for t, s, _ in health if t > killed_at and s == 200)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        serve.delete("crash")

    failures = [o for _, o in outcomes if o != "ok"]
    after = [o for t, o in outcomes if t > recovered_at]
    assert not failures, failures[:3]
    assert after, "no request succeeded after recovery"
    assert all(s in (200, 503) for _, s, _ in raw), {s for _, s, _ in raw}
    for _, status, body in raw:
        if status != 200:
            kind = body.split('"type":"')[1].split('"')[0]
            assert kind in ("unavailable", "deadline_exceeded", "overloaded"), body
            assert not any(word in body for word in INTERNALS), body
    # /health never hangs: each probe is answered (200, or 503 while no replica is ready)
    # within serve.health_timeout_s (2 s) plus HTTP on a shared CPU.
    assert all(s in (200, 503) and took < 5.0 for _, s, took in health), health
    raw_failed = sum(s != 200 for _, s, _ in raw)
    print(f"\nSIGKILL of the replica: {len(outcomes)} client calls, 0 failed; raw HTTP"
          f" {len(raw)} requests, {raw_failed} answered 503; healthy again"
          f" {recovered_at - killed_at:.1f} s after the kill; /health 503s:"
          f" {sum(s == 503 for _, s, _ in health)}")  # fmt: skip
