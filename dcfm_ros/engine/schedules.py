"""Keyframe schedules: when a keyframe's deep pass runs, relative to the frames that follow it.

The policy decides *that* frame t is a keyframe; the schedule decides when `enc_hi(F_in_t)` and the
FFM's common part are computed, and so from which frame on the new common cache is used:

- `sync`:       at frame t itself; frame t and the following ones use it (the paper's P mode). A
                keyframe costs a whole deep pass, so the stream's latency is a sawtooth.
- `spread`:     frame t is answered with the old cache; the deep pass is cut into N pieces of about
                equal cost, one run at the start of each of frames t+1..t+N; frame t+N is the first
                to use the new cache (common age N). Deterministic: the labels depend only on the
                frames, never on timing.
- `background`: the deep pass runs concurrently (a worker thread with its own torch thread budget on
                the CPU; a lower-priority CUDA stream, ordered with events, on a GPU); its cache is
                swapped in at the start of the first frame that starts after it finished. The age
                then depends on how fast the pass runs (`lag:L` in dcfm-evaluate is its exact,
                offline twin).

All schedules are causal: a cache only ever holds a past frame's F_co. At most one deep pass is in
flight; the engine coalesces keyframe requests made while one runs into one pass started on the
frame the running one completes. The engine runs forced keyframes (first frame, reset(), size
change) synchronously through `forced_pass`, whatever the schedule (there is no cache to answer with).

A keyframe answered with its own deep pass (`inline`: sync, lag:0) and a forced keyframe are one
call of the backend's fused key graph (`forced_keyframe`); a keyframe whose pass is deferred is a
non-key call that also returns F_in, which `start` takes. Schedules use only the InferenceBackend
interface (key_frame, enc_hi, run_deep_units, common_part), so they run on every backend.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import FrameOutputs, GraphIO, InferenceBackend, StageMarks
from dcfm_ros.engine.specs import KEYFRAME_SCHEDULES, parse_schedule
from dcfm_ros.model.layers import DeepState

SCHEDULES = KEYFRAME_SCHEDULES


@dataclass(frozen=True)
class CommonCache:
    """The FFM's common part of one keyframe and the frame (index since reset) it was computed from."""

    common: Tensor
    frame: int


def group_units(costs: Sequence[float], pieces: int) -> list[tuple[int, int]]:
    """Cut units 0..len(costs)-1 into `pieces` contiguous, non-empty ranges of about equal total cost.

    Greedy on the cumulative cost: range i ends at the unit whose cumulative cost is closest to
    (i + 1) / pieces of the total, while leaving at least one unit for every later range.
    """
    n = len(costs)
    if n == 0:
        raise ValueError("no deep units to group")
    if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
        raise ValueError(f"pieces must be an int >= 1, got {pieces!r}")
    pieces = min(pieces, n)
    cum = [0.0]
    for c in costs:
        cum.append(cum[-1] + max(float(c), 0.0))
    total = cum[-1] or float(n)
    if cum[-1] == 0.0:
        cum = [float(i) for i in range(n + 1)]
    out, start = [], 0
    for i in range(pieces - 1):
        target = total * (i + 1) / pieces
        lo, hi = start + 1, n - (pieces - 1 - i)  # this range's end: keep one unit per later range
        stop = min(range(lo, hi + 1), key=lambda s: abs(cum[s] - target))
        out.append((start, stop))
        start = stop
    out.append((start, n))
    return out


