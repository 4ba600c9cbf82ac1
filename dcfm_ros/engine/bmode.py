"""Offline sequence modes: B mode (previous + next keyframe) and P mode, over a list of frames.

B mode (paper Table IX, Algorithm 1 line 19): a non-key frame t with keyframes k0 < t < k1 is
predicted with both keyframes' F_co and the two predictions are averaged. It needs frame k1 before
frame t can be output, so it adds up to K-1 frames of latency: offline use only (evaluation,
labelling); the live node uses StreamEngine (P mode).

What is averaged: by default the logits, exactly as Algorithm 1 writes it
(y_i = 1/2 (Dec(FFM(F_p, f)) + Dec(FFM(F_s, f))), Dec output = logits). `average="probs"` averages
the softmax probabilities instead. Both are averaged at F's resolution, then upsampled and argmaxed
(for logits this equals averaging after the upsampling, bilinear resizing being linear).

Frames after the last keyframe use only the previous keyframe; frames before the first keyframe
(if keyframe 0 is not given) use only the next one. A prediction from one side alone is used as
logits whatever `average` says (so after the last keyframe B mode equals P mode exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from dcfm_ros.engine.backends import InferenceBackend, make_backend
from dcfm_ros.engine.device import resolve_device
from dcfm_ros.engine.keyframe import KeyframePolicy, check_policy
from dcfm_ros.engine.preprocess import FramePreprocessor, validate_image, validate_size

if TYPE_CHECKING:
    from dcfm_ros.model import DCFM

AVERAGES = ("logits", "probs")


def fixed_keyframes(num_frames: int, interval: int) -> list[int]:
    """Keyframe indices 0, K, 2K, ... below num_frames."""
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"keyframe interval must be an int >= 1, got {interval!r}")
    return list(range(0, num_frames, interval))


def _keyframe_list(keyframes: int | Sequence[int], num_frames: int) -> list[int]:
    if isinstance(keyframes, int) and not isinstance(keyframes, bool):
        return fixed_keyframes(num_frames, keyframes)
    try:
        keys = [int(k) for k in keyframes]  # type: ignore[union-attr]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"keyframes must be an interval K (int) or a sequence of frame indices, got "
                         f"{keyframes!r}") from exc
    if not keys:
        raise ValueError("keyframes must contain at least one frame index")
    bad = [k for k in keys if not 0 <= k < num_frames]
    if bad:
        raise ValueError(f"keyframe indices {bad} are outside 0..{num_frames - 1}")
    return sorted(set(keys))


class _Runner:
    """The per-stage network calls shared by the sequence modes, through an inference backend."""

    def __init__(self, model: DCFM, device: str | torch.device, precision: str,
                 input_size: tuple[int, int] | None, backend: str | InferenceBackend = "torch") -> None:
        self.net = backend if isinstance(backend, InferenceBackend) else make_backend(
            backend, model, device, precision)
        self.device = self.net.device
        cfg = model.config
        size = validate_size(cfg.input_size if input_size is None else input_size)
        self.pre = FramePreprocessor(size, cfg.mean, cfg.std, self.device, cfg.num_classes)

    def enc_lo(self, image: np.ndarray) -> Tensor:
        return self.net.enc_lo(self.pre.normalize(self.pre.upload(image)))

    def enc_hi(self, f_in: Tensor) -> Tensor:
        return self.net.enc_hi(f_in)

    def common(self, f_co: Tensor) -> Tensor:
        """The keyframe's cached FFM half (ffm.common_part), reused by every frame fused with it."""
        return self.net.common_part(f_co)

    def logits(self, common: Tensor, f_in: Tensor) -> Tensor:
        return self.net.head(self.net.fuse(common, f_in))

    def labels(self, logits: Tensor, image: np.ndarray) -> np.ndarray:
        return self.pre.labels(logits, (int(image.shape[0]), int(image.shape[1])))


def _check_frames(frames: Sequence[np.ndarray]) -> None:
    if len(frames) == 0:
        raise ValueError("frames is empty")
    for i, frame in enumerate(frames):
        validate_image(frame, f"frames[{i}]")


