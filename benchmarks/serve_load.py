"""Reward serving under load: the Ray Serve reward service vs a one-request-at-a-time server
vs the model's own batched forward, same model, same inputs, one run, side by side.

Every request scores one (prompt, response) item, as an RLHF loop's per-sample reward calls
do; that is what makes batching across requests matter. Three systems score the same items
with the same published registry version (same weights, dtype, ``format_text`` input and
max_length), one after the other so they never share the CPU:

- (a) upper bound: ``rewards()`` in this process, no server; the whole request pool sorted by
      length and cut into batches of --max-batch-size, each cut again to --batch-tokens as the
      service cuts its batches (formatting and tokenising included in the time). Throughput
      only. Measured with batches of one too: batched / unbatched is what batching is worth
      on the machine, so about the most (c) can gain over (b).
- (b) baseline: a plain FastAPI/uvicorn server in the style of OpenRLHF's ``serve_rm``
      (a subprocess on 127.0.0.1, one worker; the forward runs inside the async handler, so
      requests are served strictly one at a time, one forward each; access log off). Same
      ``POST /v1/score`` contract, so the same client drives both.
- (c) this service: what ``ramo serve`` runs (``build_app`` on a local Ray, Serve HTTP on
      127.0.0.1) with its dynamic batching (``reward_batching.DynamicBatcher``).

Load: async httpx clients in this process. Closed loop: N clients, each sends its next
request when the previous one is answered; --warmup-s not counted, then --duration-s
measured (throughput = answers in the window / window; latency percentiles of requests sent
in it). Open loop: Poisson arrivals at fixed rates (by default 0.9x and 1.8x (b)'s best
closed-loop throughput), latency from the scheduled arrival (so a backlog counts), achieved
rate = answers / (last answer - first arrival). Every client starts at item 0 of the same
shuffled pool, so (b) and (c) see the same items in the same order at each point.

Compute is equal: (a) and (b) run torch on --threads threads; (c)'s model replica reserves
--threads Ray CPUs (Ray sets OMP_NUM_THREADS to that, so torch uses as many threads). The
rest of the machine runs the HTTP stacks and the load generator for (b) and (c) alike.

    python benchmarks/serve_load.py [--quick] [--backbone all-minilm-l6-v2]
        [--concurrency 1,2,4,8,16,32,64] [--duration-s 8] [--warmup-s 2]
        [--open-rates 0.9,1.8 | --rate R ...] [--max-batch-size 32] [--batch-wait-s 0.005]
        [--batch-tokens N] [--max-ongoing-requests 64] [--replicas 1] [--threads 1]
        [--max-length 512] [--requests 256]
        [--device cpu|cuda] [--config-scale smollm2-1.7b|hidden=2048,layers=24,...]
        [--peak-tflops 989] [--systems b,c] [--no-save]

On a GPU: ``--device cuda --backbone smollm2-135m-instruct --config-scale smollm2-1.7b``
builds a model of that shape with random weights (weights do not change throughput; see
also benchmarks/random_init.py), runs it in bf16, and reports tokens/s and the fraction of
the GPU's peak bf16 FLOP/s (--peak-tflops; 989 = H100 SXM dense), FLOPs = 2 x params x
real tokens. Without Ray (or FastAPI) installed, pass --systems b (or c).

Data: prompts and chosen responses of ../shared/data/hh_harmless_test.jsonl (without it,
generated text, said in the report). Results: benchmarks/results/serve_load.md, .json and
.png (not with --no-save; --out-prefix renames them, e.g. serve_load_gpu).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from serve_load_clients import check_same_model, open_rates, sweep
from serve_load_model import (
    SCALES,
    load_items,
    load_model,
    parse_scale,
    publish,
    tokenizer_of,
    upper_bound,
)
from serve_load_report import _git_rev, _machine, plot, ratios, rbr_report, report

RESULTS = Path(__file__).parent / "results"


# --- (b) the plain server (this file, run with --serve-baseline) --------------------------


def serve_baseline(args: argparse.Namespace) -> None:
    """OpenRLHF ``serve_rm`` style: FastAPI + uvicorn, one worker, the model called inside
    the async handler (so one request at a time), one forward per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from ramo_stream.registry.model import encode, format_text, rewards

    torch.set_num_threads(args.threads)
    model, tok, limit = load_model(args.model_dir, args.device)
    limit = min(limit, args.max_length)
    with torch.inference_mode():
        rewards(model, encode(tok, ["warm-up"], limit))
    app = FastAPI()

    async def score(request: Request) -> JSONResponse:
        data = await request.json()
        texts = [format_text(tok, it["prompt"], it["response"]) for it in data["items"]]
        batch = {k: v.to(args.device) for k, v in encode(tok, texts, limit).items()}
        with torch.inference_mode():  # blocks the event loop: one request at a time
            values = rewards(model, batch).float().tolist()
        return JSONResponse({"rewards": values, "model_version": args.version})

    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model_version": args.version})

    # This module's annotations are strings (PEP 563) that FastAPI cannot resolve to the
    # locally imported Request: give it the real types.
    score.__annotations__ = {"request": Request, "return": JSONResponse}
    health.__annotations__ = {"return": JSONResponse}
    app.post("/v1/score")(score)
    app.get("/health")(health)

    uvicorn.run(
        app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning"
    )


