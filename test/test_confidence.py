"""Per-frame confidence (engine.confidence): mean top softmax probability and its small uint8 map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.confidence import frame_confidence


def test_sure_and_unsure_logits() -> None:
    logits = torch.zeros(1, 4, 3, 5)
    uniform = frame_confidence(logits)
    assert uniform.mean == pytest.approx(0.25)
    assert uniform.map_u8.shape == (3, 5) and uniform.map_u8.dtype == np.uint8
    assert np.all(uniform.map_u8 == round(0.25 * 255))
    logits[0, 2, :, :3] = 50.0  # certain on the left three columns, uniform on the right two
    mixed = frame_confidence(logits)
    assert mixed.mean == pytest.approx((3 * 1.0 + 2 * 0.25) / 5, abs=1e-6)
    assert np.all(mixed.map_u8[:, :3] == 255) and np.all(mixed.map_u8[:, 3:] == 64)


def test_half_precision_logits_give_a_float_mean() -> None:
    logits = torch.randn(1, 6, 4, 4).half()
    ref = torch.softmax(logits.float(), dim=1).max(dim=1).values.mean().item()
    assert frame_confidence(logits).mean == pytest.approx(ref, abs=1e-6)


def test_the_engine_reports_the_confidence_of_its_own_logits(tiny_checkpoint, one_torch_thread) -> None:
    from dcfm_ros.model import load_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    engine = StreamEngine(model, FixedInterval(2), "cpu")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    result = engine.process(image)
    assert result.confidence is not None
    with torch.inference_mode():
        x = engine.preprocessor.normalize(engine.preprocessor.upload(image))
        logits, _, _ = model.forward_key(x)
    expect = frame_confidence(logits)
    assert math.isclose(result.confidence.mean, expect.mean, abs_tol=1e-5)
    assert 1.0 / model.config.num_classes <= result.confidence.mean <= 1.0
    assert np.abs(result.confidence.map_u8.astype(int) - expect.map_u8).max() <= 1
