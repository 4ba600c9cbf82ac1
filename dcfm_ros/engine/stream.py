"""StreamEngine: DCFM in P mode, one frame at a time, strictly causal.

keyframe:      F_in = enc_lo(x), F_co = enc_hi(F_in), common = ffm.common_part(F_co) (cached),
               F = ffm.fuse_with_common(common, F_in), y = head(F)
non-key frame: F_in = enc_lo(x), F = ffm.fuse_with_common(cached common, F_in), y = head(F)

The cache is the F_co half of the FFM's 1x1 conv (W_co * Norm(F_co) + bias, see FFM), not F_co
itself: it is computed once per keyframe, so a non-key frame's FFM convolves only the few F_in
channels. Key and non-key frames share the fuse_with_common path; the result equals
model.ffm(F_co, F_in) up to float rounding.

One frame is three named steps, `process` = `decide` -> `run` -> `commit`:
- decide: validate and convert the image, the schedule's share of a deep pass in flight, the policy's
  score and decision (the feature policy decides in `run`, from the call's similarity feature);
- run:    ONE backend call for the frame's kind (backends.base: `key_frame`, `nonkey_frame`), on the
  graph backends one fused graph; a deferred deep pass starts from the F_in that call returned;
- commit: the blend (engine/blend.py), labels and confidence, then the stream's new state.
All state a stream carries between frames is one `StreamState`, apart from the shared network and
backend, so a scheduler for several cameras can decide for each, run them, and commit each.
`stages=True` is the profiling mode: each frame runs the stage calls one by one, timed per stage.

`process` returns the current frame's labels before it returns at all: no frame is buffered, no
future frame is looked at (the authors' loop computes the next keyframe first even in P mode; a
live node must not). Keyframes are forced on the first frame, after `reset()` and when the image
resolution changes (a different camera or mode: the cached common part describes another scene).

Keyframe schedules (`schedule=`, dcfm_ros.engine.schedules) move a keyframe's deep pass off the
keyframe itself: `spread` runs it in pieces at the start of the following frames, `background`
concurrently; the frames in between keep using the old cache, and `FrameResult.common_age` says how
old the cache a frame used is. Forced keyframes always run synchronously.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import Tensor

from dcfm_ros.engine.backends import InferenceBackend, make_backend
from dcfm_ros.engine.backends.base import FrameOutputs, GraphIO, stage_path
from dcfm_ros.engine.batching import BatchCall
from dcfm_ros.engine.blend import NonkeyBlend, low_similarity_share, parse_blend
from dcfm_ros.engine.confidence import Confidence, confidence_from_top, frame_confidence
from dcfm_ros.engine.device import StageTimer
from dcfm_ros.engine.keyframe import KeyframePolicy, check_policy
from dcfm_ros.engine.network import StreamNetwork, check_network
from dcfm_ros.engine.preprocess import FramePreprocessor, camera_shape, validate_image, validate_size
from dcfm_ros.engine.reference_ring import reference_stream
from dcfm_ros.engine.schedules import CommonCache, KeyframeSchedule, make_schedule
from dcfm_ros.engine.specs import LABEL_SIZES, label_size

STAGE_KEYS = ("enc_lo", "enc_hi", "ffm", "head")
TIMING_KEYS = ("preprocess", *STAGE_KEYS, "network", "postprocess", "total")


@dataclass
class FrameResult:
    """One frame's output. `labels` is at the input image's resolution."""

    labels: np.ndarray  # (H, W) uint8 (uint16 if > 255 classes)
    # this frame is a keyframe: its F_in starts a deep pass (with schedule sync, or when forced, this
    # frame also uses the result; with spread/background later frames do, see common_age)
    is_keyframe: bool
    frames_since_key: int  # 0 on a keyframe
    # the regional motion score against the last keyframe (see MotionThreshold); 0.0 when it was not
    # computed (forced keyframes, and policies whose score is not "motion").
    motion_score: float
    # ms: preprocess (incl. motion score), network (the network's work on this frame's thread: the
    # frame's call plus a spread piece), postprocess (blend, upsample + argmax + copy to host,
    # confidence), total (wall time of process()). Per stage (enc_lo; enc_hi: deep-pass work on this
    # thread, the whole pass on a sync keyframe, one piece with spread, 0 otherwise; ffm; head) where
    # the stages run as calls of their own: the torch backend, the profiling mode (stages=True), a
    # keyframe the feature policy made after its call; a fused graph call is 0 there.
    timings_ms: dict[str, float] = field(default_factory=dict)
    # mean top softmax probability and its small per-pixel map (see engine.confidence)
    confidence: Confidence | None = None
    # frames between this frame and the keyframe whose common feature it used (0: its own F_co)
    common_age: int = 0
    # a deep pass was started and its cache is not swapped in yet (after this frame)
    deep_pass_in_flight: bool = False
    # share of pixels with shallow-feature similarity < 0.8 to the keyframe (engine/blend.py); computed
    # on non-key frames when nonkey_blend or the feature policy needs the map, else 0.0.
    low_similarity: float = 0.0


@dataclass
class StreamState:
    """Everything one stream (camera) carries from frame to frame; the network and the backend are
    shared. Changed only by `StreamEngine.commit`, so a frame that fails leaves it as it was."""

    policy: KeyframePolicy
    schedule: KeyframeSchedule  # with the deep pass it has in flight
    blend: NonkeyBlend  # with its references
    cache: CommonCache | None = None  # the FFM's common part of a keyframe's F_co, and its frame
    key_small: Tensor | None = None  # the keyframe's small copy, for the motion score
    since: int = 0  # frames since the last keyframe
    frame: int = -1  # index of the last frame since forget()
    pending: bool = False  # a keyframe was asked for while a deep pass was in flight
    image_shape: tuple[int, int] | None = None  # the camera resolution the cache belongs to

    def forget(self) -> None:
        """The next frame is a keyframe (reset, or a new stream)."""
        self.schedule.cancel()
        self.blend.reset()
        self.cache = self.key_small = self.image_shape = None
        self.since, self.frame, self.pending = 0, -1, False


@dataclass
class FramePlan:
    """What `decide` settled for one frame of one stream."""

    state: StreamState
    shape: tuple[int, int]
    frame: int
    forced: bool  # first frame, after reset(), or a new resolution
    since: int
    wants: bool  # a keyframe is asked for (policy, or a request carried over)
    is_key: bool  # this frame starts a deep pass (forced, or wanted with none in flight)
    score: float  # the motion score (0.0 when not computed)
    x: Tensor  # the normalised network input (graph I/O: the camera's image, (1, H, W, 3) uint8)
    x01: Tensor | None  # the same, 0..1 (the motion copy of a keyframe; None with graph I/O)
    image: np.ndarray  # the camera's image
    small: Tensor | None  # this frame's motion copy when the score was computed
    arrived: CommonCache | None  # a deferred deep pass's cache, first used by this frame
    kind: str  # "key": one key call (forced, inline keyframe); "nonkey": one non-key call
    outputs: frozenset[str]  # the extra outputs the call returns (backends.base.EXTRA_OUTPUTS)
    timer: StageTimer
    t_start: float

    @property
    def decides_after(self) -> bool:
        """The policy decides from the call's similarity feature (feature policy)."""
        return not self.forced and self.state.policy.score == "similarity"


