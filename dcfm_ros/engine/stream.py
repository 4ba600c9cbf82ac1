"""StreamEngine: DCFM in P mode, one frame at a time, strictly causal.

keyframe:      F_in = enc_lo(x), F_co = enc_hi(F_in), common = ffm.common_part(F_co) (cached),
               F = ffm.fuse_with_common(common, F_in), y = head(F)
non-key frame: F_in = enc_lo(x), F = ffm.fuse_with_common(cached common, F_in), y = head(F)

The cache is the F_co half of the FFM's 1x1 conv (W_co * Norm(F_co) + bias, see FFM), not F_co
itself: it is computed once per keyframe, so a non-key frame's FFM convolves only the few F_in
channels. Key and non-key frames share the fuse_with_common path; the result equals
model.ffm(F_co, F_in) up to float rounding.

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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dcfm_ros.engine.backends import InferenceBackend, make_backend
from dcfm_ros.engine.blend import KeyReference, NonkeyBlend, low_similarity_share, parse_blend
from dcfm_ros.engine.confidence import Confidence, frame_confidence
from dcfm_ros.engine.device import StageTimer
from dcfm_ros.engine.keyframe import KeyframePolicy, check_policy
from dcfm_ros.engine.preprocess import FramePreprocessor, validate_image, validate_size
from dcfm_ros.engine.reference_ring import reference_stream
from dcfm_ros.engine.schedules import CommonCache, KeyframeSchedule, make_schedule

if TYPE_CHECKING:
    from dcfm_ros.model import DCFM

TIMING_KEYS = ("preprocess", "enc_lo", "enc_hi", "ffm", "head", "postprocess", "total")


@dataclass
class FrameResult:
    """One frame's output. `labels` is at the input image's resolution."""

    labels: np.ndarray  # (H, W) uint8 (uint16 if > 255 classes)
    # this frame is a keyframe: its F_in starts a deep pass (with schedule sync, or when forced, this
    # frame also uses the result; with spread/background later frames do, see common_age)
    is_keyframe: bool
    frames_since_key: int  # 0 on a keyframe
    # the regional motion score against the last keyframe (see MotionThreshold); 0.0 when it was not
    # computed (forced keyframes, and policies with needs_motion False).
    motion_score: float
    # ms per stage: preprocess (incl. motion score), enc_lo, enc_hi (deep-pass work run on this
    # frame's thread: the whole pass on a sync keyframe, one piece with spread, 0 otherwise), ffm (on
    # a sync keyframe incl. computing the cached common part; otherwise only the F_in half), head,
    # postprocess (upsample + argmax + copy to host), total (wall time of process()).
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


class StreamEngine:
    """P-mode DCFM over a live stream.

    backend: a name from `dcfm_ros.engine.backends.BACKENDS` (built here for `device` and
    `precision`) or a ready InferenceBackend (whose device and precision then apply). The torch
    backend moves `model` to the device and puts it in eval mode.
    schedule: when keyframes' deep passes run (see dcfm_ros.engine.schedules): "sync" (default, the
    paper's P mode), "spread" (in `spread` pieces over the following frames), "background" (worker
    with `background_threads` torch threads), "lag:L" (offline evaluation), or a KeyframeSchedule.
    Call close() when done with a background schedule (it stops the worker).
    """

    def __init__(self, model: DCFM, policy: KeyframePolicy, device: str | torch.device = "auto",
                 precision: str = "fp32", input_size: tuple[int, int] | None = None,
                 backend: str | InferenceBackend = "torch", schedule: str | KeyframeSchedule = "sync",
                 spread: int = 3, background_threads: int | None = 1,
                 nonkey_blend: str | None = "auto", reference_stride: int | None = None) -> None:
        # MRCFA / SD-CPC: every frame through engine/reference_ring.py (None for DCFM / TFC).
        self._ring = reference_stream(model, backend, device, precision, reference_stride, input_size)
        self.backend = self._ring if self._ring is not None else backend if isinstance(
            backend, InferenceBackend) else make_backend(backend, model, device, precision)
        self.device = self.backend.device
        self.precision = self.backend.precision
        self.policy = policy  # validated by the setter
        self._schedule = make_schedule(schedule, spread, background_threads)
        if self._schedule.uses_deep_units:
            self.backend.prepare_deep_units()  # at start-up, not on the first keyframe
        config = model.config
        self.model = model
        # nonkey_blend (engine/blend.py): "auto" = the model's own (DCFM none, TFC cosine).
        self.blend = NonkeyBlend(parse_blend(nonkey_blend, model), model)
        self.num_classes: int = config.num_classes
        self.class_names: tuple[str, ...] = tuple(config.class_names)
        self.palette: tuple[tuple[int, int, int], ...] = tuple(tuple(c) for c in config.palette)
        self.input_size = validate_size(config.input_size if input_size is None else input_size)
        self._pre = FramePreprocessor(self.input_size, config.mean, config.std, self.device,
                                      self.num_classes)
        self.reset()

    @property
    def policy(self) -> KeyframePolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: KeyframePolicy) -> None:
        # Replaceable at run time (node parameters); takes effect from the next frame. The cached
        # common part and the keyframe's small copy stay valid, so no keyframe is forced.
        self._policy = check_policy(policy)

    @property
    def schedule(self) -> KeyframeSchedule:
        return self._schedule

    @schedule.setter
    def schedule(self, schedule: str | KeyframeSchedule) -> None:
        # Replaceable at run time between frames. The cache stays; a pass in flight is dropped (after
        # it stopped running, so two never overlap) and its keyframe request carries over to the new
        # schedule's next frame.
        new = make_schedule(schedule)
        old = self._schedule
        if new is old:
            return
        self._pending = self._pending or old.in_flight
        old.close()
        if new.uses_deep_units:
            self.backend.prepare_deep_units()
        self._schedule = new

    def close(self) -> None:
        """Stop the schedule's worker (background); the engine is not used afterwards."""
        self._schedule.close()

    def reset(self) -> None:
        """Forget the cached keyframe: the next frame is a keyframe."""
        self._schedule.cancel()
        if self._ring is not None:
            self._ring.reset()
        self._cache: CommonCache | None = None  # ffm.common_part of a keyframe's F_co, and its frame
        self._key_small: Tensor | None = None
        self._key_ref: KeyReference | None = None  # the keyframe's share of the blend (engine/blend.py)
        # nonkey_blend reference "prev": the last frame's blended output (engine/blend.py).
        self._blend_ref: KeyReference | None = None
        self._since = 0
        self._frame = -1  # index of the last frame since reset()
        self._pending = False  # a keyframe was asked for while a deep pass was in flight
        self._image_shape: tuple[int, int] | None = None

    @property
    def has_keyframe(self) -> bool:
        return self._cache is not None

    @property
    def preprocessor(self) -> FramePreprocessor:
        """The engine's frame conversion (shared with the benchmark's baseline path)."""
        return self._pre

    def process(self, image_rgb: np.ndarray) -> FrameResult:
        """Segment one (H, W, 3) uint8 RGB frame; labels are returned at (H, W)."""
        # Validate before touching any state: a bad frame raises and the stream carries on.
        validate_image(image_rgb)
        if self._ring is not None:
            return FrameResult(**self._ring.process(image_rgb, self._pre))
        t_start = time.perf_counter()
        shape = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
        timer = StageTimer(self.device)
        net, sched = self.backend, self._schedule
        frame = self._frame + 1
        with torch.inference_mode(), sched.frame_stream(self.device):
            timer.start()
            forced = self._cache is None or shape != self._image_shape
            arrived: CommonCache | None = None
            working = sched.in_flight
            if forced:
                sched.cancel()  # its cache belongs to another size, or to before reset()
            else:
                arrived = sched.advance(net)  # this frame's piece, or a pass finished before it
            if working and sched.on_frames:
                timer.mark("enc_hi")
            x01 = self._pre.upload(image_rgb)
            x = self._pre.normalize(x01)
            small: Tensor | None = None
            score = 0.0
            wants = forced
            since = 0
            needs_sim = bool(getattr(self._policy, "needs_similarity", False))
            if not forced:
                since = self._since + 1
                if needs_sim:
                    wants = False  # the feature policy decides after enc_lo (blend hook below)
                elif self._policy.needs_motion:
                    small = self._pre.motion_copy(x01)
                    score = self._pre.motion_score(small, self._key_small)  # type: ignore[arg-type]
                    wants = bool(self._policy.decide(since, score))
                else:
                    wants = bool(self._policy.decide(since, None))
                wants = wants or self._pending
            # One deep pass at a time: a request while one runs waits (coalesced) for its end.
            is_key = forced or (wants and not sched.in_flight)
            timer.mark("preprocess")
            f_in = net.enc_lo(x)
            timer.mark("enc_lo")
            # --- nonkey_blend / feature-policy hook (engine/blend.py, engine/feature_policy.py) ---
            # The reference is the first frame that used the current common feature (the keyframe
            # with sync; with spread/background the frame its pass arrived on).
            sim, low, s_t = None, 0.0, None  # s_t: this frame's similarity feature, computed once
            if not forced and self._key_ref is not None and (self.blend.spec.enabled or needs_sim):
                s_t = self.blend.feature(f_in)
                sim = self.blend.similarity(self._key_ref, s_t)
                low = low_similarity_share(sim)
                if needs_sim:
                    wants = bool(self._policy.decide(since, low)) or self._pending
                    is_key = wants and not sched.in_flight
            # --- end of hook ---
            f_co: Tensor | None = None
            if forced:
                f_co = sched.forced_pass(net, f_in)
            elif is_key:
                f_co = sched.start(net, f_in, frame)
            if f_co is not None:
                timer.mark("enc_hi")
                # Once per keyframe (counted in "ffm"): the F_co half of the FFM conv.
                cache = CommonCache(net.common_part(f_co), frame)
            else:
                cache = arrived if arrived is not None else self._cache  # type: ignore[assignment]
            fresh = f_co is not None or arrived is not None  # this frame is the first to use `cache`
            f = net.fuse(cache.common, f_in)
            # Blend reference: the keyframe's, or (reference "prev") the previous frame's blended output.
            blend_ref, blend_sim = self._key_ref, sim
            if not fresh and s_t is not None and self.blend.follows_previous and self._blend_ref is not None:
                blend_ref = self._blend_ref
                blend_sim = self.blend.similarity(blend_ref, s_t)
            f = self.blend.on_feature(None if fresh else blend_sim, blend_ref, f)  # blend hook
            timer.mark("ffm")
            logits = net.head(f)
            blended = self.blend.on_logits(None if fresh else blend_sim, blend_ref, logits)  # blend hook
            timer.mark("head")
            if fresh or self.blend.follows_previous:
                s_t = self.blend.feature(f_in) if s_t is None else s_t
            if fresh:
                key_ref = self.blend.keyframe(s_t, f, logits)  # blend hook: cached with the common part
            elif self.blend.follows_previous:
                next_ref = self.blend.keyframe(s_t, f, blended)
            logits = blended
            labels = self._pre.labels(logits, shape)
            confidence = frame_confidence(logits)
            timer.mark("postprocess")
            if is_key:
                # Kept for the motion score of the following frames (also when the current policy
                # does not need it, so a policy swapped in at run time has its reference).
                key_small = small if small is not None else self._pre.motion_copy(x01)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        timings.update(timer.read())
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        # Commit the new state only once the frame went through.
        self._cache = cache
        if fresh:
            self._key_ref = self._blend_ref = key_ref  # blend hook
        elif self.blend.follows_previous:
            self._blend_ref = next_ref
        if is_key:
            self._key_small, self._since = key_small, 0
            since = 0
        else:
            self._since = since
        self._pending = wants and not is_key
        self._frame = frame
        self._image_shape = shape
        return FrameResult(labels=labels, is_keyframe=is_key, frames_since_key=since,
                           motion_score=score, timings_ms=timings, confidence=confidence,
                           common_age=frame - cache.frame, deep_pass_in_flight=sched.in_flight,
                           low_similarity=low)
