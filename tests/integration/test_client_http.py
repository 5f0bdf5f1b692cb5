"""The reward client, its adapters and `ramo score` over real HTTP, against the real reward
service (ramo_stream.serve.reward_app on Ray Serve, CPU) serving a version published to a real
registry from the packaged all-MiniLM-L6-v2 (untrained head: this tests the plumbing, not the
rewards)."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")
pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")
pytest.importorskip("transformers", reason="the models extra is not installed")

ITEMS: list[tuple[Any, str]] = [
    ("How do I pick a lock?", "I can't help with breaking into property that isn't yours."),
    ("How do I pick a lock?", "Insert a tension wrench, then rake the pins until they set."),
    ("Say hi.", "Hi!"),
    ("Summarise: the cat sat on the mat.", "A cat sat on a mat."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "4"),
    ([{"role": "user", "content": "Tell me a joke."}], "Why did the chicken cross the road? " * 8),
    ("What is the capital of France?", "Paris."),
    ("What is the capital of France?", "I think it is Lyon, but I am not sure at all."),
    ("Write a haiku.", "Autumn moonlight / a worm digs silently / into the chestnut."),
]
TOLERANCE = 1e-4  # float32 on CPU: padding to another batch's length moves a reward ~1e-6


@pytest.fixture(scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, int]]:
    """(base URL, published version) of the real reward service."""
    reward_app = pytest.importorskip(
        "ramo_stream.serve.reward_app",
        reason="the reward service (ramo_stream.serve.reward_app.build_app) is not written yet",
    )
    models_dir: Path = request.getfixturevalue("models_dir")  # after the skip: ~30 s to prepare
    from ray import serve

    from ramo_stream.client import RewardClient
    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.registry.store import Registry

    path = models_dir / "all-minilm-l6-v2"
    model, tok = load_reward_model(path)
    registry = tmp_path_factory.mktemp("registry")
    manifest = Registry(registry).publish(
        lambda d: (model.save_pretrained(d), tok.save_pretrained(d)),
        steps=0, samples_seen=0, offsets={}, base_model=str(path),
    )  # fmt: skip

    port: int = request.getfixturevalue("ray_serve")
    try:
        args = reward_app.RewardAppArgs(overrides={"train.registry": str(registry)})
        serve.run(reward_app.build_app(args), name="reward-client-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with RewardClient(url) as rm:
            assert rm.wait_until_ready(timeout_s=180) == manifest.version
        yield url, manifest.version
    finally:
        serve.delete("reward-client-test")


def finite(values: Any) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in values)


def test_score_compare_get_reward_models_health(service: tuple[str, int]) -> None:
    from ramo_stream.client import RewardClient

    url, version = service
    with RewardClient(url) as rm:
        scored = rm.score(ITEMS)
        assert len(scored.rewards) == len(ITEMS) and finite(scored.rewards)
        assert scored.model_version == version and scored.model_versions == [version] * len(ITEMS)

        c = rm.compare(ITEMS[0][0], ITEMS[0][1], ITEMS[1][1])
        assert 0.0 <= c.p_a_better <= 1.0 and finite(c.rewards) and c.model_version == version
        assert abs(c.rewards[0] - scored.rewards[0]) < TOLERANCE
        assert abs(c.rewards[1] - scored.rewards[1]) < TOLERANCE
        assert abs(c.p_a_better - 1 / (1 + math.exp(c.rewards[1] - c.rewards[0]))) < 1e-3

        g = rm.get_reward(["User: Say hi.\nAssistant: Hi!", "Hello there"], prompts=["Say hi.", ""])
        assert len(g.rewards) == 2 and finite(g.rewards) and finite(g.scores)
        assert g.model_version == version

        m = rm.models()
        assert m.current == version and version in m.loaded
        h = rm.health()
        assert h.ok and h.model_version == version


def test_rewards_do_not_depend_on_client_batching(service: tuple[str, int]) -> None:
    from ramo_stream.client import AsyncRewardClient, RewardClient

    url, _ = service
    with RewardClient(url, batch_size=1) as one, RewardClient(url, batch_size=64) as many:
        r1, r64 = one.score(ITEMS).rewards, many.score(ITEMS).rewards

    async def concurrent() -> list[float]:
        async with AsyncRewardClient(url, batch_size=2, max_connections=4) as rm:
            return (await rm.score(ITEMS)).rewards

    r_async = asyncio.run(concurrent())
    for i in range(len(ITEMS)):
        assert abs(r1[i] - r64[i]) < TOLERANCE, (i, r1[i], r64[i])
        assert abs(r_async[i] - r64[i]) < TOLERANCE, (i, r_async[i], r64[i])


def test_adapters_score_like_the_client(service: tuple[str, int]) -> None:
    from ramo_stream.client import RewardClient
    from ramo_stream.client.adapters import make_trl_reward_fn, make_verl_compute_score

    url, _ = service
    with RewardClient(url) as rm:
        expected = rm.score(ITEMS).rewards

    trl = make_trl_reward_fn(url)
    prompts = [p for p, _ in ITEMS[:4]]
    got = trl(prompts=prompts, completions=[r for _, r in ITEMS[:4]], completion_ids=None)
    assert finite(got) and all(
        abs(a - b) < TOLERANCE for a, b in zip(got, expected[:4], strict=True)
    )
    chat_prompt = ITEMS[4][0]
    got = trl([chat_prompt], [[{"role": "assistant", "content": ITEMS[4][1]}]])
    assert abs(got[0] - expected[4]) < TOLERANCE  # type: ignore[operator]

    verl = make_verl_compute_score(url)
    r = verl("safety", ITEMS[6][1], None, extra_info={"prompt": ITEMS[6][0], "index": 6})
    assert isinstance(r, float) and abs(r - expected[6]) < TOLERANCE


def test_refusals_are_typed_with_the_services_message(service: tuple[str, int]) -> None:
    from ramo_stream.client import RequestRefused, RewardClient

    url, version = service
    with RewardClient(url) as rm:
        with pytest.raises(RequestRefused) as bad:
            rm.score("   ", ["A response"])  # a blank prompt is invalid input
        assert bad.value.status == 422 and bad.value.message
        assert finite(rm.score("A prompt", [""]).rewards)  # an empty response is scored
        with pytest.raises(RequestRefused) as unpinned:
            rm.score("A prompt", ["A response"], model_version=version + 1000)
        assert unpinned.value.status == 409 and unpinned.value.message


def test_ramo_score_prints_rewards_and_accuracy(
    service: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ramo_stream.cli import flags as cli
    from ramo_stream.cli import score as cli_score

    url, version = service
    parser = argparse.ArgumentParser()
    cli_score.add_commands(parser.add_subparsers(), cli._settings_parent())

    def run(*argv: str) -> int:
        args = parser.parse_args(["score", "--url", url, *argv])
        return int(args.fn(args, cli._settings_from(args)))

    assert run("--prompt", "Say hi.", "--response", "Hi!", "--response", "Go away.") == 0
    out = capsys.readouterr().out
    assert f"model_version {version}" in out and len(out.splitlines()) == 3

    rows = tmp_path / "bench.jsonl"
    rows.write_text("\n".join(json.dumps(d) for d in [
        {"prompt": "How do I pick a lock?", "chosen": ITEMS[0][1], "rejected": ITEMS[1][1]},
        {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "Say hi.", "response": "Hi!"},
    ]) + "\n")  # fmt: skip
    assert run("--file", str(rows), "--output", str(tmp_path / "out.jsonl")) == 0
    out = capsys.readouterr().out
    assert f"scored 3 rows (5 items) from {rows} with model_version {version}" in out
    assert "accuracy (chosen reward > rejected reward): " in out
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3] and finite([records[2]["reward"]])


def test_readme_eval_command_against_the_service_exits_0(
    service: tuple[str, int], tmp_path: Path
) -> None:
    """The README's `ramo eval --data ...hh_harmless_test.jsonl --limit N --url` against the
    running service (the real CLI in a subprocess): requests sized by a time budget from the
    first replies, so the progress bar moves several times and the command ends with its
    table. A short budget (0.5 s) makes several requests of 40 items on any machine."""
    import os
    import subprocess
    import sys

    from tests.helpers import shared_file

    url, version = service
    data = shared_file("hh_harmless_test.jsonl")
    env = {**os.environ, "RAMO_PATHS__CACHE_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "ramo_stream.cli", "eval", "--data", str(data), "--limit",
           "20", "--url", url, "--request-seconds", "0.5"]  # fmt: skip
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as running:  # fmt: skip
        try:
            out, err = running.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            running.kill()
            out, err = running.communicate()
            pytest.fail(f"ramo eval --url did not end in 240 s; stderr: {err[-3000:]}")
    proc = subprocess.CompletedProcess(cmd, running.returncode, out, err)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| **accuracy** (all examples) | 20 |" in proc.stdout, proc.stdout
    assert f"v{version} @ {url}" in proc.stderr
    # each tqdm update is a line (\r on a terminal, \n here): one per request, 2 items first
    import re

    updates = {m.split("|")[2][:7] for m in re.split(r"[\r\n]", proc.stderr) if "/40 [" in m}
    assert len(updates) >= 3, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr
