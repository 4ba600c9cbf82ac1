"""Offline B mode and P mode over sequences, checked against hand computations with the model API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import SIZE, clip

from dcfm_ros.engine import (
    FixedInterval,
    MotionThreshold,
    StreamEngine,
    fixed_keyframes,
    run_bmode,
    run_pmode,
    select_keyframes,
)
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, upsample_logits


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE)).eval()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return clip(6, shift=4)


def by_hand(model: torch.nn.Module, frames: list[np.ndarray], keys: list[int],
            average: str) -> list[np.ndarray]:
    """B mode from the model contract: forward_key for F_co, forward_nonkey with each side's F_co."""
    with torch.inference_mode():
        xs = [model.normalize_input(torch.from_numpy(f).permute(2, 0, 1).unsqueeze(0)) for f in frames]
        f_co = {k: model.forward_key(xs[k])[1] for k in keys}
        out = []
        for t, x in enumerate(xs):
            if t in keys:
                logits = model.forward_key(x)[0]
            else:
                prev = [k for k in keys if k < t]
                nxt = [k for k in keys if k > t]
                sides = ([prev[-1]] if prev else []) + ([nxt[0]] if nxt else [])
                preds = [model.forward_nonkey(x, f_co[k])[0] for k in sides]
                if average == "probs" and len(preds) == 2:  # one side alone: its logits, as P mode
                    preds = [p.softmax(1) for p in preds]
                logits = sum(preds) / len(preds)
            out.append(upsample_logits(logits, SIZE).argmax(1)[0].numpy())
    return out


@pytest.mark.parametrize("average", ["logits", "probs"])
@pytest.mark.parametrize("keys", [[0, 3], [2, 5], [0, 2, 5]])
def test_bmode_equals_average_of_both_directions(model, frames, keys: list[int], average: str) -> None:
    got = run_bmode(model, frames, keys, device="cpu", average=average)
    want = by_hand(model, frames, keys, average)
    assert len(got) == len(frames)
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g.dtype == np.uint8 and g.shape == SIZE
        np.testing.assert_array_equal(g, w, err_msg=f"frame {t}")


def test_bmode_interval_and_difference_from_pmode(model, frames) -> None:
    b = run_bmode(model, frames, 3, device="cpu")
    np.testing.assert_array_equal(np.stack(b), np.stack(run_bmode(model, frames, [0, 3], device="cpu")))
    p = run_pmode(model, frames, 3, device="cpu")
    # keyframes agree; the in-between frames of the first gap use the next keyframe in B mode
    for t in (0, 3):
        np.testing.assert_array_equal(b[t], p[t])
    assert any((b[t] != p[t]).any() for t in (1, 2))
    # after the last keyframe B mode has only the previous keyframe: same as P mode
    for t in (4, 5):
        np.testing.assert_array_equal(b[t], p[t])


def test_pmode_equals_stream_engine(model, frames) -> None:
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    streamed = [engine.process(f).labels for f in frames]
    for s, p in zip(streamed, run_pmode(model, frames, 2, device="cpu"), strict=True):
        np.testing.assert_array_equal(s, p)


def test_select_keyframes_matches_engine(model) -> None:
    a, b = clip(1, seed=0)[0], clip(1, seed=1)[0]
    frames = [a, a, a, b, b, b, a, a, a, a, a, a]
    policy = MotionThreshold(0.05, min_interval=2, max_interval=4)
    engine = StreamEngine(model, policy, device="cpu")
    want = [t for t, f in enumerate(frames) if engine.process(f).is_keyframe]
    assert want == [0, 3, 6, 10]  # cuts at 3 and 6, max_interval at 10
    assert select_keyframes(frames, policy, SIZE, device="cpu") == want
    assert select_keyframes(frames, FixedInterval(5), SIZE, device="cpu") == [0, 5, 10]


def test_sequence_mode_argument_errors(model, frames) -> None:
    assert fixed_keyframes(7, 3) == [0, 3, 6]
    with pytest.raises(ValueError, match="interval"):
        fixed_keyframes(7, 0)
    with pytest.raises(ValueError, match="outside"):
        run_bmode(model, frames, [0, 9], device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        run_bmode(model, frames, [], device="cpu")
    with pytest.raises(ValueError, match="average"):
        run_bmode(model, frames, 2, device="cpu", average="max")
    with pytest.raises(ValueError, match="frame 0"):
        run_pmode(model, frames, [2, 4], device="cpu")
    with pytest.raises(ValueError, match="empty"):
        run_bmode(model, [], 2, device="cpu")
    with pytest.raises(ValueError, match=r"frames\[1\].*uint8"):
        run_bmode(model, [frames[0], frames[1].astype(np.float32)], 2, device="cpu")