def _device_sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class KeyframeSchedule(ABC):
    """One way of running keyframe deep passes. Not thread-safe: one engine calls it from one thread."""

    name: ClassVar[str]
    # whether the deep pass's work runs on the frames' own thread (it is then timed as their enc_hi)
    on_frames: ClassVar[bool] = True
    # whether it runs the deep pass in pieces (the engine then has the backend prepare them)
    uses_deep_units: ClassVar[bool] = False

    @property
    @abstractmethod
    def in_flight(self) -> bool:
        """Whether a deep pass was started and its cache is not swapped in yet."""

    @property
    def inline(self) -> bool:
        """Whether a keyframe uses its own deep pass (sync): the engine then runs it as one key call
        and never calls `start`."""
        return False

    def start(self, net: InferenceBackend, f_in: Tensor, frame: int) -> None:
        """Begin the deep pass of keyframe `frame` from its F_in (never called while in_flight, nor
        on an inline schedule); the cache arrives through `advance`."""
        raise NotImplementedError(f"{self.name}: keyframes run inline")

    def advance(self, net: InferenceBackend) -> CommonCache | None:
        """Called at the start of every frame that is not forced: do this frame's share of the pass
        in flight; the finished cache when it is ready for this frame, else None."""
        return None

    @abstractmethod
    def cancel(self) -> None:
        """Drop the pass in flight (reset, size change, schedule swap). Returns only once nothing of
        it runs any more, so a following pass is never concurrent with it."""

    def close(self) -> None:
        """Release threads and streams; the schedule is not used afterwards."""
        self.cancel()

    def forced_keyframe(self, net: InferenceBackend, x: Tensor, want: Collection[str] = (),
                        marks: StageMarks | None = None,
                        camera: GraphIO | None = None) -> FrameOutputs:
        """A forced, synchronous keyframe (the engine has no cache to answer with), also an inline
        one: one key call (`camera`: with the I/O in the graph, backends.base)."""
        return net.key_frame(x, want, marks, camera=camera)

    def frame_stream(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Context the engine runs each frame's work in (a CUDA stream for `background`)."""
        return contextlib.nullcontext()

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.describe()


class SyncSchedule(KeyframeSchedule):
    """The deep pass runs inside the keyframe itself (the paper's P mode)."""

    name = "sync"

    @property
    def in_flight(self) -> bool:
        return False

    @property
    def inline(self) -> bool:
        return True

    def cancel(self) -> None:
        return None  # nothing is ever in flight


class SpreadSchedule(KeyframeSchedule):
    """The deep pass in `pieces` groups of deep units, one group at the start of each following frame.

    Grouping "about the same cost" needs each unit's cost: the parameter-count guess of
    `deep_unit_costs()` is replaced by wall times measured on the forced (synchronous) keyframes,
    which run unit by unit for that (the same computation: the units compose exactly to enc_hi).
    Measurements keep the minimum seen per unit: on a shared machine other work only ever adds time,
    and the first pass after start-up also pays one-off kernel set-up. On CUDA the timing costs a
    device sync per unit; forced keyframes are rare, so that is paid rarely. The grouping changes
    only the time per frame, never the labels: the pieces always compose to enc_hi and the cache is
    always swapped in `pieces` frames after its keyframe.
    """

    uses_deep_units = True

    name = "spread"

    def __init__(self, pieces: int) -> None:
        if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"spread pieces (keyframe.spread) must be an int >= 1, got {pieces!r}")
        self.pieces = pieces
        self._unit_ms: list[float] | None = None
        self._plan: list[tuple[int, int]] = []
        self._state: DeepState | None = None
        self._next = 0  # index into _plan of the group the next frame runs
        self._frame = -1

    @property
    def in_flight(self) -> bool:
        return self._state is not None

    def costs(self, net: InferenceBackend) -> list[float]:
        """Per-unit costs the grouping uses: measured ms when known, else the backend's guess."""
        if self._unit_ms is not None and len(self._unit_ms) == net.num_deep_units:
            return list(self._unit_ms)
        return list(net.deep_unit_costs())

    def plan(self, net: InferenceBackend) -> list[tuple[int, int]]:
        """The (start, stop) unit ranges of the next pass; always exactly `pieces` of them, so the
        swap comes `pieces` frames after the keyframe also when there are fewer units than pieces
        (the surplus frames run an empty range)."""
        groups = group_units(self.costs(net), self.pieces)
        n = net.num_deep_units
        return groups + [(n, n)] * (self.pieces - len(groups))

    def start(self, net: InferenceBackend, f_in: Tensor, frame: int) -> None:
        self._plan = self.plan(net)
        self._state = (f_in,)
        self._next = 0
        self._frame = frame
        return None

    def advance(self, net: InferenceBackend) -> CommonCache | None:
        if self._state is None:
            return None
        a, b = self._plan[self._next]
        self._state = net.run_deep_units(a, b, self._state)
        self._next += 1
        if self._next < len(self._plan):
            return None
        (f_co,) = self._state
        self._state = None
        return CommonCache(net.common_part(f_co), self._frame)

    def cancel(self) -> None:
        self._state = None

    def forced_keyframe(self, net: InferenceBackend, x: Tensor, want: Collection[str] = (),
                        marks: StageMarks | None = None,
                        camera: GraphIO | None = None) -> FrameOutputs:
        # The deep pass unit by unit, timed: the costs the next plans group by (see the class doc).
        # With the I/O in the graph (`camera`) the stages cannot take the camera image: that frame is
        # one fused key call and the grouping keeps the costs it has (at first the guess).
        if camera is not None:
            return net.key_frame(x, want, marks, camera=camera)
        return net.key_frame(x, want, marks, deep=lambda f_in: self._timed_pass(net, f_in))

    def _timed_pass(self, net: InferenceBackend, f_in: Tensor) -> Tensor:
        state: DeepState = (f_in,)
        times = []
        for i in range(net.num_deep_units):
            _device_sync(net.device)
            t0 = time.perf_counter()
            state = net.run_deep_units(i, i + 1, state)
            _device_sync(net.device)
            times.append((time.perf_counter() - t0) * 1000.0)
        old = self._unit_ms
        self._unit_ms = times if old is None or len(old) != len(times) else \
            [min(a, b) for a, b in zip(old, times, strict=True)]
        (f_co,) = state
        return f_co

    def describe(self) -> str:
        return f"spread:{self.pieces}"


