"""A quiet stop of Ray Serve: no error-looking lines when nothing went wrong."""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from typing import TextIO

# What Ray prints when Serve stops: the driver's calls to the Serve controller that were in
# flight (its long poll, its graceful_shutdown) fail because serve.shutdown() kills the
# controller with ray.kill. Ray's error listener prints each as "(raylet) Task
# ServeController.<method> failed ... killed by `ray.kill`" on stdout, whatever
# log_to_driver says; deleting the apps first does not avoid them. They mean the stop worked.
_SHUTDOWN_NOISE = ("Task ServeController.", "killed by `ray.kill`")


class _DropShutdownNoise(io.TextIOBase):
    """sys.stdout, less the lines that a clean Serve stop makes Ray print (whole lines are
    held until their newline, then written or dropped)."""

    def __init__(self, out: TextIO) -> None:
        self.out, self._line = out, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            if not all(marker in line for marker in _SHUTDOWN_NOISE):
                self.out.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self._line and not all(marker in self._line for marker in _SHUTDOWN_NOISE):
            self.out.write(self._line)
            self._line = ""
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def fileno(self) -> int:
        return self.out.fileno()


@contextlib.contextmanager
def quiet_ray_stop() -> Iterator[None]:
    """While inside, Ray's "Task ServeController... killed by `ray.kill`" lines are dropped
    from stdout (and nothing else is)."""
    real = sys.stdout
    sys.stdout = _DropShutdownNoise(real)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = real
