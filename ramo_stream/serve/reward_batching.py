"""Dynamic batching: collecting the items of concurrent requests into batches.

``DynamicBatcher`` collects the items of concurrent requests and hands them to a scoring
function one batch at a time, taking the requests' items in turn (round robin) so a large
request shares each batch with small ones instead of going first as a block. A batch
gathers items of several requests, which may be pinned to different versions; scoring it
is ``registry.scoring.score_items``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from ramo_stream.serve.reward_protocol import DeadlineExceeded

T = TypeVar("T")
R = TypeVar("R")


class _Waiting(NamedTuple, Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    cost: int  # estimated tokens


class _Request(Generic[T, R]):
    """The items of one submit call still waiting, in order, and when the call gives up."""

    def __init__(self, items: deque[_Waiting[T, R]], arrived: float, deadline: float | None):
        self.items, self.arrived, self.deadline = items, arrived, deadline


class DynamicBatcher(Generic[T, R]):
    """Batches the items of concurrent requests for a blocking ``run(items) -> results``, one
    batch at a time.

    A batch is formed only when ``run`` is free. It takes up to ``max_batch_size`` waiting
    items and ``max_batch_cost`` of their cost (estimated tokens), and once its oldest request
    has waited ``wait_s`` it goes without waiting to fill. So at low load an item waits at
    most ``wait_s``; under load, the items that arrive during a forward all go into the next
    one, which is where batching pays.

    Fairness: the requests waiting take one item each in turn (round robin, the turn carried
    over from batch to batch), so a request of 256 long items is spread over many batches and
    a one-item request that arrives behind it joins the next batch, not the one after all 256.
    The cost cap bounds how long one batch, and so that wait, can take.

    A request whose ``deadline`` (``time.monotonic()``) passes while it waits fails with
    ``DeadlineExceeded`` and its items leave the queue; so do the items of a cancelled call.
    ``queued_cost`` (waiting plus running) is what admission control reads.

    (Ray 2.60's ``@serve.batch`` forms the next batch as soon as one starts running, so
    with a forward much longer than its wait, each batch held one or two items. That is
    why this is not ``@serve.batch``.)

    ``run`` runs in a worker thread, so the event loop keeps accepting requests. An
    exception in ``run`` fails that batch's items only.
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        max_batch_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        max_batch_cost: int | None = None,
        on_done: Callable[[int, float], None] | None = None,  # (cost, seconds) of a batch
    ) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1 and"
                             f" wait_s={wait_s} >= 0")  # fmt: skip
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self.max_batch_cost = max_batch_cost
        self.on_batch, self.on_done = on_batch, on_done
        self._turns: deque[_Request[T, R]] = deque()  # requests with items waiting, in turn
        self._waiting = 0  # items waiting
        self._waiting_cost = 0
        self._running_cost = 0
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_cost(self) -> int:
        """Cost of the items waiting and of the batch running."""
        return self._waiting_cost + self._running_cost

    def queued_costs(self) -> list[int]:
        """The waiting cost of each request, and the running batch's as one more."""
        costs = [sum(w.cost for w in r.items) for r in self._turns]
        return [*costs, self._running_cost] if self._running_cost else costs

    async def submit(self, item: T, cost: int = 1) -> R:
        """One item as its own request."""
        return (await self.submit_many([item], [cost]))[0]

    async def submit_many(
        self, items: Sequence[T], costs: Sequence[int] | None = None, deadline: float | None = None
    ) -> list[R]:
        """Results of ``items``, in order; the items are one request for fairness."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():  # first call: start on the caller's loop
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._loop(), name="ramo-dynamic-batcher")
        costs = costs if costs is not None else [1] * len(items)
        waiting = deque(_Waiting(it, loop.create_future(), c)  # type: ignore[arg-type]
                        for it, c in zip(items, costs, strict=True))  # fmt: skip
        request = _Request(waiting, time.monotonic(), deadline)
        futures = [w.future for w in waiting]
        self._turns.append(request)
        self._waiting += len(waiting)
        self._waiting_cost += sum(costs)
        assert self._arrived is not None
        self._arrived.set()
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:  # cancelled, or one item failed: the rest need not run
            self._drop(request, None)
            for f in futures:
                f.cancel()
            raise

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _drop(self, request: _Request[T, R], error: Exception | None) -> None:
        """Take a request's waiting items out of the queue (failing them with ``error``)."""
        for w in request.items:
            self._waiting -= 1
            self._waiting_cost -= w.cost
            if error is not None and not w.future.done():
                w.future.set_exception(error)
        request.items.clear()
        with contextlib.suppress(ValueError):
            self._turns.remove(request)

    def _expire(self) -> None:
        now = time.monotonic()
        for request in [r for r in self._turns if r.deadline is not None and r.deadline <= now]:
            waited = now - request.arrived
            self._drop(request, DeadlineExceeded(
                f"the request waited {waited:.1f} s for the model and reached its deadline"
                " before it could be scored (overload); retry later, or send a longer"
                " X-Request-Timeout", retry_after_s=1.0))  # fmt: skip

    def _take(self) -> list[_Waiting[T, R]]:
        """The next batch: one item of each waiting request in turn, up to the caps."""
        batch: list[_Waiting[T, R]] = []
        cost, cap = 0, self.max_batch_cost
        turns = self._turns
        while turns and len(batch) < self.max_batch_size:
            request = turns[0]
            head = request.items[0]
            if batch and cap is not None and cost + head.cost > cap:
                break  # the turn stays with this request: it goes first next batch
            turns.popleft()
            request.items.popleft()
            self._waiting -= 1
            self._waiting_cost -= head.cost
            if request.items:
                turns.append(request)
            if not head.future.done():  # a cancelled caller's items are skipped
                batch.append(head)
                cost += head.cost
        return batch

    def _full(self) -> bool:
        cap = self.max_batch_cost
        return self._waiting >= self.max_batch_size or (
            cap is not None and self._waiting_cost >= cap
        )

    async def _next_batch(self) -> list[_Waiting[T, R]]:
        arrived = self._arrived
        assert arrived is not None
        while True:
            while not self._turns:
                arrived.clear()
                await arrived.wait()
            oldest = min(r.arrived for r in self._turns)
            while not self._full() and (left := oldest + self.wait_s - time.monotonic()) > 0:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), left)
                except TimeoutError:
                    break
            self._expire()
            batch = self._take()
            if batch:
                return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._next_batch()
            if self.on_batch is not None:
                self.on_batch(len(batch))
            cost = sum(w.cost for w in batch)
            self._running_cost = cost
            started = time.monotonic()
            try:
                results = await asyncio.to_thread(self.run, [w.item for w in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"run returned {len(results)} results for"
                                       f" {len(batch)} items")  # fmt: skip
            except Exception as e:  # this batch fails; the loop goes on
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(e)
                continue
            finally:
                self._running_cost = 0
            if self.on_done is not None:
                self.on_done(cost, time.monotonic() - started)
            for w, result in zip(batch, results, strict=True):
                if not w.future.done():
                    w.future.set_result(result)
