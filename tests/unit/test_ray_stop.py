"""The quiet Serve stop drops exactly the lines a clean stop makes Ray print."""

from __future__ import annotations

import io
import sys

from ramo_stream.cli.ray_stop import quiet_ray_stop

# As Ray's error listener printed it in a test's teardown on this machine (ray 2.60).
NOISE = (
    "\x1b[33m(raylet)\x1b[0m Task ServeController.graceful_shutdown failed. There are infinite"
    " retries remaining, so the task will be retried. Error: The actor is dead because it was"
    " killed by `ray.kill`."
)


def test_only_the_shutdown_lines_are_dropped() -> None:
    real = io.StringIO()
    sys_stdout, sys.stdout = sys.stdout, real
    try:
        with quiet_ray_stop():
            print("stopping: ingest, labeler, then the trainer")
            print(NOISE)
            print(NOISE.replace("graceful_shutdown", "listen_for_change"))
            sys.stdout.write("(raylet) Task Trainer.step failed: killed by `ray.kill`")  # partial
            sys.stdout.write(" and more\n")  # not Serve's controller: kept
            sys.stdout.write("no newline yet")
        print("after")
    finally:
        sys.stdout = sys_stdout
    assert real.getvalue().splitlines() == [
        "stopping: ingest, labeler, then the trainer",
        "(raylet) Task Trainer.step failed: killed by `ray.kill` and more",
        "no newline yetafter",
    ]
