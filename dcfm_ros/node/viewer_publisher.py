"""Viewer outputs off the inference thread: latest-only slots per topic and one publisher worker.

Why: colouring, blending, encoding and publishing ~1 MB of viewer images per frame on the inference
thread made a person watching the overlay slow the robot's labels (issue 21). Here the inference
thread only offers the frame (a dict assignment under a lock, never a wait); the worker makes each
viewer message and publishes it. Each topic has a slot that holds the newest frame not yet
published: an offer into a full slot replaces the older frame, which is counted as skipped for that
topic (diagnostics `viewer_skipped_<topic>`). So a viewer that is slower than the camera sees the
newest frame, never a growing backlog, and the frame rate of segmentation/labels does not depend on
it. A topic's next message also waits until its readers acknowledged the last one (ACK_POLL_S), so
a reader that receives slowly paces its own topic, and the worker thread runs at a lower CPU
priority than the node (WORKER_NICENESS).

    DCFM_NODE_VIEWER_DELAY_S=0.5 dcfm_node ...

makes the worker wait that long before each viewer message (a slow viewer path, for the tests that
show the labels do not wait for it). Read once at start-up.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import cv2
import numpy as np
from rclpy.duration import Duration

from dcfm_ros.engine.visualize import colorize, overlay

DELAY_ENV = "DCFM_NODE_VIEWER_DELAY_S"
# A topic's next message waits until every reader acknowledged the last one (polled every ACK_POLL_S),
# so a reader that receives slowly (a Wi-Fi link, a busy process losing UDP fragments that DDS then
# repairs) gets the newest frame at its own pace instead of a pile of half-delivered ones; after
# ACK_WAIT_MAX_S without an acknowledgement the next one goes out anyway (a reader that went away).
ACK_POLL_S = 0.005
ACK_WAIT_MAX_S = 1.0
_NO_WAIT = Duration(nanoseconds=0)
# The worker runs this much nicer than the process (Linux: a thread has its own nice value), so on a
# busy machine the inference thread and the DDS threads that carry the labels get the CPU first.
WORKER_NICENESS = 10

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LatestSlots(Generic[K, V]):
    """One slot per key holding the newest item not yet taken; `put` never blocks.

    put into a full slot replaces the item there and counts one skip for that key; `take_all`
    waits until some slot is full (or close()) and empties every slot at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[K, V] = {}
        self._skipped: dict[K, int] = {}
        self._closed = False

    def put(self, key: K, item: V) -> bool:
        """Store `item` for `key`; True when it replaced an item nobody took (a skip)."""
        with self._cond:
            replaced = key in self._items
            if replaced:
                self._skipped[key] = self._skipped.get(key, 0) + 1
            self._items[key] = item
            self._cond.notify()
            return replaced

    def put_back(self, key: K, item: V) -> None:
        """Return a taken item that could not be used yet; a newer one already there wins (a skip)."""
        with self._cond:
            if key in self._items:
                self._skipped[key] = self._skipped.get(key, 0) + 1
            else:
                self._items[key] = item

    def take_all(self, timeout: float | None = None) -> dict[K, V]:
        """Every full slot's item (emptying them); {} after close() or when `timeout` s passed."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if self._closed:
                return {}
            items, self._items = self._items, {}
            return items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def skipped(self) -> dict[K, int]:
        with self._cond:
            return dict(self._skipped)


@dataclass
class ViewerFrame:
    """What the viewer outputs of one frame are made from (arrays owned by this frame, never
    written to afterwards). The colour image is made once per frame, for whichever topic needs it
    first (only the worker thread touches it)."""

    header: Any
    # (H, W, 3) uint8 camera image, or what makes it (a reduced decode's full image: decoded here,
    # on the worker, and only for a topic that needs the pixels)
    rgb: np.ndarray | Callable[[], np.ndarray]
    labels: np.ndarray  # (H, W) uint8/uint16
    palette: Any
    alpha: float
    jpeg_quality: int
    confidence_u8: np.ndarray | None = None  # the engine's small map, resized by the topic

    @functools.cached_property
    def color(self) -> np.ndarray:
        return colorize(self.labels, self.palette)

    @functools.cached_property
    def overlay(self) -> np.ndarray:
        rgb = self.rgb if isinstance(self.rgb, np.ndarray) else self.rgb()
        return overlay(np.ascontiguousarray(rgb), self.color, self.alpha)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """RGB -> JPEG bytes of the BGR image (what image_transport's compressed plugin sends)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    """RGB -> PNG bytes of the BGR image: lossless, level 1 with the run-length strategy (a colour
    mask is flat regions: 6 kB for a 480x360 CamVid mask, smaller than JPEG q80's 14 kB, which is also
    wrong by more than 16 levels on 7 % of the pixels; measured in docs/viewers.md)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


