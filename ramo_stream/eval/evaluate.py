"""RewardBench-style evaluation: accuracy per subset, per section and overall.

A row is ``{"prompt", "chosen", "rejected", "subset", "id"?, "response_type"?}`` (the
prompt a string or chat messages; ``response_type`` picks the Rule-Based Reward's weights
when it is added, ``--rbr``). It is correct when ``reward(chosen) > reward(rejected)``,
strictly: a tie counts as wrong, as in RewardBench.

With ``n(s)`` the rows of subset ``s`` and ``c(s)`` the correct ones::

    acc(s)         = c(s) / n(s)
    score(section) = sum_s acc(s) * n(s) / sum_s n(s)     over the section's subsets
                   = (correct rows of the section) / (rows of the section)
    overall        = mean of score(section) over the sections present
    accuracy       = (correct rows) / (rows)

Sections are RewardBench's (chat, chat-hard, safety, reasoning), filled with its published
subset mapping (``rewardbench/constants.py`` ``SUBSET_MAPPING``). A subset RewardBench does
not know is a section of its own, named after the subset. The weights are the counts
evaluated; RewardBench's leaderboard code uses its fixed ``EXAMPLE_COUNTS`` instead, which
differ only for math-prm (counted as 984 rows, its 447 upweighted to match the code subsets).

The aggregation and rendering functions are pure. Scoring a registry version (``load_local``,
``score_local``) imports torch and transformers when called; scoring through a running reward
service (``score_remote``) takes a factory of ``RewardClient``s and sizes its requests by
time (``core/pacing.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ramo_stream.core.pacing import RequestSizer
from ramo_stream.core.propositions import RESPONSE_TYPES, response_type_id
from ramo_stream.eval.score_rows import load_object, read_parsed, row_from

REWARDBENCH_SECTIONS: dict[str, tuple[str, ...]] = {
    "chat": (
        "alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
        "mt-bench-med",
    ),
    "chat-hard": (
        "mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
        "llmbar-adver-GPTOut", "llmbar-adver-manual",
    ),
    "safety": (
        "refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
        "xstest-should-respond", "donotanswer",
    ),
    "reasoning": (
        "math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust",
    ),
}  # fmt: skip
SECTION_OF = {s: section for section, subs in REWARDBENCH_SECTIONS.items() for s in subs}
REQUIRED = ("prompt", "chosen", "rejected", "subset")
BENCH_HINT = "pip install -e '.[bench]'"

Progress = Callable[[int], None]  # items just scored


def section_of(subset: str) -> str:
    """RewardBench's section of a subset; an unknown subset is its own section."""
    return SECTION_OF.get(subset, subset)


def _order(section: str) -> tuple[int, str]:
    """RewardBench's sections in its order, then the others by name."""
    names = list(REWARDBENCH_SECTIONS)
    return (names.index(section), "") if section in names else (len(names), section)


# ---- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    line: int
    prompt: Any  # a string, or chat messages as dicts (the form the service takes)
    chosen: str
    rejected: str
    subset: str
    id: str | None = None
    response_type: str | None = None  # comply, hard_refuse, ...: needed only with RBR


def parse_example(line: int, raw: str) -> Example | str:
    """An Example, or why line ``line`` cannot be one (naming the line and the field)."""
    d = load_object(line, raw)
    if isinstance(d, str):
        return d
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        return (
            f"line {line}: missing {'field' if len(missing) == 1 else 'fields'}"
            f" {', '.join(map(repr, missing))}; a RewardBench row"
            f" has {', '.join(REQUIRED)} (and an optional id)"
        )
    subset = d["subset"]
    if not isinstance(subset, str) or not subset.strip():
        return f"line {line}: subset must be a non-empty string (got {subset!r})"
    row = row_from(line, d)  # prompt and texts are checked as `ramo score` checks them
    if isinstance(row, str):
        return row
    chosen, rejected = row.responses
    rid = d.get("id")
    rtype = d.get("response_type")
    if rtype is not None:
        try:
            rtype = response_type_id(rtype if isinstance(rtype, str) else "")
        except ValueError:
            return (f"line {line}: response_type {rtype!r:.60} is not one of"
                    f" {', '.join(RESPONSE_TYPES)}")  # fmt: skip
    return Example(line, row.prompt, chosen, rejected, subset,
                   None if rid is None else str(rid), rtype)  # fmt: skip


