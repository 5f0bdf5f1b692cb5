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
import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"
TARGET_VS_A, TARGET_VS_B, RATIO_AT = 0.7, 2.0, 32
SCALES = {  # --config-scale presets: config fields of a larger model of the same family
    "smollm2-360m": "hidden=960,layers=32,heads=15,kv_heads=5,intermediate=2560",
    "smollm2-1.7b": "hidden=2048,layers=24,heads=32,kv_heads=32,intermediate=8192",
    "bert-base": "hidden=768,layers=12,heads=12,intermediate=3072",
    "bert-large": "hidden=1024,layers=24,heads=16,intermediate=4096",
}
CONFIG_KEYS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "intermediate": "intermediate_size",
}


# --- inputs and the model -----------------------------------------------------------------


def load_items(n: int, seed: int) -> tuple[list[tuple[str, str]], str]:
    """``n`` (prompt, response) pairs, shuffled, and where they came from."""
    rng = random.Random(seed)
    if HH.is_file():
        rows = [json.loads(line) for line in HH.read_text().splitlines() if line.strip()]
        items = [(r["prompt"], r["chosen"]) for r in rows if r.get("prompt") and r.get("chosen")]
        rng.shuffle(items)
        return items[:n], f"{HH.name} (prompt + chosen response, shuffled, {min(n, len(items))})"
    words = ["the", "a", "model", "reward", "safe", "request", "answer", "user", "help"]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    items = [
        (f"\n\nHuman: {text(rng.randint(5, 60))}\n\nAssistant:", text(rng.randint(5, 200)))
        for _ in range(n)
    ]
    return items, f"GENERATED text ({HH} is absent): {n} random-word pairs, 10-260 words"


def parse_scale(spec: str) -> dict[str, int]:
    spec = SCALES.get(spec, spec)
    out = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in CONFIG_KEYS or not value.isdigit():
            raise SystemExit(
                f"--config-scale: bad entry {part!r}; use a preset "
                f"({', '.join(SCALES)}) or key=int with keys {', '.join(CONFIG_KEYS)}"
            )
        out[CONFIG_KEYS[key]] = int(value)
    return out


def publish(root: Path, backbone: str, scale: dict[str, int], device: str) -> tuple[Path, int]:
    """Publish the reward model to a fresh registry (as `ramo models publish` does); with
    ``scale``, a model of that shape with random weights. Returns (version folder, version)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.registry.store import Registry

    torch.manual_seed(0)
    if scale:
        tok = AutoTokenizer.from_pretrained(backbone)
        tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token
        config = AutoConfig.from_pretrained(backbone, num_labels=1)
        for key, value in scale.items():
            setattr(config, key, value)
        config.pad_token_id = tok.pad_token_id
        with torch.device(device):  # random init is slow on a CPU for a large model
            model = AutoModelForSequenceClassification.from_config(config)
        if device == "cuda":
            model = model.to(torch.bfloat16)
    else:
        model, tok = load_reward_model(backbone)

    def write(stage: Path) -> None:
        model.save_pretrained(stage)
        tok.save_pretrained(stage)

    registry = Registry(str(root), keep=2)
    m = registry.publish(
        write, steps=0, samples_seen=0, offsets={}, base_model=f"{backbone} {scale or ''}".strip()
    )
    return registry.path(m.version), m.version


def load_model(folder: Path, device: str) -> tuple[Any, Any, int]:
    """(model, tokenizer, max tokens it takes): the service's dtype rule (bf16 on GPU)."""
    import torch

    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.serve.reward_batching import model_max_length

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = load_reward_model(folder, dtype=dtype)
    model = model.to(device).eval()
    return model, tok, model_max_length(model, tok)


