"""`ramo eval --data FILE.jsonl`: RewardBench-style accuracy of reward-model versions.

Each line of FILE is ``{"prompt", "chosen", "rejected", "subset", "id"?}``. A row is correct
when the chosen response gets the strictly higher reward (a tie counts as wrong). Printed:
accuracy per subset; per section (RewardBench's chat, chat-hard, safety and reasoning, from
its published subset mapping; a subset RewardBench does not know, such as
anthropic_harmless, is a section of its own named after the subset), where a section's
score is its subsets' accuracies weighted by their example counts; the overall score, the
mean of the section scores; and the accuracy over all examples.

What is scored: registry versions (default: the current one; --version N, repeatable, or
--all-versions), loaded here and scored exactly as the reward service scores them; or,
with --url, a running reward service (`ramo serve`), every item pinned to one version.

With --rbr the reward is rm + rbr, the Rule-Based Reward of the proposition grader and the
fitted RBR weights (`ramo rbr fit`), chosen by each row's "response_type" (comply,
hard_refuse, safe_refuse_1, safe_refuse_2; every row needs one). Locally it is computed
here exactly as the reward service's RBR deployment computes it; with --url the service
adds it (it must run with serve.rbr=opt_in or default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.propositions import RESPONSE_TYPES

_SHOWN_ERRORS = 5


class EvalError(RuntimeError):
    """What to evaluate cannot be found; the message says how to get it."""


def _registry(settings: Settings) -> Any:
    from ramo_stream.registry.setup import open_registry

    return open_registry(settings)


def registry_versions(registry: Any, wanted: list[int], all_versions: bool) -> list[int]:
    """The version numbers to evaluate: all, the ones asked for (each must exist), or the
    current one. EvalError on an empty registry; RegistryError names the versions present."""
    present = [m.version for m in registry.versions()]
    if not present:
        raise EvalError(
            f"no versions in the registry at {registry.root}: `ramo train` publishes them, or"
            " `ramo models publish PATH` publishes a checkpoint folder (or a model prepared"
            " by `ramo models prepare`, e.g. `ramo models publish all-minilm-l6-v2`)"
        )
    if all_versions:
        return present
    if wanted:
        return [registry.get(v).version for v in dict.fromkeys(wanted)]
    current = registry.current()
    return [current.version] if current is not None else [present[-1]]


def _bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="item", file=sys.stderr)


def _eval_registry(args: argparse.Namespace, settings: Settings, examples: list[Any]) -> list[Any]:
    import gc

    from ramo_stream.eval.evaluate import add_rewards, load_local, rbr_local, score_local, summarize

    registry = _registry(settings)
    versions = registry_versions(registry, args.version, args.all_versions)
    rbr, suffix = None, ""
    if args.rbr:  # the same for every version: graded once
        with _bar(2 * len(examples), "RBR propositions") as bar:
            rbr, rbr_version = rbr_local(examples, settings, bar.update)
        suffix = f"+{rbr_version}"
    results = []
    for version in versions:
        loaded = load_local(registry.local_dir(version, registry.cache_dir), version, settings)
        with _bar(2 * len(examples), f"v{version}") as bar:
            rewards = score_local(loaded, examples, settings, bar.update)
        if rbr is not None:
            rewards = add_rewards(rewards, rbr)
        results.append(summarize(f"v{version}{suffix}", version, registry.root, examples, rewards))
        del loaded
        gc.collect()  # drop this version's weights before loading the next
    return results


def _eval_service(args: argparse.Namespace, settings: Settings, examples: list[Any]) -> list[Any]:
    from ramo_stream.cli.score import default_url
    from ramo_stream.client import RewardClient
    from ramo_stream.core.pacing import RequestSizer
    from ramo_stream.eval.evaluate import score_remote, summarize

    url = args.url or default_url(settings)
    with RewardClient(url, settings.serve.api_token) as client:
        info = client.models()
        if args.all_versions:
            versions = info.loaded
        elif args.version:
            versions = list(dict.fromkeys(args.version))
        else:
            versions = [info.current] if info.current is not None else []
        if not versions:
            raise EvalError(
                f"the reward service at {url} serves no version yet: `ramo train` or `ramo"
                " models publish PATH` publishes one, which it picks up by itself"
            )
    token, max_items = settings.serve.api_token, settings.serve.max_items

    def client_for(timeout_s: float, items: int) -> Any:
        # One request per call, no retries: score_remote decides what to resend, never a
        # request the service may still be scoring.
        return RewardClient(url, token, timeout_s=timeout_s, retries=0, batch_size=items)

    results = []
    for version in versions:
        sizer = RequestSizer(budget_s=args.request_seconds, max_items=max_items)
        with _bar(2 * len(examples), f"v{version} @ {url}") as bar:
            rewards = score_remote(client_for, examples, version, bar.update, sizer,
                                   rbr=args.rbr)  # fmt: skip
        label = f"v{version}+rbr" if args.rbr else f"v{version}"
        results.append(summarize(label, version, url, examples, rewards))
    return results


def write_outputs(prefix: Path, data: str, results: list[Any]) -> list[str]:
    """PREFIX.json and PREFIX.md, and PREFIX.png across versions when there are several;
    returns a line per file (or why the plot was skipped)."""
    from ramo_stream.eval.evaluate import plot_versions, to_json, to_markdown

    prefix.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = (prefix.with_name(prefix.name + ext) for ext in (".json", ".md"))
    json_path.write_text(json.dumps(to_json(data, results), indent=1) + "\n", encoding="utf-8")
    md_path.write_text(to_markdown(data, results), encoding="utf-8")
    done = [f"wrote {json_path}", f"wrote {md_path}"]
    if len(results) > 1:
        done.append(plot_versions(data, results, prefix.with_name(prefix.name + ".png")))
    return done


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.eval.evaluate import read_examples, to_markdown

    if not args.data.is_file():
        print(f"error: no such file: {args.data}", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print(f"error: --limit must be >= 1 (got {args.limit})", file=sys.stderr)
        return 2
    if args.request_seconds <= 0:
        print(f"error: --request-seconds must be > 0 (got {args.request_seconds})",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.all_versions and args.version:
        print("error: give --version N (repeatable) or --all-versions, not both", file=sys.stderr)
        return 2
    examples, errors = read_examples(args.data, args.limit)
    if errors:
        print(f"error: {len(errors)} line(s) of {args.data} cannot be evaluated (nothing was"
              " scored; fix or remove them):", file=sys.stderr)  # fmt: skip
        for reason in errors[:_SHOWN_ERRORS]:
            print(f"  {reason}", file=sys.stderr)
        if len(errors) > _SHOWN_ERRORS:
            print(f"  ... and {len(errors) - _SHOWN_ERRORS} more", file=sys.stderr)
        return 2
    if not examples:
        print(f"error: {args.data} holds no examples (every line is blank)", file=sys.stderr)
        return 2
    untyped = [e.line for e in examples if e.response_type is None]
    if args.rbr and untyped:
        print(f"error: --rbr needs a response_type in every row (one of"
              f" {', '.join(RESPONSE_TYPES)}: it picks the RBR weights); lines"
              f" {', '.join(map(str, untyped[:10]))}{' ...' if len(untyped) > 10 else ''}"
              f" ({len(untyped)} of {len(examples)}) have none", file=sys.stderr)  # fmt: skip
        return 2

    from ramo_stream.eval.evaluate import RemoteEvalError
    from ramo_stream.label.rbr.artifact import RBRArtifactError
    from ramo_stream.registry.store import RegistryError

    failures: tuple[type[BaseException], ...] = (
        EvalError, RegistryError, RemoteEvalError, RBRArtifactError,
    )  # fmt: skip
    try:
        from ramo_stream.client import RewardServiceError

        failures += (RewardServiceError,)
    except ImportError:  # httpx missing: only --url needs it, and it says so itself
        pass
    try:
        if args.url is not None:
            results = _eval_service(args, settings, examples)
        else:
            results = _eval_registry(args, settings, examples)
    except failures as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(to_markdown(args.data.name, results), end="")
    if args.out is not None:
        for line in write_outputs(args.out, args.data.name, results):
            print(line)
    elif len(results) > 1:
        print("(--out PREFIX writes PREFIX.json, PREFIX.md and PREFIX.png: accuracy across"
              " versions)")  # fmt: skip
    return 0


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "eval",
        parents=[parent],
        help="RewardBench-style evaluation of reward-model versions (or of a running "
        "service) on a JSONL file of prompt/chosen/rejected/subset rows: accuracy per "
        "subset and section, overall score.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl",
                   help="RewardBench-format rows: prompt, chosen, rejected, subset (id "
                   "optional).")  # fmt: skip
    p.add_argument("--version", type=int, action="append", default=[], metavar="N",
                   help="A registry version to evaluate (repeat for several; default: the "
                   "current one).")  # fmt: skip
    p.add_argument("--all-versions", action="store_true",
                   help="Evaluate every version in the registry (with --url: every version "
                   "the service has loaded).")  # fmt: skip
    p.add_argument("--url", nargs="?", const="", default=None,
                   help="Score with a running reward service at this base URL instead of "
                   "loading versions here (bare --url: serve.host:serve.port). Its token is "
                   "the serve.api_token setting (RAMO_SERVE__API_TOKEN).")  # fmt: skip
    p.add_argument("--request-seconds", type=float, default=10.0, metavar="S",
                   help="With --url: aim each scoring request at this many seconds; its size"
                   " follows the rate the service showed on the first replies (a CPU service"
                   " gets a few items per request, a GPU one up to serve.max_items), and its"
                   " timeout is 4x its expected time (default 10).")  # fmt: skip
    p.add_argument("--rbr", action="store_true",
                   help="Score rm + rbr: add the Rule-Based Reward (proposition grader and"
                   " fitted weights), picked by each row's response_type (see above).")  # fmt: skip
    p.add_argument("--limit", type=int, metavar="N", help="Score only the first N examples.")
    p.add_argument("--out", type=Path, metavar="PREFIX",
                   help="Also write PREFIX.json (per-example rewards too) and PREFIX.md; with "
                   "several versions PREFIX.png, accuracy across versions (needs matplotlib: "
                   "pip install -e '.[bench]'). Default: print only.")  # fmt: skip
    p.set_defaults(fn=cmd_eval)
