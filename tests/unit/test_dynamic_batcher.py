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
