"""Feature keyframe policy `feature:THR[:MIN[:MAX]]`: a keyframe when the network's own shallow
feature says the scene has changed, not the pixels.

score = share of pixels whose cosine similarity to the keyframe's shallow feature is below 0.8 (TFC's
sparse threshold; `dcfm_ros.engine.blend`); keyframe when score > THR (and at least MIN frames since
the last one), or after MAX frames. On a moving vehicle, raw pixel differences (the motion policy)
fire on ego-motion over texture that the network maps to the same classes; the similarity of F_in
measures what the network sees. enc_lo runs on every frame anyway, so the score costs one cosine map.

The policy's `score` is "similarity" (engine/keyframe.py, KeyframePolicy); the engine then asks the
frame's network call for the similarity feature, computes the map and passes the share as `decide`'s
second argument (the motion score's place in the protocol).
"""

from __future__ import annotations

import math

from dcfm_ros.engine.specs import PolicyScore
from dcfm_ros.model.similarity import LOW_SIMILARITY


def _interval(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FeatureSimilarity {name} must be an int >= 1, got {value!r}")
    return value


class FeatureSimilarity:
    """Keyframe when `(share > threshold and frames_since_key >= min_interval)` or
    `frames_since_key >= max_interval`; share = fraction of pixels with similarity < 0.8."""

    score: PolicyScore = "similarity"
    # what `score` says, for callers that asked before the protocol had it
    needs_motion = False
    needs_similarity = True
    low_similarity = LOW_SIMILARITY

    def __init__(self, threshold: float, min_interval: int = 1, max_interval: int = 30) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"FeatureSimilarity threshold must be a number, got {threshold!r}")
        threshold = float(threshold)
        # The share lies in [0, 1]; a threshold >= 1 could never be exceeded.
        if not math.isfinite(threshold) or not 0.0 <= threshold < 1.0:
            raise ValueError(f"FeatureSimilarity threshold must be in [0, 1) (share of pixels with "
                             f"similarity < {LOW_SIMILARITY}), got {threshold}")
        self.threshold = threshold
        self.min_interval = _interval(min_interval, "min_interval")
        self.max_interval = _interval(max_interval, "max_interval")
        if self.max_interval < self.min_interval:
            raise ValueError(f"FeatureSimilarity max_interval ({self.max_interval}) must be >= "
                             f"min_interval ({self.min_interval})")

    def decide(self, frames_since_key: int, score: float | None) -> bool:
        if frames_since_key >= self.max_interval:
            return True
        if frames_since_key < self.min_interval:
            return False
        if score is None:
            raise ValueError("FeatureSimilarity.decide needs the low-similarity share (score 'similarity')")
        return score > self.threshold

    def __repr__(self) -> str:
        return (f"FeatureSimilarity(threshold={self.threshold}, min_interval={self.min_interval}, "
                f"max_interval={self.max_interval})")