def read_examples(path: Path, limit: int | None = None) -> tuple[list[Example], list[str]]:
    """The examples of the first ``limit`` non-blank lines, and the reasons of bad lines."""
    return read_parsed(path, limit, parse_example)


# ---- aggregation (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else math.nan

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.correct + other.correct, self.n + other.n)


def is_correct(chosen: float, rejected: float) -> bool:
    """Strictly higher: a tie (and a NaN reward) counts as wrong."""
    return chosen > rejected


def tally_subsets(subsets: Sequence[str], correct: Sequence[bool]) -> dict[str, Tally]:
    """Per subset, its correct rows out of its rows; in section order, then by name."""
    out: dict[str, Tally] = {}
    for subset, ok in zip(subsets, correct, strict=True):
        out[subset] = out.get(subset, Tally(0, 0)) + Tally(int(ok), 1)
    return dict(sorted(out.items(), key=lambda kv: (_order(section_of(kv[0])), kv[0])))


def section_scores(subsets: dict[str, Tally]) -> dict[str, Tally]:
    """Per section, the sum of its subsets' tallies: sum acc(s) * n(s) / sum n(s)."""
    out: dict[str, Tally] = {}
    for subset, tally in subsets.items():
        section = section_of(subset)
        out[section] = out.get(section, Tally(0, 0)) + tally
    return dict(sorted(out.items(), key=lambda kv: _order(kv[0])))


def overall_score(sections: dict[str, Tally]) -> float:
    """The unweighted mean of the section scores (NaN when there is no section)."""
    scores = [t.accuracy for t in sections.values()]
    return sum(scores) / len(scores) if scores else math.nan


@dataclass(frozen=True)
class Result:
    """One model scored on one data set."""

    label: str  # "v3"
    version: int | None
    source: str  # the registry root, or the service's URL
    examples: list[Example]
    rewards: list[tuple[float, float]]  # (chosen, rejected) per example
    subsets: dict[str, Tally]
    sections: dict[str, Tally]
    overall: float
    total: Tally


def summarize(
    label: str,
    version: int | None,
    source: str,
    examples: list[Example],
    rewards: list[tuple[float, float]],
) -> Result:
    """The scores of one model from its (chosen, rejected) reward per example, in order."""
    correct = [is_correct(c, r) for c, r in rewards]
    subsets = tally_subsets([e.subset for e in examples], correct)
    sections = section_scores(subsets)
    total = Tally(sum(correct), len(correct))
    return Result(label, version, source, examples, rewards, subsets, sections,
                  overall_score(sections), total)  # fmt: skip


# ---- output ----------------------------------------------------------------------------------


def _cell(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.3f}"


def to_markdown(data: str, results: Sequence[Result]) -> str:
    """Tables with one accuracy column per result: subsets, then sections and the scores."""
    first = results[0]
    heads = " | ".join(r.label for r in results)
    rule = "|" + "---:|" * len(results)
    lines = [f"## {data}: {first.total.n} examples", "",
             f"| subset | section | n | {heads} |", "|---|---|---:" + rule]  # fmt: skip
    for subset, tally in first.subsets.items():
        accs = " | ".join(_cell(r.subsets[subset].accuracy) for r in results)
        lines.append(f"| {subset} | {section_of(subset)} | {tally.n} | {accs} |")
    lines += ["", f"| section | n | {heads} |", "|---|---:" + rule]
    for section, tally in first.sections.items():
        accs = " | ".join(_cell(r.sections[section].accuracy) for r in results)
        lines.append(f"| {section} | {tally.n} | {accs} |")
    overall = " | ".join(_cell(r.overall) for r in results)
    accuracy = " | ".join(_cell(r.total.accuracy) for r in results)
    lines.append(f"| **overall** (mean of sections) | | {overall} |")
    lines.append(f"| **accuracy** (all examples) | {first.total.n} | {accuracy} |")
    return "\n".join(lines) + "\n"


