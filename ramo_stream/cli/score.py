"""`ramo score`: rewards from the reward service for a few responses, or for a JSONL file.

A file holds one JSON object per line: ``{"prompt", "response"}`` (each scored), or a
RewardBench row ``{"prompt", "chosen", "rejected", "subset"?}`` (both sides scored; the
summary gives the accuracy, the share of rows whose chosen response gets the strictly higher
reward, overall and per subset). A prompt is a string or a list of chat messages. Lines that
do not parse are counted and reported, not sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.eval.score_rows import Row, read_rows

_FALLBACK_URL = "http://127.0.0.1:8000"
_SHOWN_REJECTIONS = 5


def default_url(settings: Settings) -> str:
    """The service's URL from the ``serve`` settings (host, port) when they exist; a wildcard
    bind address is reached on loopback."""
    serve = getattr(settings, "serve", None)
    if serve is None:
        return _FALLBACK_URL
    host = str(getattr(serve, "host", "127.0.0.1") or "127.0.0.1")
    port = int(getattr(serve, "port", 8000))
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


async def _score_all(
    client: Any, items: list[tuple[Any, str]], step: int, on_done: Any, model_version: int | None
) -> tuple[list[float], list[int]]:
    """Score in slices of ``step`` items (each sent as concurrent requests) for the progress."""
    rewards: list[float] = []
    versions: list[int] = []
    for start in range(0, len(items), step):
        chunk = items[start : start + step]
        result = await client.score(chunk, model_version=model_version)
        rewards.extend(result.rewards)
        versions.extend(result.model_versions)
        on_done(len(chunk))
    return rewards, versions


def _versions_text(versions: list[int]) -> str:
    seen = sorted(set(versions))
    if len(seen) == 1:
        return f"model_version {seen[0]}"
    counts = Counter(versions)
    return "model_versions " + ", ".join(f"{v} ({counts[v]} items)" for v in seen)


def _score_file(args: argparse.Namespace, url: str, token: str | None) -> int:
    from tqdm import tqdm

    from ramo_stream.client import AsyncRewardClient

    rows, rejected = read_rows(args.file, args.limit)
    items = [(row.prompt, resp) for row in rows for resp in row.responses]
    step = args.batch_size * 8

    async def run() -> tuple[list[float], list[int]]:
        async with AsyncRewardClient(
            url, token, batch_size=args.batch_size, timeout_s=args.timeout
        ) as client:
            with tqdm(
                total=len(items), desc=f"score {args.file.name}", unit="item", file=sys.stderr
            ) as bar:
                return await _score_all(client, items, step, bar.update, args.model_version)

    rewards, versions = asyncio.run(run()) if items else ([], [])
    records = row_records(rows, rewards, versions)
    if args.output:
        with args.output.open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
    by = _versions_text(versions) if versions else "no model (nothing to score)"
    print(f"scored {len(rows)} rows ({len(items)} items) from {args.file} with {by}")
    for line in summary(records):
        print(line)
    if args.output:
        print(f"per-row rewards: {args.output}")
    if rejected:
        print(f"rejected {len(rejected)} lines:")
        for reason in rejected[:_SHOWN_REJECTIONS]:
            print(f"  {reason}")
    return 0


def row_records(rows: list[Row], rewards: list[float], versions: list[int]) -> list[dict[str, Any]]:
    """Per row, from the flat rewards of its items: its reward (plain rows), or both rewards and
    whether the chosen one is strictly higher (RewardBench rows); the version that scored it."""
    records: list[dict[str, Any]] = []
    i = 0
    for row in rows:
        k = len(row.responses)
        r, v = rewards[i : i + k], max(versions[i : i + k])
        i += k
        if row.is_pair:
            records.append(
                {
                    "line": row.line,
                    "subset": row.subset,
                    "chosen_reward": r[0],
                    "rejected_reward": r[1],
                    "correct": r[0] > r[1],
                    "model_version": v,
                }
            )
        else:
            records.append({"line": row.line, "reward": r[0], "model_version": v})
    return records


def summary(records: list[dict[str, Any]]) -> list[str]:
    """Mean/min/max of the plain rows' rewards; accuracy of the RewardBench rows (by subset)."""
    lines = []
    plain = [r["reward"] for r in records if "reward" in r]
    if plain:
        lines.append(
            f"rewards of {len(plain)} responses: mean {sum(plain) / len(plain):.4f},"
            f" min {min(plain):.4f}, max {max(plain):.4f}"
        )
    pairs = [r for r in records if "correct" in r]
    if pairs:
        hits = sum(r["correct"] for r in pairs)
        lines.append(
            f"accuracy (chosen reward > rejected reward): {hits}/{len(pairs)} ="
            f" {hits / len(pairs):.3f}"
        )
        by_subset: defaultdict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in pairs:
            tally = by_subset[r["subset"] or "(no subset)"]
            tally[0] += int(r["correct"])
            tally[1] += 1
        if len(by_subset) > 1:
            for subset, (n_hits, n) in sorted(by_subset.items()):
                lines.append(f"  {subset:32s} {n_hits}/{n} = {n_hits / n:.3f}")
    return lines


