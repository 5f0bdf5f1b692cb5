"""serve_load.py's report: the markdown table, the ratios and the plot of one run."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path

TARGET_VS_A, TARGET_VS_B, RATIO_AT = 0.7, 2.0, 32


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


def rbr_report(res: dict) -> str:
    """(r) against (c), same run, same clients: what adding the Rule-Based Reward costs."""
    if "r" not in res or "c" not in res:
        return ""
    c = {row["clients"]: row for row in res["c"]["closed"]}
    lines = ["", "## Scoring with the Rule-Based Reward: (r) vs (c), same run", "",
             "| clients | (c) req/s | (r) req/s | (r)/(c) | (r) p50 ms | (r) p95 ms | (r) errors |",
             "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in res["r"]["closed"]:
        base = c.get(row["clients"])
        ratio = row["req_per_s"] / base["req_per_s"] if base and base["req_per_s"] else None
        lines.append(
            f"| {row['clients']} | {fmt(base['req_per_s'] if base else None)} |"
            f" {fmt(row['req_per_s'])} | {fmt(ratio, '.2f')} | {fmt(row['p50_ms'], '.0f')} |"
            f" {fmt(row['p95_ms'], '.0f')} | {row['errors']} |"
        )
    lines += ["", "(r): serve.rbr=default, every item typed hard_refuse; its RBR deployment"
              " (the configured grader, one replica, --threads CPUs) grades every proposition of"
              " the item while the model scores it."]  # fmt: skip
    return "\n".join(lines)