def _tally_json(t: Tally) -> dict[str, Any]:
    return {"n": t.n, "correct": t.correct, "accuracy": t.accuracy}


def _example_json(e: Example, chosen: float, rejected: float) -> dict[str, Any]:
    return {"line": e.line, "id": e.id, "subset": e.subset, "chosen_reward": chosen,
            "rejected_reward": rejected, "correct": is_correct(chosen, rejected)}  # fmt: skip


def to_json(data: str, results: Sequence[Result]) -> dict[str, Any]:
    """Everything behind the tables, with each example's two rewards."""
    return {
        "data": data,
        "tie_rule": "correct when reward(chosen) > reward(rejected); ties count wrong",
        "results": [
            {
                "label": r.label,
                "version": r.version,
                "source": r.source,
                "overall": r.overall,
                "accuracy": r.total.accuracy,
                "n": r.total.n,
                "correct": r.total.correct,
                "sections": {
                    s: {**_tally_json(t), "subsets": [k for k in r.subsets if section_of(k) == s]}
                    for s, t in r.sections.items()
                },
                "subsets": {
                    k: {"section": section_of(k), **_tally_json(t)} for k, t in r.subsets.items()
                },
                "examples": [
                    _example_json(e, c, j) for e, (c, j) in zip(r.examples, r.rewards, strict=True)
                ],
            }
            for r in results
        ],
    }


