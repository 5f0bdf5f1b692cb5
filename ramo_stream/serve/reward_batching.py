"""Dynamic batching: collecting items into batches, and scoring one batch.

``DynamicBatcher`` collects the items of concurrent requests and hands them to a scoring
function one batch at a time, taking the requests' items in turn (round robin) so a large
request shares each batch with small ones instead of going first as a block.

A batch gathers items of several requests, which may be pinned to different versions. Each
version's items are formatted with that version's tokenizer (``format_text``, the one input
format training used), sorted by token length, and cut into sub-batches whose padded size
(rows x longest row) stays within ``batch_tokens``. The cuts weigh padding against the fixed
cost of one more forward pass (``plan_sub_batches``), so on a CPU, where a pass costs little
beyond its tokens, unlike lengths are not padded to each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from ramo_stream.registry.model import encode, format_text, rewards
from ramo_stream.schemas import ChatMessage
from ramo_stream.serve.reward_protocol import DeadlineExceeded


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One registry version in memory. Compared by identity: a batch holds the object it
    started with, however the service's table of versions changes meanwhile."""

    version: int
    model: Any
    tokenizer: Any
    device: Any
    max_length: int  # tokens the model takes (its position embeddings, its tokenizer)


class BatchItem(NamedTuple):
    loaded: LoadedModel
    prompt: str | Sequence[ChatMessage]
    response: str


# rows, padded width, real (non-pad) tokens of one forward pass
ForwardHook = Callable[[int, int, int], None]


def model_max_length(model: Any, tokenizer: Any, default: int = 1 << 20) -> int:
    """Longest input the model takes: its position embeddings and its tokenizer's limit
    (a tokenizer without one reports a huge sentinel, ignored here)."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min([n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] or [default])


def plan_sub_batches(
    lengths: Sequence[int], budget: int, pass_overhead: int = 0
) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into groups of the least total cost.

    A group pads to its longest row (its first index), so a pass over it costs
    ``rows x longest`` padded tokens, plus ``pass_overhead``: what one forward pass costs
    besides its tokens (launches, Python, weight reads), in tokens. The plan minimises
    ``passes x pass_overhead + padded tokens`` with ``rows x longest <= budget``; a row
    longer than the budget gets a group of its own. With a small overhead (a CPU) rows of
    unlike lengths go in separate passes rather than pad; with a large one (a GPU) few,
    full passes win.

    Rows sorted by length can be cut into runs without losing the optimum (swapping two
    rows across groups never lowers both widths), so this is a dynamic programme over cut
    points: ``best[j]`` is the cost of the ``j`` longest rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    width = [lengths[i] for i in order]
    n = len(order)
    best = [0] * (n + 1)
    start = [0] * (n + 1)  # start[j]: where the last group of the best plan of j rows starts
    for j in range(1, n + 1):
        best[j], start[j] = best[j - 1] + pass_overhead + width[j - 1], j - 1  # row alone
        for i in range(j - 2, -1, -1):  # group i..j-1: widening it to the left
            rows = j - i
            if rows * width[i] > budget:
                break  # widths only grow leftwards: no longer group fits either
            cost = best[i] + pass_overhead + rows * width[i]
            if cost <= best[j]:  # ties: the longer group (fewer passes)
                best[j], start[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    groups.reverse()
    return groups


def score_items(
    items: Sequence[BatchItem],
    max_length: int,
    batch_tokens: int,
    on_forward: ForwardHook | None = None,
    pass_overhead: int = 0,
) -> list[float]:
    """One reward per item, in order. Blocking (torch); call it off the event loop."""
    import torch

    out = [0.0] * len(items)
    by_model: dict[int, tuple[LoadedModel, list[int]]] = {}
    for i, it in enumerate(items):
        by_model.setdefault(id(it.loaded), (it.loaded, []))[1].append(i)
    for loaded, idxs in by_model.values():
        tok, limit = loaded.tokenizer, min(max_length, loaded.max_length)
        texts = [format_text(tok, items[i].prompt, items[i].response) for i in idxs]
        ids = tok(texts, truncation=True, max_length=limit)["input_ids"]
        lengths = [len(x) for x in ids]
        for group in plan_sub_batches(lengths, batch_tokens, pass_overhead):
            batch = encode(tok, [texts[j] for j in group], limit)
            batch = {k: v.to(loaded.device) for k, v in batch.items()}
            with torch.inference_mode():
                values = rewards(loaded.model, batch).float().tolist()
            for j, value in zip(group, values, strict=True):
                out[idxs[j]] = float(value)
            if on_forward is not None:
                on_forward(len(group), lengths[group[0]], sum(lengths[j] for j in group))
    return out


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
