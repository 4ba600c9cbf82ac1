"""The hand-over between the camera callback (executor thread) and the inference worker thread.

`put` never blocks, so the executor keeps serving subscriptions, parameters and diagnostics while
the engine runs. keep_latest=True is drop_policy 'latest': a one-slot buffer where a new frame
replaces the waiting one (which counts as dropped). keep_latest=False is drop_policy 'none': an
unbounded FIFO, every frame is processed in arrival order.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FrameQueue(Generic[T]):
    def __init__(self, keep_latest: bool) -> None:
        self.keep_latest = keep_latest
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: T) -> bool:
        """Add a frame; returns True when an older waiting frame was dropped to make room."""
        with self._cond:
            if self._closed:
                return False
            dropped = False
            if self.keep_latest and self._items:
                self._items.clear()
                dropped = True
            self._items.append(item)
            self._cond.notify()
            return dropped

    def get(self) -> T | None:
        """The next frame, waiting for one; None once the queue is closed (remaining frames are dropped)."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            return self._items.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
