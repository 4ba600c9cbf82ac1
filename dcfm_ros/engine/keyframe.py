"""Keyframe policies: decide, causally, whether the current frame recomputes F_co.

Paper Section III-D / Algorithm 1 searches *ahead* for the next keyframe (offline). A live robot
cannot: every policy here decides on the current frame only, against the last keyframe, and the
motion policy caps the interval (`max_interval`) so a static camera still refreshes F_co.

`frames_since_key` is the distance from the last keyframe to the current frame (1 for the frame
right after a keyframe). The engine forces keyframes itself (first frame, reset, resolution
change); policies are only asked about the other frames.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

from dcfm_ros.engine.specs import KEYFRAME_POLICIES, POLICY_SCORES, PolicyScore, PolicySpec

POLICIES = KEYFRAME_POLICIES

# The score a policy decides on, which the engine computes for it (and only then):
#   "none"        nothing: decide(frames_since_key, None)
#   "motion"      the regional motion score against the keyframe (engine/preprocess.py), before the
#                 frame's network call
#   "similarity"  the share of pixels whose shallow-feature similarity to the keyframe is low
#                 (engine/blend.py), which comes out of the frame's network call: the decision is
#                 made after it (engine/stream.py)


@runtime_checkable
class KeyframePolicy(Protocol):
    """What the engine asks a policy: `score`, the score it decides on (POLICY_SCORES), and
    `decide(frames_since_key, score)` with that score (None for "none")."""

    score: PolicyScore

    def decide(self, frames_since_key: int, motion_score: float | None) -> bool: ...


def _positive_int(value: object, name: str) -> int:
    # bool is an int subclass; True as an interval is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


class FixedInterval:
    """Keyframe every `interval` frames (K in the paper): frames 0, K, 2K, ... K=1: every frame."""

    score: PolicyScore = "none"
    needs_motion = False

    def __init__(self, interval: int) -> None:
        self.interval = _positive_int(interval, "FixedInterval interval")

    def decide(self, frames_since_key: int, motion_score: float | None = None) -> bool:
        return frames_since_key >= self.interval

    def __repr__(self) -> str:
        return f"FixedInterval(interval={self.interval})"


class MotionThreshold:
    """Adaptive keyframes (the paper's AKS, made causal).

    Keyframe when `(score > threshold and frames_since_key >= min_interval)` or
    `frames_since_key >= max_interval`. The score is regional: the largest mean |x - x_key| over a
    grid of cells (preprocess.MOTION_GRID, 6x8) of a downsampled 0..1 copy of the network input, so
    `threshold` is in 0..1 intensity units (e.g. 0.1 = one cell changed by 10 % grey levels on
    average) and a person crossing a static camera's view counts, not only a pan or a cut.
    """

    score: PolicyScore = "motion"
    needs_motion = True

    def __init__(self, threshold: float, min_interval: int = 1, max_interval: int = 30) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"MotionThreshold threshold must be a number, got {threshold!r}")
        threshold = float(threshold)
        # The score lies in [0, 1]; a threshold >= 1 could never be exceeded (the policy would
        # silently degrade to a fixed max_interval), which is a configuration error.
        if not math.isfinite(threshold) or not 0.0 <= threshold < 1.0:
            raise ValueError(f"MotionThreshold threshold must be in [0, 1) (mean absolute difference of "
                             f"0..1 images), got {threshold}")
        self.threshold = threshold
        self.min_interval = _positive_int(min_interval, "MotionThreshold min_interval")
        self.max_interval = _positive_int(max_interval, "MotionThreshold max_interval")
        if self.max_interval < self.min_interval:
            raise ValueError(f"MotionThreshold max_interval ({self.max_interval}) must be >= min_interval "
                             f"({self.min_interval})")

    def decide(self, frames_since_key: int, motion_score: float | None) -> bool:
        if frames_since_key >= self.max_interval:
            return True
        if frames_since_key < self.min_interval:
            return False
        if motion_score is None:
            raise ValueError("MotionThreshold.decide needs a motion score (needs_motion is True)")
        return motion_score > self.threshold

    def __repr__(self) -> str:
        return (f"MotionThreshold(threshold={self.threshold}, min_interval={self.min_interval}, "
                f"max_interval={self.max_interval})")


def make_policy(policy: str, interval: int = 2, threshold: float = 0.05, min_interval: int = 1,
                max_interval: int = 30, feature_threshold: float = 0.75) -> KeyframePolicy:
    """Build a policy from plain parameters (ROS node parameters, CLI flags).

    policy "fixed" uses `interval`; "motion" uses `threshold`, `min_interval`, `max_interval`;
    "feature" (engine/feature_policy.py) uses `feature_threshold` (a share of pixels, not a motion
    score, hence its own value), `min_interval`, `max_interval`.
    """
    if not isinstance(policy, str):
        raise ValueError(f"keyframe policy must be a string, one of {POLICIES}, got {policy!r}")
    name = policy.strip().lower()
    if name == "fixed":
        return FixedInterval(interval)
    if name == "motion":
        return MotionThreshold(threshold, min_interval, max_interval)
    if name == "feature":
        from dcfm_ros.engine.feature_policy import FeatureSimilarity

        return FeatureSimilarity(feature_threshold, min_interval, max_interval)
    raise ValueError(f"unknown keyframe policy {policy!r}; expected one of {POLICIES}")


def build_policy(spec: PolicySpec) -> KeyframePolicy:
    """The policy a spec (`dcfm_ros.engine.specs.parse_policy`) describes."""
    return make_policy(spec.kind, interval=spec.interval, threshold=spec.threshold,
                       min_interval=spec.min_interval, max_interval=spec.max_interval,
                       feature_threshold=spec.threshold)


def check_policy(policy: object) -> KeyframePolicy:
    """Reject objects that do not implement the KeyframePolicy protocol, with a clear message."""
    if not isinstance(policy, KeyframePolicy) or not callable(getattr(policy, "decide", None)):
        raise ValueError(f"policy must provide decide(frames_since_key, score) and score (one of "
                         f"{POLICY_SCORES}), got {type(policy).__name__}")
    if policy.score not in POLICY_SCORES:
        raise ValueError(f"policy {policy!r}: score must be one of {POLICY_SCORES}, got {policy.score!r}")
    return policy