def run_bmode(model: DCFM, frames: Sequence[np.ndarray], keyframes: int | Sequence[int], *,
              device: str | torch.device = "auto", precision: str = "fp32",
              input_size: tuple[int, int] | None = None, average: str = "logits",
              backend: str | InferenceBackend = "torch") -> list[np.ndarray]:
    """B mode over a whole sequence. `keyframes`: interval K or explicit frame indices.

    Returns one (H, W) label map per frame, at each frame's resolution. Only two keyframes' cached
    common parts (ffm.common_part of F_co, the size of F_co) are held at a time (the keyframes
    around the current gap), so memory does not grow with the sequence.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    _check_frames(frames)
    keys = _keyframe_list(keyframes, len(frames))
    run = _Runner(model, device, precision, input_size, backend)
    out: list[np.ndarray | None] = [None] * len(frames)

    def combine(logits: list[Tensor]) -> Tensor:
        if len(logits) == 1:
            return logits[0]
        if average == "probs":
            return (logits[0].softmax(dim=1) + logits[1].softmax(dim=1)) / 2
        return (logits[0] + logits[1]) / 2

    with torch.inference_mode():
        prev_common: Tensor | None = None
        prev_key = -1
        for key in [*keys, len(frames)]:  # len(frames): sentinel closing the last gap
            common: Tensor | None = None
            if key < len(frames):
                f_in = run.enc_lo(frames[key])
                common = run.common(run.enc_hi(f_in))
                out[key] = run.labels(run.logits(common, f_in), frames[key])
            # The frames strictly between the previous keyframe and this one.
            for t in range(prev_key + 1, key):
                f_in = run.enc_lo(frames[t])
                sides = [c for c in (prev_common, common) if c is not None]
                out[t] = run.labels(combine([run.logits(c, f_in) for c in sides]), frames[t])
            prev_common, prev_key = common, key
    return out  # type: ignore[return-value]


def run_pmode(model: DCFM, frames: Sequence[np.ndarray], keyframes: int | Sequence[int], *,
              device: str | torch.device = "auto", precision: str = "fp32",
              input_size: tuple[int, int] | None = None,
              backend: str | InferenceBackend = "torch") -> list[np.ndarray]:
    """P mode over a sequence with given keyframes (for comparison with B mode on equal keyframes).

    Frame 0 must be a keyframe (P mode has nothing to reuse before it). With an interval K this
    gives the same labels as StreamEngine with FixedInterval(K) on frames of one resolution.
    """
    _check_frames(frames)
    keys = set(_keyframe_list(keyframes, len(frames)))
    if 0 not in keys:
        raise ValueError("P mode needs frame 0 as a keyframe (nothing earlier to reuse F_co from)")
    run = _Runner(model, device, precision, input_size, backend)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        common: Tensor | None = None
        for t, frame in enumerate(frames):
            f_in = run.enc_lo(frame)
            if t in keys:
                common = run.common(run.enc_hi(f_in))
            out.append(run.labels(run.logits(common, f_in), frame))  # type: ignore[arg-type]
    return out


def select_keyframes(frames: Sequence[np.ndarray], policy: KeyframePolicy,
                     input_size: tuple[int, int], device: str | torch.device = "auto") -> list[int]:
    """The keyframes a causal `policy` picks on `frames` (same motion score as StreamEngine).

    Lets B mode be evaluated with the motion policy's keyframes. Frame 0 and resolution changes
    are keyframes, as in the engine. Runs no network.
    """
    check_policy(policy)
    _check_frames(frames)
    pre = FramePreprocessor(validate_size(input_size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                            resolve_device(device), num_classes=1)
    keys: list[int] = []
    key_small: Tensor | None = None
    last_shape: tuple[int, ...] | None = None
    since = 0
    with torch.inference_mode():
        for t, frame in enumerate(frames):
            small = pre.motion_copy(pre.upload(frame)) if policy.score == "motion" else None
            if t == 0 or frame.shape != last_shape:
                is_key = True
            else:
                since += 1
                score = pre.motion_score(small, key_small) if small is not None else None  # type: ignore[arg-type]
                is_key = bool(policy.decide(since, score))
            if is_key:
                keys.append(t)
                key_small, since = small, 0
            last_shape = frame.shape
    return keys
