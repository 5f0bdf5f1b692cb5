"""serve_load.py's load: async HTTP clients in closed and open loop, latency statistics."""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from serve_load_report import fmt

# --- load generation ----------------------------------------------------------------------


@dataclass
class Shot:
    sent: float  # closed loop: send time; open loop: scheduled arrival
    done: float
    ok: bool
    item: int


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def latency_stats(shots: list[Shot]) -> dict[str, Any]:
    lat = [(s.done - s.sent) * 1000 for s in shots if s.ok]
    return {
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "mean_ms": float(np.mean(lat)) if lat else None,
    }


async def _post(client: Any, url: str, body: bytes) -> bool:
    try:
        r = await client.post(url, content=body, headers={"content-type": "application/json"})
        return r.status_code == 200 and len(r.json()["rewards"]) == 1
    except Exception:  # a timeout, a reset connection: counted as an error
        return False


def _client(n: int) -> Any:
    import httpx

    return httpx.AsyncClient(
        timeout=60.0,
        limits=httpx.Limits(max_connections=max(n, 1024), max_keepalive_connections=max(n, 64)),
    )


async def closed_loop(
    url: str,
    bodies: list[bytes],
    tokens: list[int],
    clients: int,
    warmup_s: float,
    duration_s: float,
    counters: Any = None,
) -> dict:
    shots: list[Shot] = []
    nxt = iter(range(1 << 62))
    async with _client(clients) as client:
        t0 = time.perf_counter()
        start, end = t0 + warmup_s, t0 + warmup_s + duration_s
        before: dict[str, float] = {}

        async def one_client() -> None:
            while (now := time.perf_counter()) < end:
                i = next(nxt) % len(bodies)
                ok = await _post(client, f"{url}/v1/score", bodies[i])
                shots.append(Shot(now, time.perf_counter(), ok, i))

        async def snapshot() -> None:
            await asyncio.sleep(warmup_s)
            if counters:
                before.update(await asyncio.to_thread(counters))

        await asyncio.gather(snapshot(), *(one_client() for _ in range(clients)))
    after = counters() if counters else {}
    done = [s for s in shots if start <= s.done <= end]
    sent = [s for s in shots if s.sent >= start]
    ok = [s for s in done if s.ok]
    row = {
        "clients": clients,
        "requests": len(ok),
        "errors": len(done) - len(ok),
        "req_per_s": len(ok) / duration_s,
        "tokens_per_s": sum(tokens[s.item] for s in ok) / duration_s,
        **latency_stats(sent),
    }
    if before and after.get("batches", 0) > before.get("batches", 0):
        d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        row["mean_batch"] = d["items"] / d["batches"]
        row["padding_frac"] = d["padding"] / max(1.0, d["real"] + d["padding"])
        row["model_busy"] = d["busy"] / d["at"]  # of the time, the model was scoring
    return row


async def open_loop(
    url: str,
    bodies: list[bytes],
    tokens: list[int],
    rate: float,
    duration_s: float,
    seed: int,
    drain_s: float,
) -> dict:
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    shots: list[Shot] = []
    lags: list[float] = []
    async with _client(len(arrivals)) as client:
        t0 = time.perf_counter()

        async def one(k: int, at: float) -> None:
            lags.append(time.perf_counter() - at)
            ok = await _post(client, f"{url}/v1/score", bodies[k % len(bodies)])
            shots.append(Shot(at, time.perf_counter(), ok, k % len(bodies)))

        tasks = []
        for k, a in enumerate(arrivals):
            delay = t0 + a - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, t0 + a)))
        _, pending = await asyncio.wait(tasks, timeout=drain_s) if tasks else (None, set())
        for task in pending:
            task.cancel()
    ok = [s for s in shots if s.ok]
    span = (max(s.done for s in ok) - (t0 + arrivals[0])) if ok else float("nan")
    return {
        "offered_per_s": len(arrivals) / duration_s,
        "sent": len(arrivals),
        "answered": len(ok),
        "errors": len(shots) - len(ok),
        "unfinished": len(pending),
        "achieved_per_s": len(ok) / span if ok else 0.0,
        "tokens_per_s": sum(tokens[s.item] for s in ok) / span if ok else 0.0,
        "send_lag_p99_ms": pct([x * 1000 for x in lags], 99),
        **latency_stats(shots),
    }


def check_same_model(url: str, bodies: list[bytes], expected: list[float], n: int = 8) -> float:
    """Largest |reward - (a)'s reward| over the first ``n`` items, one request each."""
    import httpx

    diffs = []
    for i in range(min(n, len(bodies))):
        r = httpx.post(
            f"{url}/v1/score",
            content=bodies[i],
            timeout=60,
            headers={"content-type": "application/json"},
        )
        r.raise_for_status()
        diffs.append(abs(r.json()["rewards"][0] - expected[i]))
    return max(diffs)


def sweep(
    name: str,
    url: str,
    bodies: list[bytes],
    tokens: list[int],
    args: argparse.Namespace,
    counters: Any = None,
) -> list[dict]:
    rows = []
    for n in args.concurrency:
        row = asyncio.run(
            closed_loop(url, bodies, tokens, n, args.warmup_s, args.duration_s, counters)
        )
        rows.append(row)
        extra = f", mean batch {row['mean_batch']:.1f}" if "mean_batch" in row else ""
        print(
            f"  {name} {n:>3} clients: {row['req_per_s']:7.1f} req/s, p50 "
            f"{fmt(row['p50_ms'])} p95 {fmt(row['p95_ms'])} p99 {fmt(row['p99_ms'])} ms, "
            f"errors {row['errors']}{extra}",
            flush=True,
        )
    return rows


def open_rates(
    name: str,
    url: str,
    bodies: list[bytes],
    tokens: list[int],
    args: argparse.Namespace,
    rates: list[float],
) -> list[dict]:
    rows = []
    for rate in rates:
        row = asyncio.run(
            open_loop(url, bodies, tokens, rate, args.open_duration_s, args.seed, args.drain_s)
        )
        rows.append(row)
        print(
            f"  {name} open loop {row['offered_per_s']:.1f}/s offered: achieved "
            f"{row['achieved_per_s']:.1f}/s, p50 {fmt(row['p50_ms'])} p95 "
            f"{fmt(row['p95_ms'])} p99 {fmt(row['p99_ms'])} ms, errors {row['errors']}, "
            f"unfinished {row['unfinished']}",
            flush=True,
        )
    return rows
