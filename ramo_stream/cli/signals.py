"""One way to stop a long-running command: SIGTERM (Kubernetes, systemd, `kill`) and SIGINT
(Ctrl-C) both ask it to drain and exit 0; a second signal aborts at once.

``ray.init()`` installs its own SIGTERM handler (``sys.exit``), which skips the command's
shutdown and leaves Ray's agents running under pid 1. So a command enters ``StopSignals``
before starting Ray, and calls ``install()`` again right after ``ray.init()``::

    with StopSignals("reward service") as signals:
        ray.init(...)
        signals.install()  # ray.init replaced the SIGTERM handler
        try:
            ...  # serve until signals.stop is set
        finally:
            serve.shutdown(); ray.shutdown()
    print("reward service stopped")

Handlers can only be installed from the main thread; elsewhere (a command run inside a
thread by a test or by `ramo up`) ``StopSignals`` installs nothing and ``stop`` is only
set by the caller.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Sets ``stop`` on the first SIGINT/SIGTERM; raises KeyboardInterrupt on the second,
    so a drain that hangs can still be cut short. Restores the previous handlers on exit."""

    def __init__(self, what: str, stop: threading.Event | None = None) -> None:
        self.what = what
        self.stop = stop if stop is not None else threading.Event()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)  # the handler from before the first call

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise KeyboardInterrupt  # the second signal: stop draining
        self.signal_name = signal.Signals(signum).name
        print(f"{self.signal_name}: stopping the {self.what} (draining; a second"
              " signal aborts)", file=sys.stderr, flush=True)  # fmt: skip
        self.stop.set()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
