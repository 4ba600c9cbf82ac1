"""Running counters of the node and the 1 Hz /diagnostics status built from them.

`NodeStats` is written by the camera callback (received, dropped) and by the worker (processed, bad
inputs, timings) and read by the diagnostics timer, so every access holds its lock. Totals count
since start; the window (rates, mean latencies, keyframe ratio) covers the time since the last
diagnostics report.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header


@dataclass
class Totals:
    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad_inputs: int = 0
    errors: int = 0
    resolution_changes: int = 0
    keyframes: int = 0
    published: dict[str, int] = field(default_factory=dict)
    engine_errors: int = 0
    qos_changes: int = 0
    # mean confidence of the last confidence.window frames, and how many frames it covers
    confidence_mean: float = float("nan")
    confidence_frames: int = 0


@dataclass
class Window:
    seconds: float = 0.0
    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad_inputs: int = 0
    keyframes: int = 0
    engine_ms: list[float] = field(default_factory=list)
    node_ms: list[float] = field(default_factory=list)  # callback -> labels published
    end_to_end_ms: list[float] = field(default_factory=list)  # header.stamp -> labels published


class NodeStats:
    """Thread-safe counters (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals = Totals()
        self._window = Window()
        self._window_start = time.monotonic()
        self._confidence: deque[float] = deque()

    def received(self, dropped: bool) -> None:
        with self._lock:
            self.totals.received += 1
            self._window.received += 1
            if dropped:
                self.totals.dropped += 1
                self._window.dropped += 1

    def bad_input(self) -> int:
        with self._lock:
            self.totals.bad_inputs += 1
            self._window.bad_inputs += 1
            return self.totals.bad_inputs

    def error(self) -> int:
        with self._lock:
            self.totals.errors += 1
            return self.totals.errors

    def engine_error(self) -> int:
        with self._lock:
            self.totals.engine_errors += 1
            return self.totals.engine_errors

    def qos_change(self) -> None:
        with self._lock:
            self.totals.qos_changes += 1

    def resolution_change(self) -> None:
        with self._lock:
            self.totals.resolution_changes += 1

    def processed(self, is_keyframe: bool, engine_ms: float, confidence: float = float("nan"),
                  confidence_window: int = 30) -> tuple[int, int, int, int, int]:
        """Count a processed frame; returns (received, processed, dropped, bad_inputs, engine_errors)."""
        with self._lock:
            t, w = self.totals, self._window
            if math.isfinite(confidence):
                c = self._confidence
                c.append(confidence)
                while len(c) > confidence_window:
                    c.popleft()
            t.processed += 1
            w.processed += 1
            t.keyframes += int(is_keyframe)
            w.keyframes += int(is_keyframe)
            w.engine_ms.append(engine_ms)
            return t.received, t.processed, t.dropped, t.bad_inputs, t.engine_errors

    def latency(self, node_ms: float, end_to_end_ms: float) -> None:
        with self._lock:
            self._window.node_ms.append(node_ms)
            if math.isfinite(end_to_end_ms):
                self._window.end_to_end_ms.append(end_to_end_ms)

    def published(self, outputs: Iterable[str]) -> None:
        with self._lock:
            for name in outputs:
                self.totals.published[name] = self.totals.published.get(name, 0) + 1

    def take_window(self) -> tuple[Totals, Window]:
        """A copy of the totals and the window since the last call (which starts a new window)."""
        with self._lock:
            now = time.monotonic()
            window, self._window = self._window, Window()
            window.seconds = now - self._window_start
            self._window_start = now
            t = self.totals
            c = self._confidence
            totals = Totals(t.received, t.processed, t.dropped, t.bad_inputs, t.errors,
                            t.resolution_changes, t.keyframes, dict(t.published), t.engine_errors,
                            t.qos_changes, sum(c) / len(c) if c else float("nan"), len(c))
        return totals, window


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def diagnostics_msg(stamp: Time, name: str, hardware_id: str, totals: Totals, window: Window,
                    static: dict[str, str], queued: int, confidence_warn_below: float = 0.0,
                    confidence_window: int = 1) -> DiagnosticArray:
    """One DiagnosticStatus for the node: window rates/latencies, totals, and the static facts
    (device, precision, keyframe policy, model, ...). WARN on bad inputs, errors, or a mean confidence
    below confidence_warn_below over a full confidence window (the scene looks out of domain)."""
    secs = max(window.seconds, 1e-9)
    rate = window.processed / secs
    ratio = window.keyframes / window.processed if window.processed else float("nan")
    engine = _mean(window.engine_ms)
    values = {
        "rate_hz": _fmt(rate),
        "input_rate_hz": _fmt(window.received / secs),
        "engine_latency_ms_mean": _fmt(engine),
        "engine_latency_ms_max": _fmt(max(window.engine_ms) if window.engine_ms else float("nan")),
        "node_latency_ms_mean": _fmt(_mean(window.node_ms)),
        "end_to_end_latency_ms_mean": _fmt(_mean(window.end_to_end_ms)),
        "keyframe_ratio": _fmt(ratio, 3),
        "frames_received": str(totals.received),
        "frames_processed": str(totals.processed),
        "frames_dropped": str(totals.dropped),
        "frames_dropped_window": str(window.dropped),
        "bad_inputs": str(totals.bad_inputs),
        "bad_inputs_window": str(window.bad_inputs),
        "errors": str(totals.errors),
        "engine_errors": str(totals.engine_errors),
        "input_qos_changes": str(totals.qos_changes),
        "confidence_mean": _fmt(totals.confidence_mean, 3),
        "resolution_changes": str(totals.resolution_changes),
        "queued": str(queued),
    }
    values.update(static)
    values.update({f"published_{k}": str(v) for k, v in sorted(totals.published.items())})

    # Every warning that applies, so that one (say failed frames long ago) does not hide another.
    warnings = []
    if window.bad_inputs:
        warnings.append(f"{window.bad_inputs} bad input image(s) in the last {secs:.1f} s")
    if totals.errors or totals.engine_errors:
        warnings.append(f"{totals.engine_errors + totals.errors} frame(s) failed since start")
    if (totals.confidence_frames >= confidence_window and math.isfinite(totals.confidence_mean)
            and totals.confidence_mean < confidence_warn_below):
        warnings.append(f"low confidence {totals.confidence_mean:.2f} over the last "
                        f"{totals.confidence_frames} frames (below {confidence_warn_below:g}): the scene "
                        f"may be out of the model's domain")
    if warnings:
        level, message = DiagnosticStatus.WARN, "; ".join(warnings)
    elif window.processed == 0:
        level, message = DiagnosticStatus.OK, "waiting for images"
    else:
        level, message = DiagnosticStatus.OK, f"{rate:.1f} Hz, engine {_fmt(engine, 1)} ms, keyframe ratio " \
                                              f"{_fmt(ratio)}"
    status = DiagnosticStatus(level=level, name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=v) for k, v in values.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
