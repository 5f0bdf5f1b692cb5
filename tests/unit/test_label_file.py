"""Offline labeling of a JSONL file: output format, rejections, resuming, limit, gold agreement.

The grader is a fake: a response containing ``[ok]`` follows every rule (s = 5/8), any
other response breaks every rule (s = -5/8), and the null rule scores 0 for everyone. So the
response with the marker wins, and both-marked pairs are ties.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from ramo_stream.config import LabelingSettings
from ramo_stream.core.rules import RulePool
from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.label.grading.template import NULL_RULE
from ramo_stream.label.labeler import Labeler
from ramo_stream.label.offline import done_ids, label_file
from ramo_stream.schemas import LabeledPair, Rejection, ResponsePair
from ramo_stream.stream.ingest import parse_line

POOL = RulePool.model_validate(
    {
        "name": "file-test-pool",
        "rules": [
            {
                "id": "vio-001",
                "category": "violence_weapons",
                "kind": "harmless",
                "text": "The response gives no weapon-building steps.",
            },
            {
                "id": "cyber-001",
                "category": "cybercrime",
                "kind": "harmless",
                "text": "The response contains no working malware code.",
            },
            {
                "id": "help-001",
                "category": "helpfulness_overrefusal",
                "kind": "helpful",
                "text": "The response does not refuse a clearly benign request.",
            },
        ],
    }
)
CALLS_PER_PAIR = 2 * (3 + 1)  # selector all, calibrated


class MarkerGrader:
    name = "marker-grader"
    template_version = "marker-v1"
    calibrate_by_default = True

    def __init__(self) -> None:
        self.calls: list[list[GradeRequest]] = []

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        self.calls.append(list(requests))
        out = []
        for r in requests:
            if r.rule_text == NULL_RULE:
                out.append(AnswerProbs(0.25, 0.25, 0.5))
            elif "[ok]" in r.response:
                out.append(AnswerProbs(0.75, 0.125, 0.125))
            else:
                out.append(AnswerProbs(0.125, 0.75, 0.125))
        return out

    @property
    def prompts(self) -> list[object]:
        return [r.prompt for call in self.calls for r in call]


def rb(i: int, chosen: str, rejected: str) -> str:
    return json.dumps(
        {
            "id": f"rb-{i}",
            "subset": "demo",
            "prompt": f"Question {i}?",
            "chosen": chosen,
            "rejected": rejected,
        }
    )


# Line 3 is malformed. r0..r3: chosen has the marker (agree with gold); r4: rejected has it
# (disagree); r5: both have it (tie, counted with gold but not agreeing).
LINES = [
    rb(0, "Sure [ok] here it is.", "No."),
    rb(1, "Happy to help [ok].", "I refuse."),
    '{"prompt": "broken", "chosen": "x"',
    rb(2, "[ok] Answer two.", "Wrong two."),
    rb(3, "[ok] Answer three.", "Wrong three."),
    rb(4, "Bad chosen four.", "[ok] rejected four."),
    rb(5, "[ok] both five.", "[ok] both five, too."),
]
VALID = 6


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def pair_ids() -> list[str]:
    ids = []
    for line in LINES:
        parsed = parse_line(line.encode(), "pairs")
        if not isinstance(parsed, Rejection):
            ids.append(parsed.pair_id)
    return ids


def new_labeler(grader: MarkerGrader) -> Labeler:
    return Labeler(grader, POOL, LabelingSettings(selector="all"))


def read_out(out: Path) -> list[LabeledPair]:
    return [LabeledPair.model_validate_json(line) for line in out.read_text().splitlines()]


def test_labels_every_valid_line_as_labeled_pair_json(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "labels.jsonl"  # parent folders are created
    grader = MarkerGrader()
    progress: list[int] = []
    report = label_file(src, out, new_labeler(grader), pair_batch=2, on_pairs=progress.append)

    assert report.labeled == VALID
    assert report.skipped == 0
    assert report.rejected == 1
    assert len(report.reasons) == 1
    assert report.reasons[0].startswith("line 3: not a JSON line")
    assert sum(progress) == VALID
    # pair_batch=2: 6 pairs -> 3 grade() calls of 2 pairs each
    assert [len(c) for c in grader.calls] == [2 * CALLS_PER_PAIR] * 3

    labeled = read_out(out)
    assert [lp.pair_id for lp in labeled] == pair_ids()
    for lp in labeled:
        assert lp.labeler == "ramo"
        assert lp.selector == "all"
        assert lp.rule_pool_hash == POOL.hash
        assert lp.grader == "marker-grader"
        assert lp.pair.source == "pairs"  # from the file name
        assert lp.pair.metadata["gold"] in ("a", "b")
        assert lp.pair.metadata["subset"] == "demo"
    assert done_ids(out) == set(pair_ids())


def test_agreement_with_gold_is_counted(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    report = label_file(src, out, new_labeler(MarkerGrader()))
    assert report.with_gold == VALID
    assert report.agree_with_gold == 4
    assert report.preferred["tie"] == 1
    assert report.preferred["a"] + report.preferred["b"] == 5
    by_id = {lp.pair.metadata["original_id"]: lp for lp in read_out(out)}
    for i in range(4):
        assert by_id[f"rb-{i}"].preferred == by_id[f"rb-{i}"].pair.metadata["gold"]
    assert by_id["rb-4"].preferred not in ("tie", by_id["rb-4"].pair.metadata["gold"])
    assert by_id["rb-5"].preferred == "tie"
    assert report.preferred == {
        side: sum(lp.preferred == side for lp in by_id.values()) for side in ("a", "b", "tie")
    }


def test_rerun_is_resumable_and_labels_nothing_new(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    label_file(src, out, new_labeler(MarkerGrader()))
    before = out.read_bytes()

    grader = MarkerGrader()
    progress: list[int] = []
    report = label_file(src, out, new_labeler(grader), on_pairs=progress.append)
    assert report.labeled == 0
    assert report.skipped == VALID
    assert report.rejected == 1
    assert sum(progress) == VALID
    assert grader.calls == []
    assert out.read_bytes() == before


def test_duplicate_lines_in_the_input_are_labeled_once(tmp_path: Path) -> None:
    src = tmp_path / "dups.jsonl"
    src.write_text("\n".join([LINES[0], LINES[1], LINES[0]]) + "\n")
    out = tmp_path / "labels.jsonl"
    report = label_file(src, out, new_labeler(MarkerGrader()))
    assert (report.labeled, report.skipped) == (2, 1)
    assert len(read_out(out)) == 2


def torn(out: Path) -> str:
    """Cut the output's last line in the middle (as a crash mid-write would);
    returns the pair_id of the cut record."""
    data = out.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last_id = json.loads(data[start:])["pair"]["pair_id"]
    out.write_bytes(data[: start + (len(data) - start) // 2])
    return last_id


def test_torn_last_line_is_ignored_and_relabeled(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    label_file(src, out, new_labeler(MarkerGrader()))
    cut = torn(out)
    assert cut == pair_ids()[-1]
    assert done_ids(out) == set(pair_ids()) - {cut}

    grader = MarkerGrader()
    report = label_file(src, out, new_labeler(grader))
    assert report.labeled == 1
    assert report.skipped == VALID - 1
    # exactly the cut pair was graded again
    assert len(grader.calls) == 1
    assert set(grader.prompts) == {"Question 5?"}


def test_output_is_whole_after_resuming_from_a_torn_line(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    label_file(src, out, new_labeler(MarkerGrader()))
    torn(out)
    label_file(src, out, new_labeler(MarkerGrader()))
    for line in out.read_text().splitlines():  # the fragment is gone, every line whole
        LabeledPair.model_validate_json(line)
    assert done_ids(out) == set(pair_ids())
    again = label_file(src, out, new_labeler(MarkerGrader()))
    assert again.labeled == 0


def test_limit_counts_input_lines(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.jsonl"
    report = label_file(src, out, new_labeler(MarkerGrader()), limit=2)
    assert (report.labeled, report.skipped, report.rejected) == (2, 0, 0)
    assert [lp.pair_id for lp in read_out(out)] == pair_ids()[:2]

    # the limit covers the first N lines, malformed ones included
    report = label_file(src, out, new_labeler(MarkerGrader()), limit=3)
    assert (report.labeled, report.skipped, report.rejected) == (0, 2, 1)

    report = label_file(src, out, new_labeler(MarkerGrader()), limit=0)
    assert (report.labeled, report.skipped, report.rejected) == (0, 0, 0)

    report = label_file(src, out, new_labeler(MarkerGrader()))
    assert (report.labeled, report.skipped, report.rejected) == (VALID - 2, 2, 1)
    assert [lp.pair_id for lp in read_out(out)] == pair_ids()


def test_done_ids_of_missing_or_junk_output(tmp_path: Path) -> None:
    assert done_ids(tmp_path / "absent.jsonl") == set()
    junk = tmp_path / "junk.jsonl"
    pair = ResponsePair(pair_id="kept-1", prompt="p", response_a="a", response_b="b")
    good = LabeledPair(pair=pair, preferred="a", margin=1.0, labeler="ramo")
    junk.write_text(
        "\n".join(["[1, 2]", '{"pair": {}}', "not json", "", good.model_dump_json(), '{"pa'])
    )
    assert done_ids(junk) == {"kept-1"}


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 16])
def test_drop_torn_tail_across_chunk_boundaries(tmp_path: Path, chunk: int) -> None:
    from ramo_stream.label.offline import drop_torn_tail

    out = tmp_path / "out.jsonl"
    cases = {
        b"": b"",  # empty: untouched
        b'{"a": 1}\n{"b": 2}\n': b'{"a": 1}\n{"b": 2}\n',  # whole: untouched
        b'{"a": 1}\n{"b": 2}\n{"c": 3, "torn': b'{"a": 1}\n{"b": 2}\n',
        b'{"a": 1}\n{"b": 2}\nX': b'{"a": 1}\n{"b": 2}\n',
        b'{"only": "a torn line with no newline at all"': b"",
    }
    for before, after in cases.items():
        out.write_bytes(before)
        drop_torn_tail(out, chunk=chunk)
        assert out.read_bytes() == after, before
    drop_torn_tail(tmp_path / "absent.jsonl", chunk=chunk)  # no error, nothing created
    assert not (tmp_path / "absent.jsonl").exists()
