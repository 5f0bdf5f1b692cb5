"""The reward service past saturation: does it shed load early, keep goodput, and keep small
requests fast beside a giant one? One service (what `ramo serve` runs), one run, measured
against its own saturated throughput in the same run.

1. Saturation: --clients closed-loop clients of one-item /v1/score requests for --duration-s,
   with the longest deadline (120 s) so nothing is shed: X = the requests answered 200 per
   second, the service's throughput at saturation (the model's busy fraction is printed).
2. Overload: Poisson arrivals at each of --loads times X (default 2x and 4x) for --duration-s,
   every request with ``X-Request-Timeout: --deadline-s``. Goodput = answers 200 within the
   deadline per second (from the scheduled arrival, so a backlog counts); shed = 503/429
   answers, with how fast they came back; p99 of the admitted (200) requests.
   Targets (issue 14): goodput >= 0.9 X; admitted p99 < deadline; shed answered in < 100 ms.
3. Giant + small: one /get_reward of --giant-items queries of --giant-chars characters (its
   deadline the service's maximum) while small one-item requests arrive at --small-load x X;
   the small ones' p50/p99 against the same small load alone, measured just before.

    nice -n 10 python benchmarks/serve_overload.py [--duration-s 10] [--clients 16]
        [--loads 2,4] [--deadline-s 5] [--giant-items 128] [--giant-chars 3800]
        [--small-load 0.3] [--max-length 512] [--threads 1] [--no-save]

Results: benchmarks/results/serve_overload.md and .json (not with --no-save).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_load import (
    RESULTS,
    _client,
    _git_rev,
    _machine,
    load_items,
    pct,
    publish,
    reward_service,
    service_counters,
)


@dataclass
class Answer:
    arrival: float  # scheduled (open loop) or sent (closed loop)
    done: float
    status: int  # 0: no answer (a timeout, a reset connection)
    kind: str  # the error type, or "" for a 200

    @property
    def seconds(self) -> float:
        return self.done - self.arrival


async def _send(client: Any, url: str, body: bytes, deadline_s: float) -> tuple[int, str]:
    headers = {"content-type": "application/json", "x-request-timeout": f"{deadline_s:g}"}
    try:
        r = await client.post(url, content=body, headers=headers)
    except Exception:  # what the client sees as no answer
        return 0, "no_answer"
    if r.status_code == 200:
        return 200, ""
    try:
        return r.status_code, str(r.json()["error"]["type"])
    except Exception:
        return r.status_code, "not_json"


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration_s: float,
                      deadline_s: float) -> list[Answer]:  # fmt: skip
    out: list[Answer] = []
    nxt = iter(range(1 << 62))
    async with _client(clients) as client:
        end = time.perf_counter() + duration_s

        async def one() -> None:
            while (t0 := time.perf_counter()) < end:
                body = bodies[next(nxt) % len(bodies)]
                status, kind = await _send(client, f"{url}/v1/score", body, deadline_s)
                out.append(Answer(t0, time.perf_counter(), status, kind))

        await asyncio.gather(*(one() for _ in range(clients)))
    return out


async def open_loop(url: str, path: str, bodies: list[bytes], rate: float, duration_s: float,
                    deadline_s: float, seed: int) -> list[Answer]:  # fmt: skip
    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < duration_s:
        arrivals.append(t)
        t += rng.expovariate(rate)
    out: list[Answer] = []
    async with _client(len(arrivals)) as client:
        t0 = time.perf_counter()

        async def one(k: int, at: float) -> None:
            status, kind = await _send(client, url + path, bodies[k % len(bodies)], deadline_s)
            out.append(Answer(at, time.perf_counter(), status, kind))

        tasks = []
        for k, a in enumerate(arrivals):
            if (delay := t0 + a - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, t0 + a)))
        await asyncio.gather(*tasks)
    return out


def summary(answers: list[Answer], duration_s: float, deadline_s: float) -> dict[str, Any]:
    ok = [a.seconds * 1000 for a in answers if a.status == 200]
    # Shed: refused up front (overloaded). Expired: admitted, then past the deadline.
    shed = [a.seconds * 1000 for a in answers if a.status in (429, 503) and a.kind == "overloaded"]
    expired = [a.seconds * 1000 for a in answers if a.kind == "deadline_exceeded"]
    kinds: dict[str, int] = {}
    for a in answers:
        if a.status != 200:
            kinds[f"{a.status} {a.kind}"] = kinds.get(f"{a.status} {a.kind}", 0) + 1
    in_time = sum(1 for a in answers if a.status == 200 and a.seconds <= deadline_s)
    return {
        "sent": len(answers),
        "ok": len(ok),
        "goodput_per_s": in_time / duration_s,
        "ok_p50_ms": pct(ok, 50),
        "ok_p99_ms": pct(ok, 99),
        "ok_max_ms": max(ok, default=None),
        "shed": len(shed),
        "shed_p50_ms": pct(shed, 50),
        "shed_p99_ms": pct(shed, 99),
        "expired": len(expired),
        "other": {k: v for k, v in kinds.items() if k not in ("503 overloaded", "429 overloaded")},
        "kinds": kinds,
    }


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def report(res: dict[str, Any]) -> str:
    a = res["args"]
    x = res["saturation"]["goodput_per_s"]
    lines = [
        f"# reward service past saturation, {res['date']}",
        "",
        f"command: `{res['command']}`",
        f"machine: {res['machine']}; 1-min load average {res['load'][0]:.2f} at the start,"
        f" {res['load'][1]:.2f} at the end (other processes share the cores)",
        f"git: {res['git']}",
        f"model: all-minilm-l6-v2 (new reward head), float32, max_length {a['max_length']},"
        f" 1 replica with {a['threads']} CPU; data: {res['data']}",
        f"deadline (X-Request-Timeout) {a['deadline_s']:g} s; serve.max_queued_tokens default;"
        f" {a['duration_s']:g} s per phase",
        "",
        f"Saturation ({a['clients']} closed-loop clients, one-item requests, nothing shed): **X"
        f" = {x:.1f} req/s**; p50 {fmt(res['saturation']['ok_p50_ms'])} ms, p99"
        f" {fmt(res['saturation']['ok_p99_ms'])} ms; model busy"
        f" {res['saturation']['model_busy']:.0%} of the time.",
        "",
        "| offered | offered req/s | goodput req/s | goodput / X | admitted p50 ms |"
        " admitted p99 ms | shed up front | shed p50 ms | shed p99 ms | other answers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in res["overload"]:
        s = row["summary"]
        lines.append(
            f"| {row['load']:g}x X | {row['rate']:.1f} | {s['goodput_per_s']:.1f} |"
            f" {s['goodput_per_s'] / x:.2f} | {fmt(s['ok_p50_ms'])} | {fmt(s['ok_p99_ms'])} |"
            f" {s['shed']} of {s['sent']} | {fmt(s['shed_p50_ms'])} | {fmt(s['shed_p99_ms'])} |"
            f" {s['other'] or '-'} |"
        )
    lines += [
        "",
        "Goodput: answers 200 within the deadline, per second. Admitted: answered 200. Shed up"
        " front: 503 overloaded. Other answers include 503 deadline_exceeded (admitted, then"
        " past the deadline: wasted work). Targets: goodput / X >= 0.90; admitted p99 <"
        " deadline; shed answered < 100 ms.",
    ]
    for row in res["overload"]:
        s = row["summary"]
        checks = [
            ("goodput >= 0.9 X", s["goodput_per_s"] >= 0.9 * x),
            ("admitted p99 < deadline", (s["ok_p99_ms"] or 0) < a["deadline_s"] * 1000),
            ("shed p99 < 100 ms", s["shed"] == 0 or (s["shed_p99_ms"] or 0) < 100),
        ]
        met = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks)
        lines.append(f"- {row['load']:g}x: {met}")
    g = res["giant"]
    alone, beside = g["small_alone"], g["small_beside"]
    ratio = (beside["ok_p99_ms"] or 0) / (alone["ok_p99_ms"] or 1)
    lines += [
        "",
        f"One giant request + small ones: a /get_reward of {a['giant_items']} queries of"
        f" {a['giant_chars']} characters ({g['giant_bytes'] / 1e3:.0f} KB) answered"
        f" {g['giant_status']} in {g['giant_s']:.1f} s, while one-item requests arrived at"
        f" {a['small_load']:g} X = {g['small_rate']:.1f}/s:",
        "",
        "| small requests | sent | 200 | p50 ms | p99 ms | max ms | other answers |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| alone | {alone['sent']} | {alone['ok']} | {fmt(alone['ok_p50_ms'])} |"
        f" {fmt(alone['ok_p99_ms'])} | {fmt(alone['ok_max_ms'])} | {alone['kinds'] or '-'} |",
        f"| beside the giant | {beside['sent']} | {beside['ok']} | {fmt(beside['ok_p50_ms'])} |"
        f" {fmt(beside['ok_p99_ms'])} | {fmt(beside['ok_max_ms'])} | {beside['kinds'] or '-'} |",
        "",
        f"small p99 beside the giant / alone: **{ratio:.2f}** (before issue 14 the issue's"
        " tester saw a one-item request wait 52 s beside such a request).",
    ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--loads", default="2,4", help="Offered loads, in multiples of X.")
    ap.add_argument("--deadline-s", type=float, default=5.0)
    ap.add_argument("--giant-items", type=int, default=128)
    ap.add_argument("--giant-chars", type=int, default=3800)
    ap.add_argument("--small-load", type=float, default=0.3)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=256, help="Distinct small requests.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    from ramo_stream.config import load_settings
    from ramo_stream.local_models import prepare, resolve

    settings = load_settings()
    prepare("all-minilm-l6-v2", settings.paths.models_dir)
    backbone = resolve("all-minilm-l6-v2", settings.paths.models_dir)
    for key in [k for k in os.environ if k.startswith("RAMO_")]:
        del os.environ[key]
    load_start = os.getloadavg()[0]
    items, data_desc = load_items(args.requests, args.seed)
    bodies = [json.dumps({"items": [{"prompt": p, "response": r}]}).encode() for p, r in items]
    filler = " ".join(p + " " + r for p, r in items)
    giant_queries = [filler[i * 97 : i * 97 + args.giant_chars] for i in range(args.giant_items)]
    giant = json.dumps({"query": giant_queries}).encode()
    # serve_load's service arguments; the defaults of `ramo serve` otherwise.
    svc = argparse.Namespace(
        max_batch_size=32, batch_wait_s=0.005, max_ongoing_requests=256, replicas=1,
        threads=args.threads, max_length=args.max_length, batch_tokens=None,
        pass_overhead=None, startup_timeout_s=180,
    )  # fmt: skip
    extra = {"serve.max_body_bytes": max(1 << 20, len(giant) + 1024),
             "serve.request_timeout_s": args.deadline_s}  # fmt: skip
    res: dict[str, Any] = {
        "command": " ".join(["python benchmarks/serve_overload.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine("cpu"),
        "git": _git_rev(),
        "args": vars(args),
        "data": data_desc,
    }
    d, dl = args.duration_s, args.deadline_s
    with tempfile.TemporaryDirectory(prefix="ramo-bench-overload-") as tmp:
        work = Path(tmp)
        publish(work / "registry", backbone, {}, "cpu")
        with reward_service(work / "registry", work / "cache", svc, extra) as url:
            asyncio.run(closed_loop(url, bodies, args.clients, 3.0, 120.0))  # warm-up
            before = service_counters(url)
            sat = asyncio.run(closed_loop(url, bodies, args.clients, d, 120.0))
            after = service_counters(url)
            res["saturation"] = summary(sat, d, 120.0)
            res["saturation"]["model_busy"] = (after.get("busy", 0) - before.get("busy", 0)) / (
                after["at"] - before["at"]
            )
            x = res["saturation"]["goodput_per_s"]
            print(f"saturation: X = {x:.1f} req/s", flush=True)
            res["overload"] = []
            for k, load in enumerate(float(v) for v in args.loads.split(",")):
                answers = asyncio.run(
                    open_loop(url, "/v1/score", bodies, load * x, d, dl, args.seed + k)
                )
                row = {"load": load, "rate": load * x, "summary": summary(answers, d, dl)}
                res["overload"].append(row)
                print(f"{load:g}x: {row['summary']}", flush=True)
                time.sleep(3.0)  # let the queue drain before the next phase
            small_rate = args.small_load * x
            alone = asyncio.run(open_loop(url, "/v1/score", bodies, small_rate, d, dl, 99))

            async def beside() -> tuple[tuple[int, str, float], list[Answer]]:
                async with _client(4) as client:
                    t0 = time.perf_counter()
                    big = asyncio.create_task(
                        _send(client, f"{url}/get_reward", giant, 120.0)  # the max deadline
                    )
                    await asyncio.sleep(0.5)  # the giant is queued first
                    small = await open_loop(url, "/v1/score", bodies, small_rate, d, dl, 99)
                    status, kind = await big
                    return (status, kind, time.perf_counter() - t0), small

            (g_status, g_kind, g_s), small = asyncio.run(beside())
            res["giant"] = {
                "giant_bytes": len(giant),
                "giant_status": f"{g_status} {g_kind}".strip(),
                "giant_s": g_s,
                "small_rate": small_rate,
                "small_alone": summary(alone, d, dl),
                "small_beside": summary(small, d, dl),
            }
    res["load"] = (load_start, os.getloadavg()[0])
    text = report(res)
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "serve_overload.md").write_text(text)
        (RESULTS / "serve_overload.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