@dataclass
class FrameRun:
    """What `run` computed for a plan."""

    out: FrameOutputs
    cache: CommonCache  # the common part the frame used
    fresh: bool  # the frame is the first to use `cache`
    key_sim: Tensor | None  # similarity map to the blend's keyframe reference
    low: float  # its low-similarity share
    wants: bool  # the final decision (the feature policy's is made here)
    is_key: bool


class StreamEngine:
    """P-mode DCFM over a live stream.

    model: a StreamNetwork (dcfm_ros.engine.network: DCFM, TFC).
    backend: a name from `dcfm_ros.engine.backends.BACKENDS` (built here for `device` and
    `precision`) or a ready InferenceBackend (whose device and precision then apply). The torch
    backend moves `model` to the device and puts it in eval mode.
    schedule: when keyframes' deep passes run (see dcfm_ros.engine.schedules): "sync" (default, the
    paper's P mode), "spread" (in `spread` pieces over the following frames), "background" (worker
    with `background_threads` torch threads), "lag:L" (offline evaluation), or a KeyframeSchedule.
    stages: the profiling mode (each frame runs the stage calls one by one, each timed; the labels
    are the fused path's up to float rounding).
    graph_io: on a backend that can (backends.base.InferenceBackend.graph_io: onnxruntime, openvino
    on the CPU), the frame's call takes the camera's uint8 image and returns the labels at its size
    and the confidence map (resize, normalise, upsample, argmax, softmax in the graph: no torch op
    on the frame's path); not with a blend (it needs the logits) nor in the profiling mode.
    labels_at: with graph_io, where the labels are made (engine.specs.LABEL_SIZES): "camera"
    (default, exact: the logits upsampled to the camera's size, argmax there: the labels of the
    host path) or "network" (at the network's input size, then nearest-neighbour scaled to the
    camera's; on the CamVid val clip at 1080x1440 its mIoU was the exact method's +0.06 at 0.42x the
    time, docs/fast-path.md) or "auto" ("network" where the camera has more than
    specs.LABELS_AUTO_AREA times the network input's pixels, else "camera"; decided per frame size).
    Call close() when done with a background schedule (it stops the worker).
    """

    def __init__(self, model: StreamNetwork, policy: KeyframePolicy, device: str | torch.device = "auto",
                 precision: str = "fp32", input_size: tuple[int, int] | None = None,
                 backend: str | InferenceBackend = "torch", schedule: str | KeyframeSchedule = "sync",
                 spread: int = 3, background_threads: int | None = 1,
                 nonkey_blend: str | None = "auto", stages: bool = False, graph_io: bool = False,
                 labels_at: str = "camera", reference_stride: int | None = None) -> None:
        # MRCFA / SD-CPC: every frame through engine/reference_ring.py (None for DCFM / TFC).
        self._ring = reference_stream(model, backend, device, precision, reference_stride, input_size)
        self.model = model if self._ring is not None else check_network(model)
        self.backend = self._ring if self._ring is not None else backend if isinstance(
            backend, InferenceBackend) else make_backend(backend, model, device, precision)
        self.device = self.backend.device
        self.precision = self.backend.precision
        self.stages = bool(stages)
        # What the frame calls go to: the backend's fused path, or its stages one by one (profiling).
        self._net = stage_path(self.backend) if self.stages else self.backend
        config = model.config
        # nonkey_blend (engine/blend.py): "auto" = the model's own (DCFM none, TFC cosine).
        self.state = StreamState(check_policy(policy), make_schedule(schedule, spread, background_threads),
                                 NonkeyBlend(parse_blend(nonkey_blend, model), model))
        self._prepare()
        self.num_classes: int = config.num_classes
        self.class_names: tuple[str, ...] = tuple(config.class_names)
        self.palette: tuple[tuple[int, int, int], ...] = tuple(tuple(c) for c in config.palette)
        self.input_size = validate_size(config.input_size if input_size is None else input_size)
        self._pre = FramePreprocessor(self.input_size, config.mean, config.std, self.device,
                                      self.num_classes)
        if labels_at not in LABEL_SIZES:
            raise ValueError(f"labels_at must be one of {LABEL_SIZES}, got {labels_at!r}")
        self.labels_at = labels_at
        net = self.backend
        self.graph_io = bool(graph_io and net.graph_io and not self.stages and self.device.type == "cpu"
                             and getattr(net, "input_size", None) == self.input_size
                             and not self.state.blend.spec.enabled)
        self.reset()

    def _prepare(self) -> None:
        # At start-up (and when policy or schedule change), not on the first frame that needs it.
        st = self.state
        if st.schedule.uses_deep_units:
            self.backend.prepare_deep_units()
        extras = st.blend.spec.enabled or st.policy.score == "similarity" or not st.schedule.inline
        self.backend.prepare_frames(extras=extras, stages=self.stages)

    @property
    def policy(self) -> KeyframePolicy:
        return self.state.policy

    @policy.setter
    def policy(self, policy: KeyframePolicy) -> None:
        # Replaceable at run time (node parameters); takes effect from the next frame. The cached
        # common part and the keyframe's small copy stay valid, so no keyframe is forced.
        self.state.policy = check_policy(policy)
        self._prepare()

    @property
    def schedule(self) -> KeyframeSchedule:
        return self.state.schedule

    @schedule.setter
    def schedule(self, schedule: str | KeyframeSchedule) -> None:
        # Replaceable at run time between frames. The cache stays; a pass in flight is dropped (after
        # it stopped running, so two never overlap) and its keyframe request carries over to the new
        # schedule's next frame.
        new = make_schedule(schedule)
        st = self.state
        old = st.schedule
        if new is old:
            return
        st.pending = st.pending or old.in_flight
        old.close()
        st.schedule = new
        self._prepare()

    @property
    def blend(self) -> NonkeyBlend:
        return self.state.blend

    def close(self) -> None:
        """Stop the schedule's worker (background); the engine is not used afterwards."""
        self.state.schedule.close()

    def reset(self) -> None:
        """Forget the cached keyframe: the next frame is a keyframe."""
        self.state.forget()
        if self._ring is not None:
            self._ring.reset()

    @property
    def has_keyframe(self) -> bool:
        return self.state.cache is not None

    @property
    def preprocessor(self) -> FramePreprocessor:
        """The engine's frame conversion (shared with the benchmark's baseline path)."""
        return self._pre

    # -- the frame step ------------------------------------------------------------------------------

    def process(self, image_rgb: np.ndarray, camera: tuple[int, int] | None = None) -> FrameResult:
        """Segment one (H, W, 3) uint8 RGB frame; labels are returned at (H, W), or at `camera` (the
        camera's (H, W)) when image_rgb is a reduced decode of a larger camera image (the node's
        reduced JPEG decode: the network needs fewer pixels than the camera sends)."""
        # Validate before touching any state: a bad frame raises and the stream carries on.
        validate_image(image_rgb)
        if self._ring is not None:
            return FrameResult(**self._ring.process(image_rgb, self._pre, camera))
        with torch.inference_mode(), self.state.schedule.frame_stream(self.device):
            plan = self.decide(image_rgb, self.state, camera)
            return self.commit(plan, self.run(plan))

    def decide(self, image_rgb: np.ndarray, state: StreamState,
               camera: tuple[int, int] | None = None) -> FramePlan:
        """The frame's kind and the outputs its call needs; runs the schedule's share of a deep pass
        in flight and the motion score. Changes nothing in `state` but its schedule's pass."""
        t_start = time.perf_counter()
        shape = camera_shape(image_rgb, camera)
        timer = StageTimer(self.device)
        timer.start()
        st, sched, policy = state, state.schedule, state.policy
        forced = st.cache is None or shape != st.image_shape
        arrived: CommonCache | None = None
        working = sched.in_flight
        if forced:
            sched.cancel()  # its cache belongs to another size, or to before reset()
            if shape != st.image_shape:
                self.prepare_camera(shape, image_rgb.shape[:2])
        else:
            arrived = sched.advance(self._net)  # this frame's piece, or a pass finished before it
        if working and sched.on_frames:
            timer.mark("enc_hi")
        if self.graph_io:  # the graph resizes and normalises; the motion copy comes from the image
            x01 = None
            x = torch.from_numpy(np.ascontiguousarray(image_rgb)).unsqueeze(0)
        else:
            x01 = self._pre.upload(image_rgb)
            x = self._pre.normalize(x01)
        small: Tensor | None = None
        score, since, wants = 0.0, 0, forced
        if not forced:
            since = st.since + 1
            if policy.score == "motion":
                small = self._motion_copy(image_rgb, x01)
                score = self._pre.motion_score(small, st.key_small)  # type: ignore[arg-type]
                wants = bool(policy.decide(since, score))
            elif policy.score == "none":
                wants = bool(policy.decide(since, None))
            # "similarity": decided in run(), from the call's similarity feature
            wants = wants or st.pending
        # One deep pass at a time: a request while one runs waits (coalesced) for its end.
        is_key = forced or (wants and not sched.in_flight)
        after = not forced and policy.score == "similarity"
        kind = "key" if forced or (is_key and sched.inline and not after) else "nonkey"
        outputs = st.blend.outputs(similarity=policy.score == "similarity")
        if kind == "nonkey" and (is_key or after):
            outputs.add("f_in")  # a deep pass may start from this frame's F_in
        timer.mark("preprocess")
        return FramePlan(st, shape, st.frame + 1, forced, since, wants, is_key, score, x, x01, image_rgb,
                         small, arrived, kind, frozenset(outputs), timer, t_start)

    def _motion_copy(self, image: np.ndarray, x01: Tensor | None) -> Tensor:
        return self._pre.host_motion_copy(image) if x01 is None else self._pre.motion_copy(x01)

    def run(self, plan: FramePlan) -> FrameRun:
        """The frame's one backend call; starts a deferred deep pass from its F_in."""
        if plan.kind == "key":
            out = plan.state.schedule.forced_keyframe(self._net, plan.x, plan.outputs, plan.timer,
                                                      self._graph_io(plan))
        else:
            out = self._net.nonkey_frame(plan.x, self._cache_for(plan).common, plan.outputs, plan.timer,
                                         camera=self._graph_io(plan))
        return self.finish(plan, out)

    def _cache_for(self, plan: FramePlan) -> CommonCache:
        # a non-key frame's common part: a deferred pass's that arrived for it, else the stream's
        return plan.arrived if plan.arrived is not None else plan.state.cache  # type: ignore[return-value]

    def batch_call(self, plan: FramePlan) -> BatchCall | None:
        """The plan's frame as one row of a batch of several streams' frames (engine/batching.py),
        or None where it must run on its own: a backend whose graphs have batch 1, graph I/O, the
        profiling mode, a schedule that runs its keyframes or frames its own way."""
        kind = type(plan.state.schedule)
        own_key = plan.kind == "key" and kind.forced_keyframe is not KeyframeSchedule.forced_keyframe
        if (not self.backend.batches or self.graph_io or self.stages or self._ring is not None
                or kind.frame_stream is not KeyframeSchedule.frame_stream or own_key):
            return None
        common = None if plan.kind == "key" else self._cache_for(plan).common
        return BatchCall(plan.x, common, plan.outputs)

    def finish(self, plan: FramePlan, out: FrameOutputs) -> FrameRun:
        """What follows the frame's call (its own, or its row of a batch): the similarity to the
        blend's reference, the feature policy's decision, a deferred deep pass started."""
        st, sched, net = plan.state, plan.state.schedule, self._net
        if plan.kind == "key":
            cache, fresh = CommonCache(out.common, plan.frame), True  # type: ignore[arg-type]
        else:
            cache, fresh = self._cache_for(plan), plan.arrived is not None
        key_sim, low = None, 0.0
        if not plan.forced and out.sim is not None and (st.blend.spec.enabled or plan.decides_after):
            key_sim = st.blend.key_similarity(out.sim)
            low = 0.0 if key_sim is None else low_similarity_share(key_sim)
        wants, is_key = plan.wants, plan.is_key
        if plan.decides_after:
            # No reference to compare with (the policy was swapped in at run time): ask for a
            # keyframe, which makes one.
            wants = (key_sim is None or bool(st.policy.decide(plan.since, low))) or st.pending
            is_key = wants and not sched.in_flight
        if is_key and plan.kind == "nonkey":
            if sched.inline:  # the feature policy made it a keyframe after its call: finish it as one
                out = self._key_from_f_in(plan, out)
                cache, fresh = CommonCache(out.common, plan.frame), True  # type: ignore[arg-type]
            else:
                sched.start(net, out.f_in, plan.frame)  # type: ignore[arg-type]
        return FrameRun(out, cache, fresh, key_sim, low, wants, is_key)  # type: ignore[arg-type]

    def _graph_io(self, plan: FramePlan) -> GraphIO | None:
        return self._io_for(plan.shape, plan.image.shape[:2]) if self.graph_io else None

    def _io_for(self, camera: tuple[int, int], image: tuple[int, ...]) -> GraphIO:
        # The graph takes the image as given (a reduced decode is smaller than the camera) and makes
        # the labels at the size label_size chooses for the camera.
        return GraphIO((int(image[0]), int(image[1])), label_size(self.labels_at, camera, self.input_size))

    def prepare_camera(self, shape: tuple[int, int] | None = None,
                       image: tuple[int, ...] | None = None) -> StreamEngine:
        """With graph I/O, build the key and non-key graphs for camera images of `shape` (default: the
        network input size; `image`: the size they arrive at when decoded reduced) now. The engine
        also does it on the first frame of a new size, so that only this frame pays, not the first
        non-key frame after it too (make demo's p99); a node that knows its camera's size does it at
        start-up. Returns the engine."""
        if self.graph_io:
            st = self.state
            camera = tuple(shape or self.input_size)
            self.backend.prepare_camera(self._io_for(camera, image or camera),  # type: ignore[arg-type]
                                        extras=st.policy.score == "similarity" or not st.schedule.inline)
        return self

    def _key_from_f_in(self, plan: FramePlan, out: FrameOutputs) -> FrameOutputs:
        key = self._net.key_from_f_in(out.f_in, out.sim, plan.outputs, plan.timer)  # type: ignore[arg-type]
        if not self.graph_io:
            return key
        # graph I/O: the labels of the key call on the camera image (rare: the feature policy's
        # keyframes with schedule sync); its common part is the one just computed from F_in
        io = self._net.nonkey_frame(plan.x, key.common, (), plan.timer,  # type: ignore[arg-type]
                                    camera=self._graph_io(plan))
        return FrameOutputs(None, key.common, key.f_in, key.f, key.sim, io.labels, io.top)

    def commit(self, plan: FramePlan, run: FrameRun) -> FrameResult:
        """The blend, labels and confidence; then the stream's new state."""
        st, timer = plan.state, plan.timer
        step = st.blend.step(run.out, run.fresh, run.key_sim, self._net.head)
        if run.out.labels is not None:  # graph I/O: made by the frame's call
            labels = run.out.labels[0].numpy()
            if labels.shape != plan.shape:
                # labels_at "network": nearest neighbours to the camera's size, pixel-centre aligned
                # (INTER_NEAREST is off by half a pixel at ratios that are not whole numbers: -0.1
                # boundary mIoU at 1.5x, scripts/label_upsampling.py)
                labels = cv2.resize(labels, (plan.shape[1], plan.shape[0]),
                                    interpolation=cv2.INTER_NEAREST_EXACT)
            confidence = confidence_from_top(run.out.top[0].numpy())  # type: ignore[index]
        else:
            labels = self._pre.labels(step.logits, plan.shape)  # type: ignore[arg-type]
            confidence = frame_confidence(step.logits)  # type: ignore[arg-type]
        # Kept for the motion score of the following frames (also when the current policy does not
        # need it, so a policy swapped in at run time has its reference).
        key_small = None
        if run.is_key:
            key_small = plan.small if plan.small is not None else self._motion_copy(plan.image, plan.x01)
        timer.mark("postprocess")
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        timings.update(timer.read())
        timings["network"] += sum(timings[k] for k in STAGE_KEYS)
        timings["total"] = (time.perf_counter() - plan.t_start) * 1000.0
        # Commit the new state only once the frame went through.
        st.cache = run.cache
        st.blend.commit(step)
        since = 0 if run.is_key else plan.since
        if run.is_key:
            st.key_small = key_small
        st.since = since
        st.pending = run.wants and not run.is_key
        st.frame = plan.frame
        st.image_shape = plan.shape
        return FrameResult(labels=labels, is_keyframe=run.is_key, frames_since_key=since,
                           motion_score=plan.score, timings_ms=timings, confidence=confidence,
                           common_age=plan.frame - run.cache.frame,
                           deep_pass_in_flight=st.schedule.in_flight, low_similarity=run.low)
