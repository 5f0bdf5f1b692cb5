"""Requests sized by time, not by item count: how a batch job paces a scoring service.

A reward service on a GPU scores thousands of items a second; the same service on a CPU
with a 135M-parameter model, a few. A fixed request size (say 64 items) is then either
wasteful or longer than any sensible timeout, and a client that times out and resends the
same heavy request only queues a second copy behind the first. So the size comes from the
rate the service actually showed:

    rate  = items / seconds of the last replies (exponential average, weight ``alpha``)
    size  = clamp(rate * budget_s, 1, max_items)          the next request
    limit = max(min_timeout_s, factor * size / rate)      its timeout

The first request is small (``first`` items) with a generous ``first_timeout_s``: nothing
is known yet. After a timeout the estimate drops to half of what the failed request allowed
(size / timeout), so the next request is smaller and its timeout no shorter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestSizer:
    budget_s: float = 10.0  # aimed-for seconds per request (the progress bar's step)
    max_items: int = 256  # the service's serve.max_items
    first: int = 2
    first_timeout_s: float = 120.0
    min_timeout_s: float = 30.0
    factor: float = 4.0  # timeout = factor x the expected time (queueing, other clients)
    alpha: float = 0.5
    rate: float | None = None  # items per second, None until a reply came

    def __post_init__(self) -> None:
        if self.budget_s <= 0 or self.max_items < 1 or self.first < 1:
            raise ValueError(
                f"need budget_s > 0, max_items >= 1, first >= 1; got budget_s={self.budget_s},"
                f" max_items={self.max_items}, first={self.first}"
            )

    def next_size(self) -> int:
        if self.rate is None:
            return min(self.first, self.max_items)
        return max(1, min(self.max_items, int(self.rate * self.budget_s)))

    def timeout_s(self, size: int) -> float:
        if self.rate is None:
            return self.first_timeout_s
        return max(self.min_timeout_s, self.factor * size / self.rate)

    def observe(self, items: int, seconds: float) -> None:
        """A reply of ``items`` rewards came ``seconds`` after the request was sent."""
        now = items / max(seconds, 1e-3)
        self.rate = now if self.rate is None else self.alpha * now + (1 - self.alpha) * self.rate

    def timed_out(self, size: int, timeout_s: float) -> None:
        """A request of ``size`` items got no reply within ``timeout_s``: the service is at
        most that fast; halve the estimate."""
        ceiling = size / timeout_s
        self.rate = 0.5 * min(self.rate if self.rate is not None else ceiling, ceiling)
