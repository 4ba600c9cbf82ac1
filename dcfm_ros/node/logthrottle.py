"""Log throttling per reason: one line per kind of fault per period, with the count it held back.

rclpy's throttle_duration_sec throttles per call site, so one noisy fault (say a stream of wrong
steps) would hide every other kind of bad input logged from the same line.
"""

from __future__ import annotations

import threading
import time


class ReasonThrottle:
    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, reason: str) -> int | None:
        """None: hold this one back. Otherwise log it, and the int is how many of `reason` were held
        back since its last line."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self.period_s:
                self._held[reason] = self._held.get(reason, 0) + 1
                return None
            self._last[reason] = now
            return self._held.pop(reason, 0)