@dataclass(frozen=True)
class ViewerTopic:
    """One viewer output: its diagnostics name, its publisher and how its message is made."""

    name: str  # "color", "overlay_compressed", "mask_Road", ... (diagnostics keys)
    publisher: Any
    make: Callable[[ViewerFrame], Any]  # ViewerFrame -> message, or None to publish nothing

    def wanted(self) -> bool:
        return self.publisher.get_subscription_count() > 0


class ViewerPublisher:
    """The worker that makes and publishes viewer outputs (see the module docstring).

    `offer(frame_factory)` from the inference thread: the topics with a subscriber now get the frame
    (built by `frame_factory()` only when one topic wants it) in their slot, at most `rate_hz` times
    a second (0: every frame); frames left out by the rate cap are counted as `viewer_rate_skipped`.
    `on_published(names)` and `on_error(exc)` are called from the worker thread.
    """

    def __init__(self, topics: list[ViewerTopic], on_published: Callable[[list[str]], None],
                 on_error: Callable[[Exception], None], name: str = "dcfm-viewers") -> None:
        self.topics = topics
        self._slots: LatestSlots[str, ViewerFrame] = LatestSlots()
        self._by_name = {t.name: t for t in topics}
        self._on_published, self._on_error = on_published, on_error
        self._last_offer = -float("inf")
        self._rate_skipped = 0
        text = os.environ.get(DELAY_ENV, "").strip()
        try:
            self._delay = float(text) if text else 0.0
        except ValueError:
            self._delay = -1.0
        if not self._delay >= 0:  # also NaN
            raise ValueError(f"{DELAY_ENV} must be a number of seconds >= 0, got {text!r}")
        self._sent_at: dict[str, float] = {}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._slots.close()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def offer(self, frame_factory: Callable[[], ViewerFrame], rate_hz: float) -> list[str]:
        """Put this frame into the slot of every wanted topic; the names offered to (maybe [])."""
        wanted = [t.name for t in self.topics if t.wanted()]
        if not wanted:
            return []
        now = time.monotonic()
        # 5 % slack: a 10 Hz cap on a 30 Hz camera takes every third frame, not every fourth.
        if rate_hz > 0 and now - self._last_offer < 0.95 / rate_hz:
            self._rate_skipped += 1
            return []
        self._last_offer = now
        frame = frame_factory()
        for name in wanted:
            self._slots.put(name, frame)
        return wanted

    def counters(self) -> dict[str, str]:
        """Diagnostics values: frames skipped per topic (a newer frame came first) and by the rate cap."""
        out = {f"viewer_skipped_{k}": str(v) for k, v in sorted(self._slots.skipped().items())}
        out["viewer_rate_skipped"] = str(self._rate_skipped)
        return out

    def _run(self) -> None:
        try:
            tid = threading.get_native_id()
            nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + WORKER_NICENESS)
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except (AttributeError, OSError):  # not Linux, or not allowed: the worker runs at the node's priority
            pass
        while not self._slots.closed:
            batch = self._slots.take_all()
            published = []
            held = False
            for name, frame in batch.items():
                topic = self._by_name[name]
                if not self._delivered(topic):
                    self._slots.put_back(name, frame)
                    held = True
                    continue
                try:
                    msg = topic.make(frame)
                    if msg is None:
                        continue
                    if self._delay:
                        time.sleep(self._delay)
                    if self._slots.closed:
                        return  # shutting down: the publishers may be gone
                    topic.publisher.publish(msg)
                    self._sent_at[name] = time.monotonic()
                    published.append(name)
                except Exception as exc:  # one bad frame of one topic; the worker carries on
                    if self._slots.closed:
                        return
                    self._on_error(exc)
            if published:
                self._on_published(published)
            if held:
                time.sleep(ACK_POLL_S)

    def _delivered(self, topic: ViewerTopic) -> bool:
        """The topic's last message was acknowledged by every reader (or waited for long enough)."""
        sent = self._sent_at.get(topic.name)
        if sent is None or time.monotonic() - sent > ACK_WAIT_MAX_S:
            return True
        wait = getattr(topic.publisher, "wait_for_all_acked", None)
        if wait is None:
            return True
        return bool(wait(_NO_WAIT))
