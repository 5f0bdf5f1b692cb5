"""Admission control of a reward-model replica (pure): token estimates, the deadline header,
the measured speed, and which requests are refused with which error."""

from __future__ import annotations

import pytest

from ramo_stream.schemas import ChatMessage
from ramo_stream.serve.reward_admission import (
    Admission,
    Throughput,
    estimate_tokens,
    request_timeout,
)
from ramo_stream.serve.reward_protocol import InvalidInput, Overloaded, TooLarge


def test_token_estimate_counts_prompt_and_response_and_is_capped() -> None:
    assert estimate_tokens("", "", 512) == 8  # the template alone
    assert estimate_tokens("a" * 400, "b" * 400, 512) == 8 + 200
    chat = [ChatMessage(role="user", content="a" * 40), {"role": "assistant", "content": "b" * 40}]
    assert estimate_tokens(chat, "c" * 40, 512) == 8 + 30
    assert estimate_tokens("a" * 1_000_000, "", 512) == 512  # truncated to max_length


@pytest.mark.parametrize("header", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_timeout_header_is_422_naming_it(header: str) -> None:
    with pytest.raises(InvalidInput, match="X-Request-Timeout"):
        request_timeout(header, 10.0, 60.0)


def test_timeout_header_defaults_and_is_capped() -> None:
    assert request_timeout(None, 10.0, 60.0) == 10.0
    assert request_timeout(" ", 10.0, 60.0) == 10.0
    assert request_timeout("2.5", 10.0, 60.0) == 2.5
    assert request_timeout("600", 10.0, 60.0) == 60.0


def test_throughput_weighs_batches_by_model_time() -> None:
    t = Throughput(half_life_s=1e9)  # no fading: a plain time-weighted mean
    assert t.tokens_per_s is None
    t.observe(1000, 1.0)
    t.observe(10, 0.01)  # a tiny batch barely moves a speed measured over a second
    assert t.tokens_per_s == pytest.approx(1010 / 1.01)
    t.observe(5, 0.0)  # no time: ignored
    faded = Throughput(half_life_s=1.0)
    faded.observe(1000, 1.0)
    for _ in range(10):
        faded.observe(100, 1.0)  # the speed moves to the recent 100 tokens/s
    assert faded.tokens_per_s == pytest.approx(100, rel=0.01)


def admission(rate: float | None, cap: int = 10_000) -> Admission:
    t = Throughput()
    if rate is not None:
        t.observe(int(rate), 1.0)
    return Admission(cap, t)


def test_admits_what_fits_before_the_deadline() -> None:
    admission(1000).check(queued=[3000], cost=1000, timeout_s=5.0)  # 2 s of 5: admitted
    admission(None).check(queued=[9000], cost=1000, timeout_s=0.1)  # no speed yet: cap only


def test_refuses_past_the_token_cap_with_retry_after() -> None:
    with pytest.raises(Overloaded, match="max_queued_tokens=10000") as e:
        admission(1000).check(queued=[9500], cost=1000, timeout_s=None)
    assert e.value.retry_after_s == pytest.approx(1.0)  # 500 tokens over, at 1000/s: >= 1 s
    with pytest.raises(Overloaded) as e:
        admission(100).check(queued=[5000, 4500], cost=1000, timeout_s=None)
    assert e.value.retry_after_s == pytest.approx(5.0)


def test_refuses_what_would_finish_past_its_deadline() -> None:
    # Processor sharing: each of three requests of 3000 uses at most the new one's 500.
    with pytest.raises(Overloaded, match="past its deadline of 2 s") as e:
        admission(1000).check(queued=[3000, 3000, 3000], cost=500, timeout_s=2.0)
    assert e.value.retry_after_s == pytest.approx(1.0)  # 2 s of work for 0.8 x 2 s: >= 1
    assert e.value.body()["error"]["type"] == "overloaded"
    with pytest.raises(Overloaded):  # 4.5 s of 5: inside the deadline, not its headroom
        admission(1000).check(queued=[500] * 8, cost=500, timeout_s=5.0)


def test_a_small_request_beside_a_giant_is_admitted_a_second_giant_is_not() -> None:
    giant = 60_000  # a minute of work at 1000 tokens/s
    admission(1000, cap=1 << 20).check(queued=[giant], cost=100, timeout_s=5.0)  # 0.2 s
    with pytest.raises(Overloaded):
        admission(1000, cap=1 << 20).check(queued=[giant], cost=3000, timeout_s=5.0)  # 6 s


def test_a_request_that_can_never_fit_is_413_not_a_retry() -> None:
    with pytest.raises(TooLarge, match="max_queued_tokens=10000"):
        admission(1000).check(queued=[], cost=10_001, timeout_s=None)
    with pytest.raises(TooLarge, match="over its deadline of 2 s"):
        admission(1000).check(queued=[], cost=3000, timeout_s=2.0)


def test_replica_rates_sum_the_replicas_heard_from_lately(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ramo_stream.serve import reward_admission

    clock = [100.0]
    monkeypatch.setattr(reward_admission.time, "monotonic", lambda: clock[0])
    rates = reward_admission.ReplicaRates(fresh_s=30.0)
    assert rates.tokens_per_s is None
    rates.report("a", 1000.0)
    rates.report("b", None)  # not measured yet: no figure
    assert rates.tokens_per_s == 1000.0
    clock[0] += 20
    rates.report("b", 500.0)
    rates.report("a", 800.0)  # a newer figure replaces the older
    assert rates.tokens_per_s == 1300.0
    clock[0] += 25  # a's last report is still fresh, b's too
    assert rates.tokens_per_s == 1300.0
    clock[0] += 10  # both older than 30 s: a dead or idle replica stops counting
    assert rates.tokens_per_s is None
    Admission(10_000, rates).check(queued=[9000], cost=1000, timeout_s=0.1)  # cap only


def test_the_prediction_learns_how_much_slower_the_real_service_is() -> None:
    a = admission(1000)
    assert a.check(queued=[1000], cost=1000, timeout_s=5.0) == pytest.approx(2.0)
    for _ in range(60):
        a.calibrate(predicted_s=2.0, actual_s=5.0)  # everything takes 2.5x the prediction
    assert a.slowdown == pytest.approx(2.5, rel=0.01)
    with pytest.raises(Overloaded):  # 2 s predicted is 5 s really: past 0.8 x 5 s
        a.check(queued=[1000], cost=1000, timeout_s=5.0)
    a.calibrate(predicted_s=1.0, actual_s=1000.0)  # one outlier moves it a bounded step
    assert a.slowdown < 2.5 + 0.1 * 4.0