def _score_responses(args: argparse.Namespace, url: str, token: str | None) -> int:
    from ramo_stream.client import RewardClient

    with RewardClient(url, token, batch_size=args.batch_size, timeout_s=args.timeout) as client:
        result = client.score(args.prompt, args.response, model_version=args.model_version)
    for reward, response in zip(result.rewards, args.response, strict=True):
        shown = response if len(response) <= 60 else response[:57] + "..."
        print(f"{reward:+.6f}\t{shown!r}")
    print(_versions_text(result.model_versions))
    return 0


def cmd_score(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.client import RewardServiceError

    if (args.file is None) == (args.prompt is None):
        print(
            "give either --prompt P --response R [--response R2 ...], or --file FILE",
            file=sys.stderr,
        )
        return 2
    if args.prompt is not None and not args.response:
        print("--prompt needs at least one --response", file=sys.stderr)
        return 2
    if args.file is not None and not args.file.is_file():
        print(f"no such file: {args.file}", file=sys.stderr)
        return 2
    url = args.url or default_url(settings)
    serve = getattr(settings, "serve", None)
    token = args.token or getattr(serve, "api_token", None)
    try:
        if args.file is not None:
            return _score_file(args, url, token)
        return _score_responses(args, url, token)
    except (RewardServiceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "score",
        parents=[parent],
        help="Score responses with the reward service "
        "(`ramo serve`): --prompt/--response, or a JSONL --file of prompt/response "
        "or RewardBench prompt/chosen/rejected rows (prints the accuracy).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", help="The prompt (text).")
    p.add_argument(
        "--response", action="append", default=[], help="A response to score (repeat for several)."
    )
    p.add_argument("--file", type=Path, help="JSONL file of rows to score.")
    p.add_argument("--output", type=Path, help="With --file: write per-row rewards as JSONL.")
    p.add_argument("--limit", type=int, help="With --file: score at most this many lines.")
    p.add_argument(
        "--url",
        help="The service's base URL (default: from the serve settings' "
        f"host and port when present, else {_FALLBACK_URL}).",
    )
    p.add_argument(
        "--token",
        help="Bearer token of the service (default: the serve.api_token "
        "setting when there is one, which also reads RAMO_SERVE__API_TOKEN: prefer "
        "that variable to this flag on shared machines).",
    )
    p.add_argument(
        "--model-version", type=int, help="Pin a loaded model version (default: the current one)."
    )
    p.add_argument("--batch-size", type=int, default=64, help="Items per request (default 64).")
    p.add_argument("--timeout", type=float, default=30.0, help="Seconds per request (default 30).")
    p.set_defaults(fn=cmd_score)