def plot_versions(data: str, results: Sequence[Result], path: Path) -> str:
    """A PNG of each section's score, the overall score and the accuracy across versions.
    Returns what happened, for the user: written, or skipped and how to install matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return f"no plot: matplotlib is not installed ({BENCH_HINT} installs it)"
    xs = list(range(len(results)))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(results) + 3), 4.0))
    for section in results[0].sections:
        ax.plot(xs, [r.sections[section].accuracy for r in results], marker="o", label=section)
    ax.plot(xs, [r.overall for r in results], marker="s", color="black", linewidth=2,
            label="overall (mean of sections)")  # fmt: skip
    ax.plot(xs, [r.total.accuracy for r in results], linestyle="--", color="gray",
            label="accuracy (all examples)")  # fmt: skip
    ax.axhline(0.5, color="lightgray", linewidth=1, zorder=0)  # chance
    ax.set(xticks=xs, xticklabels=[r.label for r in results], ylim=(0.0, 1.0),
           xlabel="model version", ylabel="accuracy", title=f"{data}")  # fmt: skip
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


# ---- scoring ---------------------------------------------------------------------------------


def load_local(folder: Path, version: int, settings: Any) -> Any:
    """The model in ``folder`` as the reward service loads it: a ``LoadedModel`` on the GPU
    when there is one, in ``serve.dtype``."""
    import torch

    from ramo_stream.registry.model import load_reward_model, torch_dtype
    from ramo_stream.registry.scoring import LoadedModel, model_max_length

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = load_reward_model(folder, dtype=torch_dtype(settings.serve.dtype, device))
    model = model.to(device).eval()
    return LoadedModel(version, model, tok, device, model_max_length(model, tok))


def score_local(
    loaded: Any, examples: Sequence[Example], settings: Any, on_progress: Progress | None = None
) -> list[tuple[float, float]]:
    """(chosen, rejected) rewards of every example, computed as the reward service computes
    them (``score_items``: ``format_text``, sorted sub-batches of at most
    ``serve.batch_tokens``, the last ``serve.max_length`` tokens of each item)."""
    from pydantic import TypeAdapter

    from ramo_stream.registry.scoring import BatchItem, score_items
    from ramo_stream.schemas import Prompt

    prompts = TypeAdapter(Prompt)  # the service's input type: chat messages as ChatMessage
    items: list[BatchItem] = []
    for e in examples:
        prompt = prompts.validate_python(e.prompt)
        items += [BatchItem(loaded, prompt, e.chosen), BatchItem(loaded, prompt, e.rejected)]
    hook = None if on_progress is None else (lambda rows, _width, _tokens: on_progress(rows))
    s = settings.serve
    device = loaded.device
    flat = score_items(items, s.max_length, s.forward_tokens(device), hook,
                       s.pass_overhead(device))  # fmt: skip
    return list(zip(flat[0::2], flat[1::2], strict=True))


def score_remote(
    client_for: Callable[[float, int], Any],
    examples: Sequence[Example],
    version: int,
    on_progress: Progress | None = None,
    sizer: RequestSizer | None = None,
    max_timeouts: int = 3,
    rbr: bool = False,
) -> list[tuple[float, float]]:
    """The same through a running reward service, every item pinned to ``version`` so one
    version scores all of them.

    ``client_for(timeout_s, items)`` gives a ``RewardClient`` that sends ``items`` in one
    request with that timeout and no retries of its own: requests are sized by ``sizer``
    from the service's observed rate (``core/pacing.py``), and a request that timed out is
    never sent again as it was. Its connection is closed, which Ray Serve takes as the
    client going away and cancels it; the same items then go again in a smaller request
    after a pause. 429/502/503/504 (overloaded, restarting) are waited out the same way.
    After ``max_timeouts`` failures in a row, EvalError says what to try. ``rbr``: ask for
    rm + rbr, each item with its example's response type."""
    from ramo_stream.client.errors import RETRY_STATUSES, RewardServiceError

    sizer = sizer or RequestSizer()
    items = [{"prompt": e.prompt, "response": text, "response_type": e.response_type}
             for e in examples for text in (e.chosen, e.rejected)]  # fmt: skip
    flat: list[float] = []
    failures = 0
    while len(flat) < len(items):
        part = items[len(flat) : len(flat) + sizer.next_size()]
        timeout = sizer.timeout_s(len(part))
        started = time.monotonic()
        try:
            with client_for(timeout, len(part)) as client:
                # rbr=False asks for rm alone even where serve.rbr=default
                rewards = client.score(part, model_version=version, rbr=rbr).rewards
        except RewardServiceError as e:
            if e.status is not None and e.status not in RETRY_STATUSES:
                raise  # the request's fault (4xx) or the model's (500): no retry helps
            failures += 1
            if failures > max_timeouts:
                raise RemoteEvalError(
                    f"the reward service failed {failures} requests in a row, the last of"
                    f" {len(part)} items with a {timeout:.0f} s limit ({e}). It may be"
                    " overloaded: retry later, or evaluate the version locally (drop --url)"
                ) from e
            if e.status is None:  # a timeout or a dropped connection
                sizer.timed_out(len(part), timeout)
            time.sleep(min(30.0, 2.0**failures))
            continue
        failures = 0
        sizer.observe(len(part), time.monotonic() - started)
        flat += rewards
        if on_progress is not None:
            on_progress(len(part))
    return list(zip(flat[0::2], flat[1::2], strict=True))


def rbr_local(
    examples: Sequence[Example], settings: Any, on_progress: Progress | None = None
) -> tuple[list[tuple[float, float]], str]:
    """(chosen, rejected) Rule-Based Rewards of every example, computed here as the reward
    service's RBR deployment computes them (``RBRScorer``), and the RBR artifact's version.
    Every example needs its ``response_type``."""
    from ramo_stream.label.rbr.scorer import RBRScorer

    scorer = RBRScorer(settings)
    items = [(e.prompt, text, str(e.response_type))
             for e in examples for text in (e.chosen, e.rejected)]  # fmt: skip
    flat, _ = scorer.score(items, on_progress, chunk=8)
    return list(zip(flat[0::2], flat[1::2], strict=True)), scorer.version


def add_rewards(
    a: Sequence[tuple[float, float]], b: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """rm + rbr, pair by pair."""
    return [(x + u, y + v) for (x, y), (u, v) in zip(a, b, strict=True)]


class RemoteEvalError(RuntimeError):
    """Scoring through the service kept failing; the message says what to try."""
