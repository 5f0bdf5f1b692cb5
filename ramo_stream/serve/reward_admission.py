"""Admission control of a reward-model replica: refuse early what cannot be done in time.

Pure (no Ray, no torch). A replica's queue is measured in tokens, not requests: one request
of 256 long texts is a minute of model time, one of a short text a few milliseconds, so a
bound on requests bounds nothing. Tokens are estimated from characters (``estimate_tokens``)
before any tokenizer runs, and the model's speed is measured in the same unit (estimated
tokens per second of model time), so the predicted wait does not depend on how good the
estimate is.

A request of cost ``c`` arriving where requests of remaining costs ``q_1 .. q_n`` wait (total
``Q``), at a speed of ``r`` tokens per second, with a deadline ``d`` seconds away, is

- refused with 413 if ``c > max_queued_tokens`` (it never fits), or if ``c / r > d`` (even an
  idle service cannot finish it in time: retrying the same request cannot help);
- refused with 503 ``overloaded`` and ``Retry-After`` if ``Q + c > max_queued_tokens``, or if
  its predicted finish ``T = (c + sum_j min(q_j, c)) / r`` is past ``HEADROOM * d``: the
  client learns that now, in milliseconds, instead of timing out. Retry-After is
  ``T - HEADROOM * d``, about when it would fit.

``T`` is the finish time under processor sharing, which the batcher's turn-taking
approximates: each waiting request gets a share of every batch, so until the new request is
done each other one has used at most ``c`` of the model (a smaller one finishes first, using
its ``q_j``). So a one-item request beside a giant one is admitted, and a second giant
behind the first is refused. Arrivals after it also take shares, which ``T`` ignores:
HEADROOM (0.8) leaves a fifth of the deadline for that, for HTTP hops and batch formation,
and for a speed that drops under load; and where the caller reports how long admitted
requests really took (the ingress does), ``T`` is scaled by the measured ratio of actual to
predicted time (``calibrate``), so what the model misses is learnt rather than guessed.
Until the first batch is measured there is no speed, and only the token bound applies.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ramo_stream.serve.reward_protocol import InvalidInput, Overloaded, TooLarge

# Characters per token of English text for BPE and WordPiece tokenizers (about 4); the chat
# template adds a few tokens per item.
CHARS_PER_TOKEN = 4
TEMPLATE_TOKENS = 8
TIMEOUT_HEADER = "x-request-timeout"
HEADROOM = 0.8


def _chars(prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, Sequence):  # chat messages (ChatMessage or mappings)
        total = 0
        for m in prompt:
            content = m.get("content", "") if isinstance(m, dict) else getattr(m, "content", "")
            total += len(content) if isinstance(content, str) else 0
        return total
    return 0


def estimate_tokens(prompt: Any, response: str, max_length: int) -> int:
    """Tokens an item will cost the model: characters / 4 plus the template, capped at
    ``max_length`` (longer inputs are truncated before the forward pass)."""
    chars = _chars(prompt) + len(response)
    return min(max_length, TEMPLATE_TOKENS + math.ceil(chars / CHARS_PER_TOKEN))


def request_timeout(header: str | None, default_s: float, max_s: float) -> float:
    """The deadline of a request, in seconds: the ``X-Request-Timeout`` header if given (capped
    at ``max_s``), else ``default_s``. 422 for a value that is not a positive number."""
    if header is None or not header.strip():
        return default_s
    try:
        value = float(header)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise InvalidInput(
            f"header X-Request-Timeout={header[:40]!r} must be a positive number of seconds"
            f" (at most serve.max_request_timeout_s={max_s:g}; default"
            f" serve.request_timeout_s={default_s:g})"
        )
    return min(value, max_s)


class Throughput:
    """Model speed in estimated tokens per second of model time: an exponentially weighted
    mean over batches, each weighted by its duration (so a run of tiny batches, dominated
    by fixed per-pass costs, does not swamp the speed of full ones)."""

    def __init__(self, half_life_s: float = 5.0) -> None:
        self.half_life_s = half_life_s
        self._tokens = 0.0
        self._seconds = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        if seconds <= 0:
            return
        keep = 0.5 ** (seconds / self.half_life_s)  # older batches fade with model time
        self._tokens = self._tokens * keep + tokens
        self._seconds = self._seconds * keep + seconds

    @property
    def tokens_per_s(self) -> float | None:
        return self._tokens / self._seconds if self._seconds > 0 else None


class ReplicaRates:
    """The model's speed as the ingress knows it: each replica reports its own
    ``Throughput`` (model time only, so a wait for a restarting replica or a slow HTTP hop
    does not read as a slow model) with every answer; the sum over replicas heard from in
    the last ``fresh_s`` seconds is the service's speed."""

    def __init__(self, fresh_s: float = 30.0) -> None:
        self.fresh_s = fresh_s
        self._rates: dict[str, tuple[float, float]] = {}  # replica -> (tokens/s, when)

    def report(self, replica: str, tokens_per_s: float | None) -> None:
        if tokens_per_s is not None and tokens_per_s > 0:
            self._rates[replica] = (tokens_per_s, time.monotonic())

    @property
    def tokens_per_s(self) -> float | None:
        now = time.monotonic()
        self._rates = {k: v for k, v in self._rates.items() if now - v[1] <= self.fresh_s}
        return sum(rate for rate, _ in self._rates.values()) or None