class LagSchedule(KeyframeSchedule):
    """Offline twin of `background`: keyframe t's cache is used from frame t+L on, exactly. Lets
    dcfm-evaluate price a cache that arrives L frames late (what `background` amounts to at a given
    camera rate) without depending on timing; same labels as spread:L. The deep pass runs whole at
    frame t+L (it keeps F_in_t until then), so it does not bound latency: not a node schedule."""

    name = "lag"

    def __init__(self, lag: int) -> None:
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise ValueError(f"lag must be an int >= 0, got {lag!r}")
        self.lag = lag
        self._held: tuple[Tensor, int] | None = None  # (F_in, keyframe)
        self._left = 0

    @property
    def in_flight(self) -> bool:
        return self._held is not None

    @property
    def inline(self) -> bool:
        return self.lag == 0

    def start(self, net: InferenceBackend, f_in: Tensor, frame: int) -> None:
        self._held, self._left = (f_in, frame), self.lag

    def advance(self, net: InferenceBackend) -> CommonCache | None:
        if self._held is None:
            return None
        self._left -= 1
        if self._left > 0:
            return None
        (f_in, frame), self._held = self._held, None
        return CommonCache(net.common_part(net.enc_hi(f_in)), frame)

    def cancel(self) -> None:
        self._held = None

    def describe(self) -> str:
        return f"lag:{self.lag}"


@dataclass
class _Job:
    f_in: Tensor
    frame: int
    finished: threading.Event
    ready: object | None = None  # CUDA event: F_in is complete on the engine's stream
    done: object | None = None  # CUDA event: the cache is complete on the worker's stream
    cache: CommonCache | None = None
    error: BaseException | None = None


