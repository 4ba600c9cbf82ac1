"""Keyframe policies: the decision rules alone, and as the StreamEngine applies them."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from dcfm_ros.engine import FixedInterval, KeyframePolicy, MotionThreshold, StreamEngine, make_policy
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model

SIZE = (64, 96)


def texture(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """A smooth random RGB picture (a 'scene'); different seeds give different scenes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE))


def simulate(policy: KeyframePolicy, scores: list[float]) -> list[int]:
    """Keyframe indices the way the engine asks: frame 0 forced, then distance to the last key."""
    keys, since = [0], 0
    for t in range(1, len(scores)):
        since += 1
        if policy.decide(since, scores[t] if policy.needs_motion else None):
            keys.append(t)
            since = 0
    return keys


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_fixed_interval_keyframes_at_multiples_of_k(k: int) -> None:
    policy = FixedInterval(k)
    assert policy.needs_motion is False
    assert simulate(policy, [0.0] * 20) == list(range(0, 20, k))


def test_motion_threshold_rules() -> None:
    policy = MotionThreshold(0.1, min_interval=3, max_interval=10)
    assert policy.needs_motion is True
    # below min_interval: never, whatever the score
    assert not policy.decide(1, 1.0)
    assert not policy.decide(2, 0.99)
    # from min_interval on: strictly above the threshold
    assert policy.decide(3, 0.5)
    assert not policy.decide(3, 0.1)
    assert not policy.decide(9, 0.0)
    # max_interval refreshes a static scene
    assert policy.decide(10, 0.0)
    # scene cut at frame 7 of a static sequence; refresh every 10 otherwise
    scores = [0.0] * 25
    scores[7] = 0.6
    assert simulate(policy, scores) == [0, 7, 17]


def test_motion_threshold_needs_a_score_once_past_min_interval() -> None:
    with pytest.raises(ValueError, match="motion score"):
        MotionThreshold(0.1, 1, 5).decide(2, None)


@pytest.mark.parametrize("args", [(0,), (-1,), (1.5,), (True,), ("2",)])
def test_fixed_interval_rejects_bad_interval(args: tuple) -> None:
    with pytest.raises(ValueError, match="interval"):
        FixedInterval(*args)


@pytest.mark.parametrize(("args", "match"), [
    ((-0.1, 1, 5), "threshold"),
    ((math.nan, 1, 5), "threshold"),
    ((1.0, 1, 5), "threshold"),
    (("0.1", 1, 5), "threshold"),
    ((0.1, 0, 5), "min_interval"),
    ((0.1, 1, 0), "max_interval"),
    ((0.1, 3, 2), "max_interval"),
    ((0.1, 1.0, 5), "min_interval"),
])
def test_motion_threshold_rejects_bad_parameters(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MotionThreshold(*args)


def test_make_policy() -> None:
    fixed = make_policy("fixed", interval=4)
    assert isinstance(fixed, FixedInterval) and fixed.interval == 4
    motion = make_policy("Motion", threshold=0.2, min_interval=2, max_interval=8)
    assert isinstance(motion, MotionThreshold)
    assert (motion.threshold, motion.min_interval, motion.max_interval) == (0.2, 2, 8)
    with pytest.raises(ValueError, match="unknown keyframe policy"):
        make_policy("optical-flow")
    with pytest.raises(ValueError, match="interval"):
        make_policy("fixed", interval=0)


def test_engine_fixed_interval(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(3), device="cpu")
    results = [engine.process(texture(0)) for _ in range(7)]
    assert [r.is_keyframe for r in results] == [True, False, False, True, False, False, True]
    assert [r.frames_since_key for r in results] == [0, 1, 2, 0, 1, 2, 0]


def test_engine_motion_policy_scene_cut_min_and_max_interval(model: torch.nn.Module) -> None:
    policy = MotionThreshold(0.05, min_interval=2, max_interval=4)
    engine = StreamEngine(model, policy, device="cpu")
    a, b, c = texture(0), texture(1), texture(2)
    frames = [a, b, b, b, b, b, b, c, c, c]
    results = [engine.process(f) for f in frames]
    keys = [r.is_keyframe for r in results]
    # 1: cut seen but before min_interval; 2: cut; 6: static, max_interval refresh; 7: cut held back
    # by min_interval; 8: cut (against the key at 6)
    assert keys == [True, False, True, False, False, False, True, False, True, False]
    scores = [r.motion_score for r in results]
    assert scores[0] == 0.0  # forced first keyframe: not computed
    for t in (1, 2, 7, 8):
        assert scores[t] > 0.05, (t, scores)
    for t in (3, 4, 5, 6, 9):
        assert scores[t] == pytest.approx(0.0, abs=1e-6), (t, scores)
    assert [r.frames_since_key for r in results] == [0, 1, 0, 1, 2, 3, 0, 1, 0, 1]


def test_engine_policy_swap_at_run_time(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(100), device="cpu")
    a, b = texture(0), texture(1)
    assert engine.process(a).is_keyframe
    assert not engine.process(b).is_keyframe
    engine.policy = MotionThreshold(0.05, 1, 100)  # uses the keyframe's stored small copy (frame a)
    r = engine.process(b)
    assert r.is_keyframe and r.motion_score > 0.05
    r = engine.process(b)
    assert not r.is_keyframe and r.motion_score == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="policy"):
        engine.policy = "fixed"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="policy"):
        StreamEngine(model, object(), device="cpu")  # type: ignore[arg-type]


def test_motion_score_is_regional() -> None:
    """A small object moving over a static scene moves one cell's mean, not the whole image's; a change
    over the whole image scores the same either way."""
    from dcfm_ros.engine.preprocess import MOTION_GRID, FramePreprocessor

    size = (96, 128)
    pre = FramePreprocessor(size, (0.0,) * 3, (1.0,) * 3, torch.device("cpu"), 1, motion_downsample=2)
    scene = np.full((*size, 3), 100, np.uint8)
    walker = scene.copy()
    walker[30:50, 60:70] = 250  # 200 of 12288 pixels: a pedestrian far away
    key, now = (pre.motion_copy(pre.upload(x)) for x in (scene, walker))
    regional = pre.motion_score(now, key)
    whole = pre.motion_score(now, key, grid=(1, 1))
    assert whole < 0.01 < 0.1 < regional  # the whole-image mean hides it, its cell does not
    cells = MOTION_GRID[0] * MOTION_GRID[1]
    assert regional <= whole * cells + 1e-6  # a cell's mean is at most all the change in one cell
    brighter = pre.motion_copy(pre.upload(np.full((*size, 3), 130, np.uint8)))
    assert pre.motion_score(brighter, key) == pytest.approx(pre.motion_score(brighter, key, grid=(1, 1)))
    assert pre.motion_score(key, key) == 0.0
