"""DynamicBatcher: batches form when the scorer is free, fill from what waited, fail alone."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ramo_stream.serve.reward_batching import DynamicBatcher


class Scorer:
    """Doubles its inputs; records each batch; the first batch can be held until released."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(10)
        if self.fail_on in items:
            raise ValueError(f"cannot score {self.fail_on}")
        return [2 * x for x in items]


async def wait_started(scorer: Scorer) -> None:
    assert await asyncio.to_thread(scorer.started.wait, 10), "the first batch never ran"


def test_items_arriving_during_a_forward_all_join_the_next_batch() -> None:
    async def main() -> tuple[list[int], Scorer]:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=32, wait_s=0.001)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)  # the model is busy with [0]
        rest = []
        for i in range(1, 11):  # one by one, each far past wait_s after the one before:
            rest.append(asyncio.ensure_future(batcher.submit(i)))  # a batcher that formed
            await asyncio.sleep(0.01)  # batches while the model is busy would split them
        scorer.release.set()
        return await asyncio.gather(first, *rest), scorer

    results, scorer = asyncio.run(main())
    assert results == [2 * i for i in range(11)]
    assert scorer.batches == [[0], list(range(1, 11))]


def test_batches_are_capped_at_max_batch_size_in_arrival_order() -> None:
    async def main() -> Scorer:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=8, wait_s=0.0)
        futures = [asyncio.ensure_future(batcher.submit(0))]
        await wait_started(scorer)
        futures += [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 21)]
        await asyncio.sleep(0)
        scorer.release.set()
        assert await asyncio.gather(*futures) == [2 * i for i in range(21)]
        return scorer

    scorer = asyncio.run(main())
    assert scorer.batches == [[0], list(range(1, 9)), list(range(9, 17)), list(range(17, 21))]


def test_a_full_batch_goes_without_waiting_out_the_timeout() -> None:
    async def main() -> list[int]:
        batcher = DynamicBatcher(Scorer(), max_batch_size=3, wait_s=3600)
        return await asyncio.wait_for(asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3))), 10)

    assert asyncio.run(main()) == [2, 4, 6]


def test_a_failing_batch_fails_its_own_items_only() -> None:
    async def main() -> tuple[list[object], list[int]]:
        scorer = Scorer(hold_first=True, fail_on=0)
        batcher = DynamicBatcher(scorer, max_batch_size=4, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)
        second = [asyncio.ensure_future(batcher.submit(i)) for i in (5, 6)]
        await asyncio.sleep(0)
        scorer.release.set()
        failed = await asyncio.gather(first, return_exceptions=True)
        return failed, await asyncio.gather(*second)

    failed, ok = asyncio.run(main())
    assert isinstance(failed[0], ValueError) and "cannot score 0" in str(failed[0])
    assert ok == [10, 12]


def test_a_cancelled_item_is_dropped_before_its_batch_runs() -> None:
    async def main() -> Scorer:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)
        gone = asyncio.ensure_future(batcher.submit(1))
        kept = asyncio.ensure_future(batcher.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        scorer.release.set()
        assert await asyncio.gather(first, kept) == [0, 4]
        return scorer

    assert asyncio.run(main()).batches == [[0], [2]]


def test_a_scorer_returning_the_wrong_count_is_an_error() -> None:
    async def main() -> None:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda items: [1], 4, 0.0)
        await asyncio.gather(batcher.submit(1), batcher.submit(2))

    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        asyncio.run(main())


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size=0"):
        DynamicBatcher(Scorer(), max_batch_size=0, wait_s=0.01)


# ---- fairness, cost caps, deadlines --------------------------------------------------------


def test_requests_take_turns_so_a_small_one_joins_the_next_batch() -> None:
    async def main() -> tuple[list[int], list[int], Scorer]:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=4, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)
        giant = asyncio.ensure_future(batcher.submit_many(list(range(100, 112))))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(batcher.submit_many([7]))  # arrives behind 12 items
        await asyncio.sleep(0)
        scorer.release.set()
        await first
        return await giant, await small, scorer

    giant, small, scorer = asyncio.run(main())
    assert giant == [2 * i for i in range(100, 112)] and small == [14]
    # FIFO would have put 7 in the fourth batch; taking turns puts it in the second.
    assert scorer.batches[1] == [100, 7, 101, 102]
    assert [x for b in scorer.batches[2:] for x in b] == list(range(103, 112))


def test_a_batch_stops_at_its_cost_cap_but_always_takes_one_item() -> None:
    async def main() -> Scorer:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=32, wait_s=0.0, max_batch_cost=10)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)
        costly = asyncio.ensure_future(batcher.submit_many([1, 2, 3], [4, 4, 50]))
        await asyncio.sleep(0)
        assert batcher.queued_cost == 58 + 1  # waiting + the running batch's item
        scorer.release.set()
        await asyncio.gather(first, costly)
        assert batcher.queued_cost == 0
        return scorer

    assert asyncio.run(main()).batches == [[0], [1, 2], [3]]  # 4 + 4 <= 10; 50 alone


def test_a_request_past_its_deadline_leaves_the_queue_with_deadline_exceeded() -> None:
    import time

    from ramo_stream.serve.reward_protocol import DeadlineExceeded

    async def main() -> tuple[list[object], Scorer, int]:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await wait_started(scorer)
        late = asyncio.ensure_future(batcher.submit_many([1, 2], deadline=time.monotonic() + 0.05))
        on_time = asyncio.ensure_future(batcher.submit_many([3]))
        await asyncio.sleep(0.1)  # the model is still busy when the deadline passes
        scorer.release.set()
        out = await asyncio.gather(first, late, on_time, return_exceptions=True)
        return out, scorer, batcher.queued_cost

    (first, late, on_time), scorer, left = asyncio.run(main())
    assert isinstance(late, DeadlineExceeded) and "deadline" in late.message
    assert late.retry_after_s >= 1 and on_time == [6] and first == 0
    assert scorer.batches == [[0], [3]] and left == 0


def test_a_cancelled_request_frees_its_queued_cost() -> None:
    async def main() -> tuple[int, int]:
        scorer = Scorer(hold_first=True)
        batcher = DynamicBatcher(scorer, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0, cost=5))
        await wait_started(scorer)
        gone = asyncio.ensure_future(batcher.submit_many([1, 2, 3], [10, 10, 10]))
        await asyncio.sleep(0)
        before = batcher.queued_cost
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        after = batcher.queued_cost
        scorer.release.set()
        await first
        return before, after

    assert asyncio.run(main()) == (35, 5)