def wait_healthy(url: str, timeout_s: float, alive: Any = None) -> float:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if alive is not None and not alive():
            raise RuntimeError(f"the server behind {url} exited before it was healthy")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.5)
    raise RuntimeError(f"{url}/health not 200 after {timeout_s:.0f}s")


@contextlib.contextmanager
def baseline_server(folder: Path, version: int, args: argparse.Namespace, log: Path) -> Any:
    from ramo_stream.stream.broker import free_port

    port = free_port()
    cmd = [
        sys.executable,
        __file__,
        "--serve-baseline",
        "--model-dir",
        str(folder),
        "--port",
        str(port),
        "--version",
        str(version),
        "--threads",
        str(args.threads),
        "--max-length",
        str(args.max_length),
        "--device",
        args.device,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            ready = wait_healthy(url, args.startup_timeout_s, lambda: proc.poll() is None)
        except RuntimeError as e:
            raise RuntimeError(f"{e}; its log:\n{log.read_text()[-3000:]}") from e
        print(f"(b) plain server up on {url} in {ready:.1f}s (pid {proc.pid})", flush=True)
        yield url, ready
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this script started (pid == pgid), then SIGKILL."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


# --- (c) the service ----------------------------------------------------------------------


@contextlib.contextmanager
def reward_service(
    registry: Path, cache: Path, args: argparse.Namespace, extra: dict[str, Any] | None = None
) -> Any:
    """What `ramo serve` runs: a local Ray, Serve HTTP on 127.0.0.1, ``build_app``; ``extra``:
    more dotted settings (serve_overload.py sets deadlines)."""
    import ray
    from ray import serve

    from ramo_stream.serve.reward_app import RewardAppArgs, build_app
    from ramo_stream.stream.broker import free_port

    port = free_port()
    overrides = {
        "train.registry": str(registry),
        "paths.cache_dir": str(cache),
        "serve.port": port,
        "serve.max_batch_size": args.max_batch_size,
        "serve.batch_wait_timeout_s": args.batch_wait_s,
        "serve.max_ongoing_requests": args.max_ongoing_requests,
        "serve.replicas": args.replicas,
        "serve.replica_cpus": float(args.threads),
        "serve.max_length": args.max_length,
        "serve.batch_tokens": args.batch_tokens,
        "serve.pass_overhead_tokens": args.pass_overhead,
        **(extra or {}),
    }
    rbr_cpus = float((extra or {}).get("serve.rbr_cpus", 0.0))
    # logical Ray CPUs
    cpus = max(os.cpu_count() or 1, math.ceil(args.replicas * args.threads + 1 + rbr_cpus))
    t0 = time.monotonic()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        serve.start(
            http_options={"host": "127.0.0.1", "port": port},
            logging_config={"enable_access_log": False},
        )
        serve.run(build_app(RewardAppArgs(overrides=overrides)), name="reward", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, args.startup_timeout_s)
        print(f"(c) reward service up on {url} in {time.monotonic() - t0:.1f}s", flush=True)
        yield url
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        ray.shutdown()


def rbr_system(
    work: Path, items: list[Any], tokens: list[int], args: argparse.Namespace, cache: Path
) -> dict[str, Any]:
    """(r): the service of (c) with serve.rbr=default: every request also grades all
    propositions of its item in the RBR deployment (``--threads`` CPUs, like the model).
    The caller's cache holds the prepared grader and the fitted RBR weights."""
    bodies = [
        json.dumps({"items": [{"prompt": p, "response": r, "response_type": "hard_refuse"}],
                    "model_version": None}).encode()
        for p, r in items
    ]  # fmt: skip
    extra = {"serve.rbr": "default", "serve.rbr_cpus": float(args.threads),
             "paths.cache_dir": str(cache)}  # fmt: skip
    with reward_service(work / "registry", work / "cache", args, extra) as url:
        return {"closed": sweep("(r)", url, bodies, tokens, args)}


def service_counters(url: str) -> dict[str, float]:
    """Batch and token counters of the (single) model replica from GET /metrics."""
    import httpx

    want = {
        "ramo_reward_batch_size_sum": "items",
        "ramo_reward_batch_size_count": "batches",
        "ramo_reward_forward_passes_total": "forwards",
        'ramo_reward_tokens_total{kind="real"}': "real",
        'ramo_reward_tokens_total{kind="padding"}': "padding",
        "ramo_reward_model_busy_seconds_total": "busy",
    }
    out: dict[str, float] = {"at": time.perf_counter()}
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in want:
                out[want[name]] = float(value)
    return out


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--quick", action="store_true", help="Tiny run: 1,4,32 clients, 3 s each.")
    ap.add_argument(
        "--backbone",
        default="all-minilm-l6-v2",
        help="Local model name or Hugging Face folder (default all-minilm-l6-v2).",
    )
    ap.add_argument(
        "--config-scale",
        default="",
        help=f"Random weights, larger shape: a preset ({', '.join(SCALES)}) or "
        "key=int pairs (hidden, layers, heads, kv_heads, intermediate).",
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="Peak bf16 TFLOP/s of the GPU (989: H100 SXM dense).",
    )
    ap.add_argument(
        "--systems",
        default="b,c",
        help="Servers to run besides (a), which always runs: b,c (default), b, c; add r for"
        " (c) with the Rule-Based Reward on every request (serve.rbr=default, its own"
        " deployment grading the propositions; needs an RBR artifact for the configured"
        " grader: `ramo rbr fit`), closed loop only.",
    )
    ap.add_argument("--concurrency", type=ints, default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--duration-s", type=float, default=8.0, help="Measured s per point (8).")
    ap.add_argument("--warmup-s", type=float, default=2.0, help="Unmeasured s per point (2).")
    ap.add_argument(
        "--open-rates",
        type=floats,
        default=[0.9, 1.8],
        help="Open-loop rates as multiples of (b)'s best closed-loop req/s.",
    )
    ap.add_argument("--rate", type=floats, default=None, help="Open-loop rates in req/s.")
    ap.add_argument("--open-duration-s", type=float, default=12.0)
    ap.add_argument(
        "--drain-s",
        type=float,
        default=60.0,
        help="After the last arrival, wait this long for answers (60).",
    )
    ap.add_argument("--requests", type=int, default=256, help="Distinct requests in the pool.")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-wait-s", type=float, default=0.005)
    ap.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="serve.batch_tokens of (c), and the same cut in (a) (default: the service's"
        " default for --device: 16384 on a GPU, max(1024, --max-length) on a CPU).",
    )
    ap.add_argument(
        "--pass-overhead",
        type=int,
        default=None,
        help="serve.pass_overhead_tokens of (c), and the same cut in (a) (default: the"
        " service's default for --device).",
    )
    ap.add_argument("--max-ongoing-requests", type=int, default=64)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads / Ray CPUs (1).")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--startup-timeout-s", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-prefix", default="serve_load", help="Results file names.")
    ap.add_argument("--no-save", action="store_true")
    # internal: the baseline server (b) runs this file in a subprocess
    ap.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--version", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:  # smaller values for what was not given explicitly
        quick = {"concurrency": [1, 4, 32], "duration_s": 3.0, "warmup_s": 1.0,
                 "open_duration_s": 4.0, "requests": 128, "open_rates": [0.9]}  # fmt: skip
        for key, value in quick.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
    args.systems = set(args.systems.split(","))
    from ramo_stream.config import ServeSettings

    serve = ServeSettings(max_length=args.max_length)  # the service's defaults for --device
    if args.batch_tokens is None:
        args.batch_tokens = serve.forward_tokens(args.device)
    if args.pass_overhead is None:
        args.pass_overhead = serve.pass_overhead(args.device)
    return args


def main() -> int:
    args = parse_args()
    if args.serve_baseline:
        serve_baseline(args)
        return 0
    import torch

    from ramo_stream.config import load_settings
    from ramo_stream.local_models import KNOWN, prepare, resolve
    from ramo_stream.registry.model import format_text

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    settings = load_settings()
    if args.backbone in KNOWN:
        prepare(args.backbone, settings.paths.models_dir)
    backbone = resolve(args.backbone, settings.paths.models_dir)
    # The servers read settings only from what is passed here, not the caller's RAMO_* vars.
    for key in [k for k in os.environ if k.startswith("RAMO_")]:
        del os.environ[key]
    load_start = os.getloadavg()[0]
    items, data_desc = load_items(args.requests, args.seed)
    print(f"data: {data_desc}", flush=True)
    res: dict[str, Any] = {
        "command": " ".join(["python benchmarks/serve_load.py", *sys.argv[1:]]),
        "machine": _machine(args.device),
        "git": _git_rev(),
        "load_start": load_start,
        "same_model_max_abs_diff": {},
    }

    with tempfile.TemporaryDirectory(prefix="ramo-bench-serve-") as tmp:
        work = Path(tmp)
        scale = parse_scale(args.config_scale) if args.config_scale else {}
        folder, version = publish(work / "registry", backbone, scale, args.device)
        tok, limit = tokenizer_of(folder)
        limit = min(limit, args.max_length)
        texts = [format_text(tok, p, r) for p, r in items]
        tokens = [len(x) for x in tok(texts, truncation=True, max_length=limit)["input_ids"]]
        bodies = [
            json.dumps({"items": [{"prompt": p, "response": r}], "model_version": None}).encode()
            for p, r in items
        ]
        res["settings"] = {
            "model": f"{args.backbone}"
            + (
                f" scaled to {args.config_scale}, random weights"
                if scale
                else ", published with a new reward head"
            ),
            "dtype": "bfloat16" if args.device == "cuda" else "float32",
            "max_length": limit,
            "data": data_desc,
            "pool": len(items),
            "mean_tokens": float(np.mean(tokens)),
            "median_tokens": float(np.median(tokens)),
            "max_tokens": max(tokens),
            "params": 0,
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_s,
            "max_ongoing_requests": args.max_ongoing_requests,
            "replicas": args.replicas,
            "batch_tokens": args.batch_tokens,
            "pass_overhead_tokens": args.pass_overhead,
            "threads": args.threads,
            "concurrency": args.concurrency,
        }
        print(
            f"model {res['settings']['model']}, {len(items)} requests, mean "
            f"{np.mean(tokens):.0f} tokens, max_length {limit}, device {args.device}",
            flush=True,
        )

        a, a1 = upper_bound(folder, items, tokens, args)
        res["a1"] = a1
        gc.collect()  # (a)'s model is gone: free its memory before the servers load theirs
        if args.device == "cuda":
            torch.cuda.empty_cache()
        res["settings"]["params"] = a.pop("params")
        expected = a.pop("scores")
        res["a"] = a
        print(
            f"(a) batched forward, no server: {a['items_per_s']:.1f} items/s, "
            f"{a['tokens_per_s']:.0f} tokens/s; with batches of one: {a1['items_per_s']:.1f}"
            " items/s",
            flush=True,
        )

        # Open-loop rates: multiples of (b)'s best closed-loop throughput (of (a)'s without b).
        rates = args.rate or [m * a["items_per_s"] for m in args.open_rates]
        if "b" in args.systems:
            with baseline_server(folder, version, args, work / "baseline.log") as (url, ready):
                res["b_startup_s"] = ready
                res["same_model_max_abs_diff"]["(b)"] = check_same_model(url, bodies, expected)
                closed = sweep("(b)", url, bodies, tokens, args)
                best = max(r["req_per_s"] for r in closed)
                rates = args.rate or [m * best for m in args.open_rates]
                res["b"] = {
                    "closed": closed,
                    "open": open_rates("(b)", url, bodies, tokens, args, rates),
                }
        if "c" in args.systems:
            t0 = time.monotonic()
            with reward_service(work / "registry", work / "cache", args) as url:
                res["c_startup_s"] = time.monotonic() - t0
                res["same_model_max_abs_diff"]["(c)"] = check_same_model(url, bodies, expected)
                closed = sweep("(c)", url, bodies, tokens, args, lambda: service_counters(url))
                res["c"] = {
                    "closed": closed,
                    "open": open_rates("(c)", url, bodies, tokens, args, rates),
                }
        if "r" in args.systems:
            res["r"] = rbr_system(work, items, tokens, args, settings.paths.cache_dir)
        if args.systems:  # (a) again: the machine's speed drifts over a run this long
            a_end, _ = upper_bound(folder, items, tokens, args, single=False)
            res["a_end"] = {k: v for k, v in a_end.items() if k not in ("scores", "params")}
            print(f"(a) again after the servers: {a_end['items_per_s']:.1f} items/s", flush=True)
    res["load_end"] = os.getloadavg()[0]
    res["ratios"] = ratios(res)
    text = report(res, args) + rbr_report(res)
    print("\n" + text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out_prefix}.md").write_text(text + "\n")
        data = {
            **res,
            "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
        }
        (RESULTS / f"{args.out_prefix}.json").write_text(json.dumps(data, indent=1, default=str))
        png = plot(res, RESULTS / f"{args.out_prefix}.png", args)
        print(f"\nwritten: {RESULTS / args.out_prefix}.md, .json{', .png' if png else ''}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanups (finally)
    sys.exit(main())
