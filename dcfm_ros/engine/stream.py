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
from dcfm_ros.engine.device import StageTimer
from dcfm_ros.engine.keyframe import KeyframePolicy, check_policy
from dcfm_ros.engine.preprocess import FramePreprocessor, validate_image, validate_size

if TYPE_CHECKING:
    from dcfm_ros.model import DCFM

TIMING_KEYS = ("preprocess", "enc_lo", "enc_hi", "ffm", "head", "postprocess", "total")


@dataclass
class FrameResult:
    """One frame's output. `labels` is at the input image's resolution."""

    labels: np.ndarray  # (H, W) uint8 (uint16 if > 255 classes)
    is_keyframe: bool
    frames_since_key: int  # 0 on a keyframe
    # mean |x - x_key| on the downsampled 0..1 input; 0.0 when it was not computed (forced
    # keyframes, and policies with needs_motion False).
    motion_score: float
    # ms per stage: preprocess (incl. motion score), enc_lo, enc_hi (0 on non-key), ffm (on a
    # keyframe incl. computing the cached common part; on a non-key frame only the F_in half), head,
    # postprocess (upsample + argmax + copy to host), total (wall time of process()).
    timings_ms: dict[str, float] = field(default_factory=dict)
    # share of pixels with shallow-feature similarity < 0.8 to the keyframe (engine/blend.py); computed
    # on non-key frames when nonkey_blend or the feature policy needs the map, else 0.0.
    low_similarity: float = 0.0


class StreamEngine:
    """P-mode DCFM over a live stream.

    backend: a name from `dcfm_ros.engine.backends.BACKENDS` (built here for `device` and
    `precision`) or a ready InferenceBackend (whose device and precision then apply). The torch
    backend moves `model` to the device and puts it in eval mode.
    """

    def __init__(self, model: DCFM, policy: KeyframePolicy, device: str | torch.device = "auto",
                 precision: str = "fp32", input_size: tuple[int, int] | None = None,
                 backend: str | InferenceBackend = "torch", nonkey_blend: str | None = "auto") -> None:
        self.backend = backend if isinstance(backend, InferenceBackend) else make_backend(
            backend, model, device, precision)
        self.device = self.backend.device
        self.precision = self.backend.precision
        self.policy = policy  # validated by the setter
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

    def reset(self) -> None:
        """Forget the cached keyframe: the next frame is a keyframe."""
        self._common: Tensor | None = None  # ffm.common_part of the last keyframe's F_co
        self._key_small: Tensor | None = None
        self._key_ref: KeyReference | None = None  # the keyframe's share of the blend (engine/blend.py)
        self._since = 0
        self._image_shape: tuple[int, int] | None = None

    @property
    def has_keyframe(self) -> bool:
        return self._common is not None

    @property
    def preprocessor(self) -> FramePreprocessor:
        """The engine's frame conversion (shared with the benchmark's baseline path)."""
        return self._pre

    def process(self, image_rgb: np.ndarray) -> FrameResult:
        """Segment one (H, W, 3) uint8 RGB frame; labels are returned at (H, W)."""
        # Validate before touching any state: a bad frame raises and the stream carries on.
        validate_image(image_rgb)
        t_start = time.perf_counter()
        shape = (int(image_rgb.shape[0]), int(image_rgb.shape[1]))
        timer = StageTimer(self.device)
        net = self.backend
        with torch.inference_mode():
            timer.start()
            x01 = self._pre.upload(image_rgb)
            x = self._pre.normalize(x01)
            small: Tensor | None = None
            score = 0.0
            if self._common is None or shape != self._image_shape:
                is_key, since = True, 0
            else:
                since = self._since + 1
                if getattr(self._policy, "needs_similarity", False):
                    is_key = False  # the feature policy decides after enc_lo (blend hook below)
                elif self._policy.needs_motion:
                    small = self._pre.motion_copy(x01)
                    score = self._pre.motion_score(small, self._key_small)  # type: ignore[arg-type]
                    is_key = bool(self._policy.decide(since, score))
                else:
                    is_key = bool(self._policy.decide(since, None))
            timer.mark("preprocess")
            f_in = net.enc_lo(x)
            timer.mark("enc_lo")
            # --- nonkey_blend / feature-policy hook (engine/blend.py, engine/feature_policy.py) ---
            sim, low = None, 0.0
            if not is_key and self._key_ref is not None and (
                    self.blend.spec.enabled or getattr(self._policy, "needs_similarity", False)):
                sim = self.blend.similarity(self._key_ref, f_in)
                low = low_similarity_share(sim)
                if getattr(self._policy, "needs_similarity", False):
                    is_key = bool(self._policy.decide(since, low))
            # --- end of hook ---
            if is_key:
                f_co = net.enc_hi(f_in)
                timer.mark("enc_hi")
                # Once per keyframe (counted in "ffm"): the F_co half of the FFM conv.
                common = net.common_part(f_co)
            else:
                common = self._common
            f = net.fuse(common, f_in)  # type: ignore[arg-type]
            f = self.blend.on_feature(None if is_key else sim, self._key_ref, f)  # blend hook
            timer.mark("ffm")
            logits = net.head(f)
            blended = self.blend.on_logits(None if is_key else sim, self._key_ref, logits)  # blend hook
            timer.mark("head")
            if is_key:
                key_ref = self.blend.keyframe(f_in, f, logits)  # blend hook: cached with the common part
            logits = blended
            labels = self._pre.labels(logits, shape)
            timer.mark("postprocess")
            if is_key:
                # Kept for the motion score of the following frames (also when the current policy
                # does not need it, so a policy swapped in at run time has its reference).
                key_small = small if small is not None else self._pre.motion_copy(x01)
        timings = dict.fromkeys(TIMING_KEYS, 0.0)
        timings.update(timer.read())
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        # Commit the new state only once the frame went through.
        if is_key:
            self._common, self._key_small, self._since = common, key_small, 0
            self._key_ref = key_ref  # blend hook
            since = 0
        else:
            self._since = since
        self._image_shape = shape
        return FrameResult(labels=labels, is_keyframe=is_key, frames_since_key=since,
                           motion_score=score, timings_ms=timings, low_similarity=low)
