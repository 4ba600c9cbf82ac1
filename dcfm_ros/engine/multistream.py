"""Several camera streams over one model and one backend: per-camera stream state, fair scheduling.

A vehicle's cameras each need their own DCFM stream state -- keyframe decisions, the cached common
feature (the F_co half of the FFM), the schedule's deep pass, the blend reference, the input
resolution -- but not their own copy of the network. `MultiStreamEngine` keeps one `StreamEngine`
per camera, all built on the same `InferenceBackend` instance (one set of weights, exported graphs
or engines in memory), so a keyframe on one camera never refreshes another's common feature.

Frames arrive from any thread (`submit`, e.g. ROS callbacks) into one slot per camera:
drop_policy "latest" keeps only each camera's newest frame (a waiting one it replaces is counted
as dropped for that camera), "none" queues every frame. `take` hands the worker the ready frames,
at most one per camera, starting after the camera served first last time (round robin), so a fast
camera never starves a slow one: every camera with a frame waiting is served once per round.
`run` processes one round; a frame that fails (bad image, engine error) is counted for its camera
only, and that camera's next frame is a keyframe after an engine error.

Batching (`batch=True`, engine/batching.py): a round's frames go through each camera's `decide`, then
one batched pass (enc_lo, fuse and head for all, the deep pass for the keyframes among them, each
row with its own camera's common part), then each camera's `finish` and `commit`. Frames that cannot
be batched (a graph backend's batch-1 graphs, graph I/O, a schedule with its own keyframe path) run
one at a time as without it; so does a round of one frame. On a 2-core CPU a batch is slower than
one frame at a time (docs/multicamera.md), so the node asks for it only on CUDA.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import torch

from dcfm_ros.engine.batching import run_batch
from dcfm_ros.engine.keyframe import KeyframePolicy
from dcfm_ros.engine.preprocess import validate_image
from dcfm_ros.engine.specs import check_camera_names
from dcfm_ros.engine.stream import FramePlan, FrameResult, StreamEngine

if TYPE_CHECKING:
    from dcfm_ros.engine.backends import InferenceBackend
    from dcfm_ros.engine.schedules import KeyframeSchedule
    from dcfm_ros.model import DCFM

T = TypeVar("T")
# how a frame is run: StreamEngine.process(engine, image, camera_size), or a wrapper of it
Process = Callable[[StreamEngine, np.ndarray, "tuple[int, int] | None"], FrameResult]
DROP_POLICIES = ("latest", "none")


@dataclass
class CameraCounters:
    """One camera's frame counts; received = processed + dropped + failed + waiting."""

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the slot by a newer frame (latest) or left when closed
    failed: int = 0  # the engine raised on it (bad image, out of memory, ...)
    keyframes: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                "failed": self.failed, "keyframes": self.keyframes}


@dataclass
class Pending(Generic[T]):
    """A frame waiting for the worker: its camera, the RGB image and the caller's own data (e.g. the
    message header), handed back with the result."""

    camera: str
    # The RGB frame; a caller that converts its messages on the worker (the node) submits None and
    # puts the image in (dataclasses.replace) before run().
    image: np.ndarray | None
    tag: T
    seq: int  # the camera's arrival number, 0-based
    camera_size: tuple[int, int] | None = None  # (H, W) when `image` is a reduced decode of it


@dataclass
class Outcome(Generic[T]):
    """One frame of a round: its result, or the exception the engine raised on it."""

    camera: str
    tag: T
    result: FrameResult | None
    error: Exception | None = None
    seq: int = 0


@dataclass
class CameraStream:
    """One camera's stream: its own engine (own cache, schedule, blend reference, resolution) over the
    shared backend, its waiting frames and its counters."""

    name: str
    engine: StreamEngine
    counters: CameraCounters = field(default_factory=CameraCounters)
    waiting: deque = field(default_factory=deque)
    arrivals: int = 0