def tokenizer_of(folder: Path) -> tuple[Any, int]:
    """The tokenizer and the token limit, without loading the weights."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    from ramo_stream.serve.reward_batching import model_max_length

    tok = AutoTokenizer.from_pretrained(folder)
    return tok, model_max_length(SimpleNamespace(config=AutoConfig.from_pretrained(folder)), tok)


# --- (a) upper bound ----------------------------------------------------------------------


def upper_bound(
    folder: Path,
    items: list[tuple[str, str]],
    lengths: list[int],
    args: argparse.Namespace,
    single: bool = True,
) -> tuple[dict, dict | None]:
    """(a): items/s of length-sorted forwards in batches of --max-batch-size (each cut by
    --batch-tokens and --pass-overhead as the service cuts its batches), whole passes over
    the pool; with ``single``, the same with batches of one (what batching can gain on this
    machine at most) and the measured cost of a forward pass besides its tokens.
    ``lengths``: the items' token counts, as main computed them for the report."""
    import torch

    from ramo_stream.registry.model import encode, format_text, rewards
    from ramo_stream.serve.reward_batching import BatchItem, LoadedModel, score_items

    model, tok, model_limit = load_model(folder, args.device)
    limit = min(model_limit, args.max_length)
    loaded = LoadedModel(0, model, tok, args.device, model_limit)
    order = sorted(range(len(items)), key=lengths.__getitem__)  # the pool, sorted once

    def one_pass(bs: int) -> tuple[list[float], int]:
        """Chunks of ``bs`` length-sorted items, each scored by the service's own
        ``score_items`` (format, tokenise, cut into passes, forward)."""
        out = [0.0] * len(items)
        for i in range(0, len(order), bs):
            chunk = order[i : i + bs]
            batch = [BatchItem(loaded, *items[j]) for j in chunk]
            values = score_items(batch, limit, args.batch_tokens, None, args.pass_overhead)
            for j, v in zip(chunk, values, strict=True):  # .tolist() inside synced a GPU
                out[j] = v
        return out, sum(lengths)

    def timed(bs: int) -> dict:
        with torch.inference_mode():  # warm-up: lazy init, CUDA kernels of this shape
            rewards(model, encode(tok, [format_text(tok, *items[0])] * bs, limit))
        passes, tokens, t0 = 0, 0, time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < args.duration_s:
            scores, n_tok = one_pass(bs)
            passes, tokens = passes + 1, tokens + n_tok
        elapsed = time.perf_counter() - t0
        return {"batch_size": bs, "items_per_s": passes * len(items) / elapsed,
                "tokens_per_s": tokens / elapsed, "passes": passes, "seconds": elapsed,
                "scores": scores}  # fmt: skip

    batched = timed(args.max_batch_size)
    batched["params"] = sum(p.numel() for p in model.parameters())
    if not single:
        return batched, None
    one = timed(1)
    one.pop("scores")
    batched["pass_overhead"] = pass_overhead(model, len(tok), args.device)
    return batched, one