class Admission:
    def __init__(self, max_queued_tokens: int, throughput: Throughput | ReplicaRates) -> None:
        self.max_queued_tokens = max_queued_tokens
        self.throughput = throughput
        self.slowdown = 1.0  # actual / predicted time of admitted requests, smoothed

    def calibrate(self, predicted_s: float, actual_s: float, weight: float = 0.1) -> None:
        """Learn from one admitted request that finished: ``T`` predicted, ``actual_s`` taken."""
        if predicted_s > 0:
            ratio = min(4.0, max(0.5, actual_s / predicted_s))
            self.slowdown += weight * (ratio - self.slowdown)

    def check(self, queued: Iterable[int], cost: int, timeout_s: float | None) -> float | None:
        """Raise TooLarge or Overloaded if a request of ``cost`` cannot be admitted now;
        ``queued``: the remaining cost of each request already waiting or running. Returns
        the predicted time ``T`` (before the slowdown), None without a speed yet."""
        waiting = list(queued)
        total = sum(waiting)
        cap = self.max_queued_tokens
        if cost > cap:
            raise TooLarge(
                f"the request is about {cost} tokens; a replica queues at most"
                f" serve.max_queued_tokens={cap}. Split it into smaller requests (the Python"
                " client does: lower batch_size)"
            )
        rate = self.throughput.tokens_per_s
        if timeout_s is not None and rate is not None and cost / rate > timeout_s:
            raise TooLarge(
                f"the request is about {cost} tokens, about {cost / rate:.1f} s of model time"
                f" at the measured {rate:.0f} tokens/s, over its deadline of {timeout_s:g} s."
                " Split it into smaller requests, or send a longer X-Request-Timeout"
            )
        if total + cost > cap:
            wait = (total + cost - cap) / rate if rate else 1.0
            raise Overloaded(
                f"the service is overloaded: about {total} tokens are queued, and this"
                f" request's {cost} would pass serve.max_queued_tokens={cap}; retry after the"
                " Retry-After seconds",
                retry_after_s=max(1.0, wait),
            )
        if rate is None:
            return None
        predicted = (cost + sum(min(q, cost) for q in waiting)) / rate
        finish = predicted * self.slowdown
        budget = None if timeout_s is None else HEADROOM * timeout_s
        if budget is not None and finish > budget:
            raise Overloaded(
                f"the service is overloaded: with {len(waiting)} requests (about {total}"
                f" tokens) sharing the model, this request would finish in about"
                f" {finish:.1f} s, too close to or past its deadline of {timeout_s:g} s; retry"
                " after the Retry-After seconds",
                retry_after_s=max(1.0, finish - budget),
            )
        return predicted
