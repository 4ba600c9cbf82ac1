"""mIoU, wIoU and mVC against values computed by hand on tiny label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcfm_ros.data.metrics import ConfusionMatrix, mean_video_consistency, video_consistency


def test_miou_wiou_by_hand_with_ignore_and_absent_class():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 0, 2]])  # the 2 sits on an ignored pixel: it must not count
    cm = ConfusionMatrix(num_classes=4)
    cm.update(pred, gt)
    # class 0: tp 3, gt 4, pred 4 -> IoU 3/5; class 1: tp 2, gt 3, pred 3 -> 2/4.
    # classes 2 and 3: absent from GT and (valid) prediction -> NaN, excluded from the mean.
    iou = cm.iou()
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(2 / 4)
    assert math.isnan(iou[2]) and math.isnan(iou[3])
    assert cm.miou() == pytest.approx((3 / 5 + 2 / 4) / 2)
    # wIoU: frequencies 4/7 and 3/7.
    assert cm.fwiou() == pytest.approx(4 / 7 * 3 / 5 + 3 / 7 * 2 / 4)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    s = cm.summary(["a", "b", "c", "d"])
    assert s["per_class_IoU"]["c"] is None and s["pixels"] == 7


def test_predicted_but_absent_class_counts_with_iou_zero():
    gt = np.array([[0, 0]])
    pred = np.array([[0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    # class 0: 1/2; class 2: predicted, never in GT -> IoU 0 and counted; class 1 absent -> excluded.
    assert cm.miou() == pytest.approx((0.5 + 0.0) / 2)


def test_accumulates_over_frames_and_out_of_range_prediction_is_wrong():
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 1]]), np.array([[0, 1]]))
    cm.update(np.array([[7, 1]]), np.array([[0, 1]]))  # 7 is not a class: a miss for GT 0
    # class 0: tp 1, gt 2, pred 1 -> 1/2; class 1: 2/2.
    assert cm.iou().tolist() == pytest.approx([0.5, 1.0])


def test_bad_ground_truth_and_shapes_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.zeros((1, 2)), np.array([[0, 5]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((1, 3)), np.zeros((1, 2)))


def test_video_consistency_by_hand():
    # 4 frames of 1x4 pixels. GT: pixel 3 changes at frame 2; pixel 2 is void.
    gts = [np.array([[0, 1, 255, 2]]),
           np.array([[0, 1, 255, 2]]),
           np.array([[0, 1, 255, 0]]),
           np.array([[0, 1, 255, 0]])]
    # Predictions: pixel 0 stable (and right), pixel 1 flips at frame 1, pixel 3 stable but wrong.
    preds = [np.array([[0, 1, 5, 1]]),
             np.array([[0, 2, 5, 1]]),
             np.array([[0, 1, 5, 1]]),
             np.array([[0, 1, 5, 1]])]
    # l = 2, windows (0,1), (1,2), (2,3):
    #   (0,1): GT-consistent valid {0,1,3}; pred-consistent {0,3} -> 2/3
    #   (1,2): GT-consistent {0,1};         pred-consistent among them {0} -> 1/2
    #   (2,3): GT-consistent {0,1,3};       pred-consistent {0,1,3} -> 3/3
    vc2 = video_consistency(gts, preds, 2)
    assert vc2 == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # l = 4: one window; GT-consistent {0,1}; pred-consistent {0} -> 1/2
    assert video_consistency(gts, preds, 4) == pytest.approx(0.5)
    # The stricter variant also needs the prediction to equal the GT: pixel 3 (wrong) drops out.
    strict = video_consistency(gts, preds, 2, require_correct=True)
    assert strict == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)
    # Too short a video has no VC_l.
    assert video_consistency(gts, preds, 5) is None


def test_mvc_averages_over_videos_and_skips_short_ones():
    a = ([np.zeros((2, 2), int)] * 3, [np.zeros((2, 2), int)] * 3)  # perfectly consistent: 1.0
    flip = [np.zeros((2, 2), int), np.ones((2, 2), int), np.zeros((2, 2), int)]
    b = ([np.zeros((2, 2), int)] * 3, flip)  # predictions change every frame: 0.0
    short = ([np.zeros((2, 2), int)], [np.zeros((2, 2), int)])
    assert mean_video_consistency([a, b, short], 2) == pytest.approx(0.5)
    assert mean_video_consistency([short], 2) is None
