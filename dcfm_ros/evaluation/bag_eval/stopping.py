"""SIGINT/SIGTERM during a run: the first one asks the run to stop, every later one is absorbed.

The handler only records the signal (and says so on stderr with os.write, which is safe to call
while the main thread is in the middle of a print); the run polls `requested` where it waits
(node start-up, playback, the analysis pass), stops the node, and writes a report of what it had,
marked incomplete. So no KeyboardInterrupt is ever raised, whatever the signal sequence.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.count = 0
        self._saved: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a program stopped by that signal."""
        return 128 + int(self.signum or 0)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
            os.write(2, f"dcfm-bag-eval: {signal.Signals(signum).name}: stopping the node and writing a "
                        "report of what was recorded (further signals are ignored)\n".encode())

    def install(self) -> StopRequest:
        """Take over SIGINT/SIGTERM (only possible in the main thread; elsewhere, e.g. main() called
        from a worker thread, the caller's handlers stay)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in SIGNALS:
            self._saved[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)
        self._saved.clear()


class Interrupted(Exception):  # noqa: N818 (not an error: the run was asked to stop)
    """Raised where a stop request ends a phase that has nothing to hand on (e.g. node start-up)."""