def pass_overhead(model: Any, vocab: int, device: str, long: int = 256) -> dict[str, float]:
    """What one forward pass costs besides its tokens: from the fastest of 5 passes of one
    row at 16 and at ``long`` tokens, cost = overhead + per-token x tokens."""
    import torch

    def fastest(width: int) -> float:
        ids = torch.randint(100, vocab, (1, width), device=device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        best = float("inf")
        with torch.inference_mode():
            for _ in range(6):  # the first is a warm-up for this shape
                t0 = time.perf_counter()
                model(**batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        return best

    short_s, long_s = fastest(16), fastest(long)
    per_token = max(1e-12, (long_s - short_s) / (long - 16))
    return {"seconds": short_s - 16 * per_token, "tokens": short_s / per_token - 16}


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
    cpus = max(os.cpu_count() or 1, args.replicas * args.threads + 1)  # logical Ray CPUs
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


# --- report -------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _git_rev() -> str:
    here = Path(__file__).parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=here,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=here, check=True
        ).stdout.strip()
        return rev + (" (working tree with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine(device: str) -> str:
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = ""
    if device == "cuda":
        import torch

        gpu = f"; GPU {torch.cuda.get_device_name()}"
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores{gpu}"


def at(side: dict | None, clients: int) -> dict | None:
    return next((r for r in side["closed"] if r["clients"] == clients), None) if side else None


def upper(res: dict) -> float | None:
    """(a)'s items/s: the mean of its runs before and after the servers."""
    runs = [res[k]["items_per_s"] for k in ("a", "a_end") if res.get(k)]
    return sum(runs) / len(runs) if runs else None


def ratios(res: dict) -> dict[str, float | None]:
    a, b, c = upper(res), at(res.get("b"), RATIO_AT), at(res.get("c"), RATIO_AT)
    return {
        "c_over_a": c["req_per_s"] / a if a and c else None,
        "c_over_b": c["req_per_s"] / b["req_per_s"] if b and c and b["req_per_s"] else None,
        "a_over_b": a / b["req_per_s"] if a and b and b["req_per_s"] else None,
    }


def mfu(tokens_per_s: float, params: int, peak_tflops: float) -> float:
    return 2 * params * tokens_per_s / (peak_tflops * 1e12)


def report(res: dict, args: argparse.Namespace) -> str:
    a, a1, b, c = res.get("a"), res.get("a1"), res.get("b"), res.get("c")
    a_end, a_ips = res.get("a_end"), upper(res)
    r = ratios(res)
    gpu = args.device == "cuda"
    s = res["settings"]
    lines = [
        f"# reward serving under load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `{res['command']}`",
        f"machine: {res['machine']}; python {platform.python_version()}; 1-min load average "
        f"{fmt(res['load_start'], '.2f')} at the start, {fmt(res['load_end'], '.2f')} at the end"
        " (other processes share the cores)",
        f"git: {res['git']}",
        f"model: {s['model']}; {s['params'] / 1e6:.1f}M parameters, {s['dtype']}, max_length "
        f"{s['max_length']}, torch threads {args.threads} for (a) and (b), Ray CPUs "
        f"{args.threads} per replica for (c)",
        f"data: {s['data']}; {s['pool']} requests of one item, mean {s['mean_tokens']:.0f} "
        f"tokens (median {s['median_tokens']:.0f}, max {s['max_tokens']})",
        f"service (c): max_batch_size {args.max_batch_size}, batch_wait_timeout_s "
        f"{args.batch_wait_s:g}, max_ongoing_requests {args.max_ongoing_requests}, replicas "
        f"{args.replicas}, batch_tokens {args.batch_tokens}, pass_overhead_tokens "
        f"{args.pass_overhead}; (a): the whole pool sorted by length, in batches of "
        f"{args.max_batch_size} cut as (c) cuts them",
        f"closed loop: {args.warmup_s:g} s warm-up + {args.duration_s:g} s measured per point;"
        f" open loop: {args.open_duration_s:g} s of Poisson arrivals per rate",
        "",
    ]
    if a:
        tok = f", {a['tokens_per_s']:.0f} tokens/s"
        peak = (
            f", {mfu(a['tokens_per_s'], s['params'], args.peak_tflops):.1%} of peak" if gpu else ""
        )
        lines += [
            f"(a) upper bound, batched forward, no server: **{a['items_per_s']:.1f} "
            f"items/s**{tok}{peak} ({a['passes']} pass(es) over the pool, {a['seconds']:.0f} s)",
        ]
        if a_end:
            lines.append(
                f"(a) again after the servers: {a_end['items_per_s']:.1f} items/s; the ratios"
                f" below use the mean, {a_ips:.1f}, as the machine's speed drifts"
            )
        over = a.get("pass_overhead")
        lines += [
            f"(a) with batches of one: {a1['items_per_s']:.1f} items/s; batched / unbatched ="
            f" {a['items_per_s'] / a1['items_per_s']:.2f}: what batching itself is worth on this"
            " machine and model, about the most (c) can gain over (b) at any load.",
            f"Measured cost of a forward pass besides its tokens: {over['seconds'] * 1000:.1f} ms,"
            f" {over['tokens']:.0f} tokens' worth (the cut used {args.pass_overhead})."
            if over
            else "",
            "",
        ]
    head = "| clients |"
    sep = "|---:|"
    for name, side in (("(b)", b), ("(c)", c)):
        if side:
            head += f" {name} req/s | {name} p50 ms | {name} p95 ms | {name} p99 ms |"
            sep += "---:|---:|---:|---:|"
    if c:
        head += " (c) mean batch | (c) padding | (c) model busy | (c)/(b) | (c)/(a) |"
        sep += "---:|---:|---:|---:|---:|"
    lines += [
        "Closed loop (each client sends its next request when the last is answered):",
        "",
        head,
        sep,
    ]
    for n in args.concurrency:
        cells = [str(n)]
        for side in (b, c):
            row = at(side, n)
            if row:
                err = f" ({row['errors']} errors)" if row["errors"] else ""
                cells += [
                    f"{row['req_per_s']:.1f}{err}",
                    fmt(row["p50_ms"]),
                    fmt(row["p95_ms"]),
                    fmt(row["p99_ms"]),
                ]
        if c:
            rb, rc = at(b, n), at(c, n)
            cells += [
                fmt(rc.get("mean_batch")) if rc else "-",
                fmt(rc.get("padding_frac"), ".0%") if rc else "-",
                fmt(rc.get("model_busy"), ".0%") if rc else "-",
                fmt(rc["req_per_s"] / rb["req_per_s"], ".2f") if rb and rc else "-",
                fmt(rc["req_per_s"] / a_ips, ".2f") if a_ips and rc else "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if r["c_over_a"] is not None or r["c_over_b"] is not None:

        def verdict(x: float | None, target: float) -> str:
            return (
                "-"
                if x is None
                else f"**{x:.2f}** (target >= {target:g}: {'met' if x >= target else 'NOT met'})"
            )

        lines += [
            f"At {RATIO_AT} clients: (c)/(a) {verdict(r['c_over_a'], TARGET_VS_A)}; "
            f"(c)/(b) {verdict(r['c_over_b'], TARGET_VS_B)}",
            "",
        ]
    if gpu:
        lines += [
            "Tokens/s and fraction of peak bf16 FLOP/s (2 x params x real tokens; "
            f"peak {args.peak_tflops:g} TFLOP/s):",
            "",
            "| system | tokens/s | of peak |",
            "|---|---:|---:|",
        ]
        rows = [("(a) batched forward", a)] if a else []
        rows += [
            (f"{k} at {RATIO_AT} clients", at(res.get(k[1]), RATIO_AT)) for k in ("(b)", "(c)")
        ]
        for name, row in rows:
            if row:
                lines.append(
                    f"| {name} | {row['tokens_per_s']:.0f} | "
                    f"{mfu(row['tokens_per_s'], s['params'], args.peak_tflops):.2%} |"
                )
        lines.append("")
    opens = [(name, row) for name, side in (("(b)", b), ("(c)", c)) if side for row in side["open"]]
    if opens:
        lines += [
            "Open loop (Poisson arrivals; latency from the scheduled arrival):",
            "",
            "| system | offered/s | achieved/s | p50 ms | p95 ms | p99 ms | errors | unfinished |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, row in sorted(opens, key=lambda x: (x[1]["offered_per_s"], x[0])):
            lines.append(
                f"| {name} | {row['offered_per_s']:.1f} | {row['achieved_per_s']:.1f} "
                f"| {fmt(row['p50_ms'])} | {fmt(row['p95_ms'])} | {fmt(row['p99_ms'])} "
                f"| {row['errors']} | {row['unfinished']} |"
            )
        lines.append("")
    checks = ", ".join(f"{k} {v:.2g}" for k, v in res.get("same_model_max_abs_diff", {}).items())
    ups = [f"{k} {res[f'{k[1]}_startup_s']:.1f} s" for k in ("(b)", "(c)") if res.get(k[1])]
    lines.append(
        f"Same model check: largest |reward - (a)'s reward| over 8 items, one request each: "
        f"{checks or '-'}. Start-up, not measured: {', '.join(ups) or '-'}."
    )
    return "\n".join(lines)


def plot(res: dict, path: Path, args: argparse.Namespace) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (
        ("b", "(b) one request at a time", "o-"),
        ("c", "(c) ramo reward service", "s-"),
    ):
        side = res.get(key)
        if side:
            xs = [r["clients"] for r in side["closed"]]
            ax1.plot(xs, [r["req_per_s"] for r in side["closed"]], style, label=label)
            ax2.plot(xs, [r["p95_ms"] for r in side["closed"]], style, label=label)
    if res.get("a"):
        ax1.axhline(upper(res), ls="--", color="gray", label="(a) batched forward, no server")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.concurrency, [str(n) for n in args.concurrency])
        ax.set_xlabel("concurrent clients (closed loop)")
        ax.grid(alpha=0.3)
    ax1.set_ylabel("throughput (requests/s, 1 item each)")
    ax2.set_ylabel("p95 latency (ms)")
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.suptitle(f"{res['settings']['model']} on {args.device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
        help="Servers to run besides (a), which always runs: b,c (default), b, c.",
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
        if args.systems:  # (a) again: the machine's speed drifts over a run this long
            a_end, _ = upper_bound(folder, items, tokens, args, single=False)
            res["a_end"] = {k: v for k, v in a_end.items() if k not in ("scores", "params")}
            print(f"(a) again after the servers: {a_end['items_per_s']:.1f} items/s", flush=True)
    res["load_end"] = os.getloadavg()[0]
    res["ratios"] = ratios(res)
    text = report(res, args)
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