class BackgroundSchedule(KeyframeSchedule):
    """The deep pass on a worker thread, concurrent with the frames that follow the keyframe.

    CPU: the worker sets its own torch intra-op thread count (`threads`; OpenMP keeps the count per
    calling thread, so the engine's thread keeps its own), e.g. 1 of 2 cores each. It must still share
    the cores with the frames: the deep pass runs slower than alone, and a non-key frame slows down
    while it runs (measured in the README).
    CUDA: the worker enqueues the pass on a stream of its own; the engine's frames run on a
    higher-priority stream (`frame_stream`), so the GPU schedules their kernels first. F_in is
    handed over with an event (the worker's stream waits for it), the cache is taken back only once
    the worker's done-event completed, and both tensors are marked as used by the other stream so the
    caching allocator does not recycle their memory early. Not exercised here (no GPU on this
    project's machine); the CUDA tests skip with that reason.
    """

    name = "background"
    on_frames = False

    def __init__(self, threads: int | None = 1) -> None:
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"background threads must be an int >= 1 or None, got {threads!r}")
        self.threads = threads
        self._cond = threading.Condition()
        self._queue: list[tuple[_Job, InferenceBackend]] = []
        self._job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._streams: dict[torch.device, tuple[torch.cuda.Stream, torch.cuda.Stream]] = {}
        self.passes = 0  # completed deep passes (tests, benchmarks)

    @property
    def in_flight(self) -> bool:
        return self._job is not None

    # -- engine thread -----------------------------------------------------------------------------

    def frame_stream(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Context the engine runs each frame in: on CUDA its high-priority stream, else nothing."""
        if device.type != "cuda":
            return contextlib.nullcontext()
        return torch.cuda.stream(self._cuda_streams(device)[0])

    def _cuda_streams(self, device: torch.device) -> tuple[torch.cuda.Stream, torch.cuda.Stream]:
        if device not in self._streams:
            low, high = torch.cuda.Stream.priority_range()  # e.g. (0, -5): lower number, higher priority
            self._streams[device] = (torch.cuda.Stream(device, priority=high),
                                     torch.cuda.Stream(device, priority=low))
        return self._streams[device]

    def start(self, net: InferenceBackend, f_in: Tensor, frame: int) -> None:
        if self._closed:
            raise RuntimeError("background schedule is closed")
        job = _Job(f_in, frame, threading.Event())
        if net.device.type == "cuda":
            deep_s = self._cuda_streams(net.device)[1]
            job.ready = torch.cuda.Event()
            job.ready.record(torch.cuda.current_stream(net.device))  # type: ignore[attr-defined]
            f_in.record_stream(deep_s)
        self._job = job
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="dcfm-deep-pass", daemon=True)
                self._thread.start()
            self._queue.append((job, net))
            self._cond.notify()
        return None

    def advance(self, net: InferenceBackend) -> CommonCache | None:
        job = self._job
        if job is None or not job.finished.is_set():
            return None
        if job.done is not None and not job.done.query():  # type: ignore[attr-defined]
            return None  # enqueued on the GPU, not computed yet
        self._job = None
        if job.error is not None:
            raise RuntimeError(f"background deep pass of frame {job.frame} failed: "
                               f"{job.error}") from job.error
        cache = job.cache
        if job.done is not None and cache is not None:
            stream = torch.cuda.current_stream(net.device)
            stream.wait_event(job.done)  # type: ignore[arg-type]
            cache.common.record_stream(stream)
        return cache

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pass in flight finished (tests, shutdown); True if none is left running."""
        job = self._job
        return job is None or job.finished.wait(timeout)

    def cancel(self) -> None:
        job, self._job = self._job, None
        if job is not None:
            job.finished.wait()
            if job.done is not None:
                job.done.synchronize()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.cancel()
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def describe(self) -> str:
        return f"background (threads={self.threads})" if self.threads is not None else "background"

    # -- worker thread -----------------------------------------------------------------------------

    def _work(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # this thread's OpenMP budget only
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue:
                    return
                job, net = self._queue.pop(0)
            try:
                # inference_mode is thread-local: the engine's does not cover this thread.
                with torch.inference_mode():
                    if job.ready is not None:
                        deep_s = self._cuda_streams(net.device)[1]
                        with torch.cuda.stream(deep_s):
                            deep_s.wait_event(job.ready)  # type: ignore[arg-type]
                            common = net.common_part(net.enc_hi(job.f_in))
                            job.done = torch.cuda.Event()
                            job.done.record(deep_s)  # type: ignore[attr-defined]
                    else:
                        common = net.common_part(net.enc_hi(job.f_in))
                job.cache = CommonCache(common, job.frame)
                self.passes += 1
            except BaseException as exc:  # handed to the engine thread, which raises it
                job.error = exc
            finally:
                job.finished.set()


def make_schedule(schedule: str | KeyframeSchedule, spread: int = 3,
                  threads: int | None = 1) -> KeyframeSchedule:
    """A schedule from plain parameters: "sync", "spread" (N = `spread`, or "spread:N"), "background"
    (worker thread budget `threads`), and the offline "lag:L"."""
    if isinstance(schedule, KeyframeSchedule):
        return schedule
    if not isinstance(schedule, str):
        raise ValueError(f"keyframe schedule must be one of {SCHEDULES}, got {schedule!r}")
    spec = parse_schedule(schedule, spread=spread, offline=True)
    if spec.name == "sync":
        return SyncSchedule()
    if spec.name == "spread":
        return SpreadSchedule(int(spec.arg or spread))
    if spec.name == "background":
        return BackgroundSchedule(threads)
    return LagSchedule(int(spec.arg or 0))
