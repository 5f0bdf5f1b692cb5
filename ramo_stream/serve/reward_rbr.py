"""The Rule-Based Reward in the reward service: a deployment that grades propositions.

    RewardIngress --handle--> RewardModelServer   (R_rm)
                  --handle--> RBRDeployment       (grader + weights: R_rbr, P(true) per
                                                   proposition)

``RBRDeployment`` holds an ``RBRScorer`` (label/rbr/scorer.py: its own grader, the one the
labeler uses, and the fitted weights of the RBR artifact that matches the proposition
pool, the rubric and that grader). It is deployed only when
``serve.rbr`` is not ``off``, next to the reward model, and scales on its own. A request's
items are graded together on every proposition in one ``Grader.grade`` call (the grader
batches them); concurrent requests are not merged into one call.

``HandleRBR`` is the ingress side (``RBRBackend`` of ``reward_service``): it calls the
deployment within the request's deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from ramo_stream.schemas import prompt_from_wire, prompt_to_wire
from ramo_stream.serve.reward_protocol import DeadlineExceeded, Unavailable
from ramo_stream.serve.reward_service import TypedItem

log = logging.getLogger(__name__)


@serve.deployment
class RBRDeployment:
    def __init__(self, args: Any) -> None:
        from ramo_stream.label.rbr.scorer import RBRScorer

        self.scorer = RBRScorer(args.settings())
        print(f"reward service RBR: {self.scorer.version} with {self.scorer.grader_text}",
              flush=True)  # fmt: skip

    def info(self) -> dict[str, str]:
        return {"version": self.scorer.version, "grader": self.scorer.grader.name}

    def _score(self, items: list[TypedItem]) -> tuple[list[float], list[dict[str, float]], str]:
        typed = [(prompt_from_wire(p), r, t) for p, r, t in items]
        values, probs = self.scorer.score(typed)
        return values, probs, self.scorer.version

    async def score(
        self, items: list[TypedItem]
    ) -> tuple[list[float], list[dict[str, float]], str]:
        # Grading is blocking torch work: off the replica's event loop, so info() answers.
        return await asyncio.to_thread(self._score, items)


class HandleRBR:
    """``RBRBackend`` over the RBR deployment's handle."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def score(
        self, items: list[TypedItem], timeout_s: float | None = None
    ) -> tuple[list[float], list[dict[str, float]], str]:
        payload = [(prompt_to_wire(p), r, t) for p, r, t in items]
        started = time.monotonic()
        call = self.handle.score.remote(payload)
        try:
            result: tuple[list[float], list[dict[str, float]], str] = await asyncio.wait_for(
                _await(call), timeout_s
            )
        except TimeoutError:
            call.cancel()
            raise DeadlineExceeded(
                f"the proposition grader did not answer within the request's deadline of"
                f" {timeout_s:g} s ({time.monotonic() - started:.1f} s); retry later, send a"
                " longer X-Request-Timeout, or scale the RBR deployment",
                retry_after_s=1.0,
            ) from None
        except Exception as e:  # a lost replica: no internals in the reply, all in the log
            log.warning("reward service: the RBR deployment failed a request: %r", e)
            raise Unavailable(
                "the RBR deployment (proposition grader) failed or is restarting; retry after"
                " the Retry-After seconds",
                retry_after_s=2.0,
            ) from e
        return result


async def _await(response: Any) -> Any:
    return await response