class MultiStreamEngine(Generic[T]):
    """P-mode DCFM for several cameras on one backend (see the module docstring).

    backend: a ready InferenceBackend shared by every camera (build it once with make_backend).
    schedule: a spec ("sync", "spread", "background", ...) or a factory giving each camera its own
    KeyframeSchedule (a schedule holds a camera's deep pass in flight, so it is never shared).
    graph_io, labels_at: as StreamEngine's, for every camera.
    batch: run each round's frames as one batched pass where the backend can (see the module doc).
    """

    def __init__(self, model: DCFM, cameras: Sequence[str], policy: KeyframePolicy, *,
                 backend: InferenceBackend, input_size: tuple[int, int] | None = None,
                 schedule: str | Callable[[], KeyframeSchedule] = "sync", spread: int = 3,
                 nonkey_blend: str | None = "auto", drop_policy: str = "latest", graph_io: bool = False,
                 labels_at: str = "camera", batch: bool = False) -> None:
        names = check_camera_names(cameras)
        if not names:
            raise ValueError("MultiStreamEngine needs at least one camera")
        if drop_policy not in DROP_POLICIES:
            raise ValueError(f"drop_policy must be one of {', '.join(DROP_POLICIES)}, got {drop_policy!r}")
        self.backend = backend
        self.model = model
        self.drop_policy = drop_policy
        self.batch = bool(batch)
        self._cond = threading.Condition()
        self._closed = False
        self._next = 0  # index of the camera served first in the next round
        self.streams: dict[str, CameraStream] = {}
        for name in names:
            sched = schedule() if callable(schedule) else schedule
            engine = StreamEngine(model, policy, input_size=input_size, backend=backend, schedule=sched,
                                  spread=spread, nonkey_blend=nonkey_blend, graph_io=graph_io,
                                  labels_at=labels_at)
            self.streams[name] = CameraStream(name, engine)
        first = self.streams[names[0]].engine
        self.device = first.device
        self.num_classes, self.class_names, self.palette = first.num_classes, first.class_names, first.palette
        self.input_size = first.input_size

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.streams)

    def engine(self, camera: str) -> StreamEngine:
        return self._stream(camera).engine

    def _stream(self, camera: str) -> CameraStream:
        try:
            return self.streams[camera]
        except KeyError:
            raise KeyError(f"unknown camera {camera!r}; cameras: {', '.join(self.streams)}") from None

    # --- run-time settings: every camera, from its next frame -----------------------------------------

    @property
    def policy(self) -> KeyframePolicy:
        return next(iter(self.streams.values())).engine.policy

    @policy.setter
    def policy(self, policy: KeyframePolicy) -> None:
        # Policies are stateless (decide(since, score)): one object serves every camera.
        for s in self.streams.values():
            s.engine.policy = policy

    def set_schedule(self, schedule: str | Callable[[], KeyframeSchedule]) -> None:
        """A new keyframe schedule for every camera (each its own instance)."""
        for s in self.streams.values():
            s.engine.schedule = schedule() if callable(schedule) else schedule

    def reset(self, camera: str | None = None) -> None:
        """Forget the cached keyframe of one camera (or of all): its next frame is a keyframe."""
        for s in ([self._stream(camera)] if camera is not None else self.streams.values()):
            s.engine.reset()

    # --- frames in ----------------------------------------------------------------------------------

    def submit(self, camera: str, image: np.ndarray | None, tag: T) -> bool:
        """Queue a frame of `camera` (any thread; never blocks). Returns True when it replaced a
        waiting frame of the same camera (drop_policy latest; counted as that camera's drop)."""
        stream = self._stream(camera)
        with self._cond:
            if self._closed:
                return False
            stream.counters.received += 1
            dropped = False
            if self.drop_policy == "latest" and stream.waiting:
                stream.counters.dropped += len(stream.waiting)
                stream.waiting.clear()
                dropped = True
            stream.waiting.append(Pending(camera, image, tag, stream.arrivals))
            stream.arrivals += 1
            self._cond.notify()
            return dropped

    def waiting(self, camera: str) -> int:
        with self._cond:
            return len(self._stream(camera).waiting)

    def take(self, timeout: float | None = None) -> list[Pending[T]]:
        """The next round: the oldest waiting frame of each camera that has one, cameras in rotation
        (the first served moves on by one every round). Waits up to `timeout` s (None: until a frame
        arrives or close()); [] on timeout or once closed."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or any(s.waiting for s in self.streams.values()),
                                       timeout):
                return []
            if self._closed:
                return []
            streams = list(self.streams.values())
            order = streams[self._next:] + streams[:self._next]
            self._next = (self._next + 1) % len(streams)
            return [s.waiting.popleft() for s in order if s.waiting]

    # --- the work -------------------------------------------------------------------------------------

    def run(self, frames: Iterable[Pending[T]], process: Process | None = None) -> list[Outcome[T]]:
        """Process a round (from `take`), each frame through its camera's engine; counters updated.
        `process(engine, image, camera_size)` replaces the plain `engine.process(image, camera_size)`
        (e.g. fault injection).
        An exception on one frame is that frame's Outcome.error; the other frames still run, and
        after anything but a bad image (ValueError) that camera's engine is reset."""
        return list(self.run_each(frames, process))

    def run_each(self, frames: Iterable[Pending[T]], process: Process | None = None) -> Iterator[Outcome[T]]:
        """run(), each frame's outcome handed out as soon as it is done (a camera's outputs need not
        wait for the rest of the round). With `batch` (and no `process`) a round runs batched."""
        frames = list(frames)
        if self.batch and process is None and len(frames) > 1:
            yield from self._run_batched(frames)
            return
        for p in frames:
            stream = self._stream(p.camera)
            try:
                if p.image is None:
                    raise ValueError(f"frame {p.seq} of camera {p.camera} has no image")
                result = (process or StreamEngine.process)(stream.engine, p.image, p.camera_size)
            except Exception as exc:  # this frame of this camera only
                yield self._failed(stream, p, exc)
                continue
            yield self._done(stream, p, result)

    def _done(self, stream: CameraStream, p: Pending[T], result: FrameResult) -> Outcome[T]:
        with self._cond:
            stream.counters.processed += 1
            stream.counters.keyframes += int(result.is_keyframe)
        return Outcome(p.camera, p.tag, result, None, p.seq)

    def _failed(self, stream: CameraStream, p: Pending[T], exc: Exception) -> Outcome[T]:
        if not isinstance(exc, ValueError):
            stream.engine.reset()  # the cache is not trusted after e.g. an out of memory
        with self._cond:
            stream.counters.failed += 1
        return Outcome(p.camera, p.tag, None, exc, p.seq)

    def _run_batched(self, frames: list[Pending[T]]) -> Iterator[Outcome[T]]:
        # decide for every camera, one batched call for those that can share it, then each camera's
        # finish and commit; a frame that fails is its camera's only (a failed batch: each of its frames)
        planned: list[tuple[CameraStream, Pending[T], FramePlan]] = []
        with torch.inference_mode():
            for p in frames:
                stream = self._stream(p.camera)
                try:
                    if p.image is None:
                        raise ValueError(f"frame {p.seq} of camera {p.camera} has no image")
                    validate_image(p.image)
                    plan = stream.engine.decide(p.image, stream.engine.state, p.camera_size)
                    planned.append((stream, p, plan))
                except Exception as exc:
                    yield self._failed(stream, p, exc)
            calls = [s.engine.batch_call(plan) for s, _, plan in planned]
            rows = [i for i, c in enumerate(calls) if c is not None]
            outs = {}
            if len(rows) > 1:
                try:
                    batch = run_batch(planned[rows[0]][0].engine.backend, [calls[i] for i in rows],
                                      [planned[i][2].timer for i in rows])
                    outs = dict(zip(rows, batch, strict=True))
                except Exception as exc:
                    for i in rows:
                        yield self._failed(planned[i][0], planned[i][1], exc)
                    failed = set(rows)
                    planned = [x for i, x in enumerate(planned) if i not in failed]
            for i, (stream, p, plan) in enumerate(planned):
                try:
                    engine = stream.engine
                    run = engine.finish(plan, outs[i]) if i in outs else engine.run(plan)
                    result = engine.commit(plan, run)
                except Exception as exc:
                    yield self._failed(stream, p, exc)
                    continue
                yield self._done(stream, p, result)

    def step(self, timeout: float | None = None) -> list[Outcome[T]]:
        """take() and run() one round."""
        return self.run(self.take(timeout))

    def counters(self) -> dict[str, dict[str, int]]:
        with self._cond:
            return {name: s.counters.as_dict() for name, s in self.streams.items()}

    def close(self) -> None:
        """Wake a waiting take() (it returns []), drop what waits, stop every schedule's worker."""
        with self._cond:
            self._closed = True
            for s in self.streams.values():
                s.counters.dropped += len(s.waiting)
                s.waiting.clear()
            self._cond.notify_all()
        for s in self.streams.values():
            s.engine.close()
