"""DCFM losses on hand-made tensors (L_I/L_B cross-entropy, L_C masked MSE) and on a tiny real model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dcfm_ros.training.losses import (
    agreement_mask,
    consistency_loss,
    dcfm_losses,
    segmentation_ce,
)

# One intra-op thread (conftest.one_torch_thread): the CI box has 2 cores shared with other work, and
# OpenMP threads that outnumber free cores make a tiny step take seconds instead of milliseconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_ce_ignores_255_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 255], [2, 255]]])
    loss = segmentation_ce(logits, target)
    # By hand: mean of -log softmax at the two valid pixels.
    logp = logits.log_softmax(1)
    expected = -(logp[0, 0, 0, 0] + logp[0, 2, 1, 0]) / 2
    assert torch.allclose(loss, expected, atol=1e-6)
    # Changing the logits at ignored pixels changes nothing.
    logits2 = logits.clone()
    logits2[..., 0, 1] += 50.0
    logits2[..., 1, 1] -= 50.0
    assert torch.allclose(segmentation_ce(logits2, target), loss)


def test_ce_all_ignored_is_zero_not_nan_and_upsamples():
    logits = torch.randn(2, 4, 3, 5, requires_grad=True)
    target = torch.full((2, 6, 10), 255)
    loss = segmentation_ce(logits, target)
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    # Low-resolution logits are upsampled to the label size.
    target = torch.randint(0, 4, (2, 6, 10))
    up = F.interpolate(logits.detach(), size=(6, 10), mode="bilinear", align_corners=False)
    assert torch.allclose(segmentation_ce(logits.detach(), target), F.cross_entropy(up, target))


def _logits_for(classes: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    """(B, h, w) class map -> logits whose argmax is that map."""
    return F.one_hot(classes, num_classes).permute(0, 3, 1, 2).float() * 5.0


def test_lc_zero_where_predictions_disagree_even_if_features_differ():
    pred_u = torch.tensor([[[0, 1], [2, 0]]])
    pred_l = torch.tensor([[[1, 2], [0, 1]]])  # disagrees everywhere
    mask = agreement_mask(_logits_for(pred_u), _logits_for(pred_l), (2, 2))
    assert mask.sum() == 0
    f_u = torch.zeros(1, 4, 2, 2, requires_grad=True)
    f_l = torch.ones(1, 4, 2, 2)
    loss = consistency_loss(f_u, f_l, mask)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(f_u.grad) == 0  # never pushes (or pulls) where predictions change


def test_lc_zero_where_features_equal():
    pred = torch.tensor([[[0, 1], [2, 0]]])
    mask = agreement_mask(_logits_for(pred), _logits_for(pred), (2, 2))
    assert mask.sum() == 4
    f = torch.randn(1, 4, 2, 2)
    assert consistency_loss(f, f.clone(), mask).item() == 0.0


def test_lc_positive_where_agree_and_features_differ_hand_value():
    pred_u = torch.tensor([[[0, 1], [2, 0]]])
    pred_l = torch.tensor([[[0, 2], [2, 1]]])  # agrees at (0,0) and (1,0)
    mask = agreement_mask(_logits_for(pred_u), _logits_for(pred_l), (2, 2))
    assert mask[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    f_u = torch.zeros(1, 2, 2, 2, requires_grad=True)
    f_l = torch.zeros(1, 2, 2, 2)
    f_l[0, :, 0, 0] = torch.tensor([1.0, 3.0])  # agreeing pixel: squared diffs 1, 9
    f_l[0, :, 1, 1] = 100.0  # disagreeing pixel: must not count
    loss = consistency_loss(f_u, f_l, mask)
    # Mean over masked elements: (1 + 9 + 0 + 0) / (2 pixels * 2 channels) = 2.5
    assert math.isclose(loss.item(), 2.5, rel_tol=1e-6)
    loss.backward()
    assert f_u.grad[0, :, 1, 1].abs().sum() == 0
    assert f_u.grad[0, :, 0, 0].abs().sum() > 0


def test_agreement_mask_resizes_predictions_to_feature_size_without_grad():
    lu = torch.randn(2, 5, 8, 12, requires_grad=True)
    ll = torch.randn(2, 5, 8, 12, requires_grad=True)
    m = agreement_mask(lu, ll, (4, 6))
    assert m.shape == (2, 1, 4, 6) and not m.requires_grad
    same = agreement_mask(lu, lu, (4, 6))
    assert same.sum() == 2 * 4 * 6


def test_lc_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        consistency_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4), torch.ones(1, 1, 3, 3))


@pytest.fixture(scope="module")
def tiny_model():
    from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model

    torch.manual_seed(0)
    cfg = DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, (64, 96), dropout=0.0)
    return build_model(cfg, None).train()


def test_dcfm_losses_terms_on_real_model(tiny_model):
    torch.manual_seed(1)
    x_l, x_u = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    y = torch.randint(0, 11, (2, 64, 96))
    y[:, :5] = 255
    terms = dcfm_losses(tiny_model, x_l, y, x_u, 0.4, 10.0)
    for t in (terms.total, terms.l_i, terms.l_b, terms.l_c):
        assert torch.isfinite(t)
    assert torch.allclose(terms.total, terms.l_i + 0.4 * terms.l_b + 10.0 * terms.l_c)
    assert terms.l_i > 0 and terms.l_b > 0 and terms.l_c >= 0
    # L_B is the labeled frame as a non-key frame with the neighbour's F_co: with x_u == x_l it is L_I.
    tiny_model.eval()  # deterministic BN for the comparison
    same = dcfm_losses(tiny_model, x_l, y, x_l.clone(), 0.4, 10.0)
    assert torch.allclose(same.l_b, same.l_i, atol=1e-5)
    assert same.l_c.item() == pytest.approx(0.0, abs=1e-10) and same.mask_ratio == 1.0
    # And it equals forward_nonkey(x_l, F_co^u) through the public API.
    with torch.no_grad():
        _, f_co_u, _ = tiny_model.forward_key(x_u)
        logits_ul, _ = tiny_model.forward_nonkey(x_l, f_co_u)
        diff = dcfm_losses(tiny_model, x_l, y, x_u, 0.4, 10.0)
    assert torch.allclose(diff.l_b, segmentation_ce(logits_ul, y), atol=1e-5)
    tiny_model.train()


def test_dcfm_losses_ablation_without_lb(tiny_model):
    x = torch.randn(1, 3, 64, 96)
    y = torch.randint(0, 11, (1, 64, 96))
    terms = dcfm_losses(tiny_model, x, y, torch.randn(1, 3, 64, 96), 0.0, 10.0)
    assert terms.l_b.item() == 0.0
    assert torch.allclose(terms.total, terms.l_i + 10.0 * terms.l_c)
