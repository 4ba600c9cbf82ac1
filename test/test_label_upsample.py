"""Edge-aware label upsampling (dcfm_ros.engine.label_upsample): the boundary follows the guide's
colour edge where it lies off the low-res grid, and nearest-neighbour scaling does not; dtype/shape;
clear errors for unusable inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dcfm_ros.engine.label_upsample import upsample_labels_edge_aware

EDGE = 27  # output column of the colour edge: not a multiple of 4, so it splits a low-res cell


def edge_scene(dtype: type = np.uint8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 40x64 image dark left of column EDGE, bright from it; the labels at 10x16 (from the
    area-averaged image, as a network would see it) and the true 40x64 labels."""
    img = np.full((40, 64, 3), 30, np.uint8)
    img[:, EDGE:] = (200, 180, 60)
    truth = np.zeros((40, 64), dtype)
    truth[:, EDGE:] = 7
    small = cv2.resize(img, (16, 10), interpolation=cv2.INTER_AREA)
    low = np.where(small[..., 0] > 115, 7, 0).astype(dtype)
    return img, low, truth


@pytest.mark.parametrize("radius", [1, 2])
def test_boundary_moves_onto_the_colour_edge(radius: int) -> None:
    img, low, truth = edge_scene()
    got = upsample_labels_edge_aware(low, img, radius=radius)
    nearest = cv2.resize(low, (64, 40), interpolation=cv2.INTER_NEAREST_EXACT)
    assert (nearest != truth).sum() >= 40  # the cell split by the edge: one column wrong per row
    assert got.dtype == np.uint8 and got.shape == (40, 64)
    np.testing.assert_array_equal(got, truth)


def test_uint16_labels_and_uniform_labels_are_nearest() -> None:
    img, low, truth = edge_scene(np.uint16)
    low = low + np.uint16(300)
    got = upsample_labels_edge_aware(low, img)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, truth + 300)
    flat = np.full((10, 16), 3, np.uint8)
    np.testing.assert_array_equal(upsample_labels_edge_aware(flat, img), np.full((40, 64), 3, np.uint8))


def test_huge_sigma_keeps_the_labels_of_a_flat_guide() -> None:
    # Without colour information the vote is spatial only: no label appears that is not a candidate
    # and a label block far from any other label keeps its label.
    rng = np.random.default_rng(0)
    low = cv2.resize(rng.integers(0, 3, (5, 8)).astype(np.uint8), (16, 10), interpolation=cv2.INTER_NEAREST)
    flat = np.full((40, 64, 3), 100, np.uint8)
    got = upsample_labels_edge_aware(low, flat, sigma_color=1e6)
    assert set(np.unique(got)) <= set(np.unique(low))
    assert (got == cv2.resize(low, (64, 40), interpolation=cv2.INTER_NEAREST_EXACT)).mean() > 0.8


@pytest.mark.parametrize(("labels", "guide", "kwargs", "match"), [
    (np.zeros((10, 16), np.int64), np.zeros((40, 64, 3), np.uint8), {}, "uint8 or uint16"),
    (np.zeros((10, 16, 1), np.uint8), np.zeros((40, 64, 3), np.uint8), {}, r"\(h, w\)"),
    (np.zeros((10, 16), np.uint8), np.zeros((40, 64), np.uint8), {}, r"\(H, W, 3\) uint8"),
    (np.zeros((10, 16), np.uint8), np.zeros((40, 64, 3), np.float32), {}, r"\(H, W, 3\) uint8"),
    (np.zeros((10, 16), np.uint8), np.zeros((8, 64, 3), np.uint8), {}, "only upsamples"),
    (np.zeros((10, 16), np.uint8), np.zeros((40, 64, 3), np.uint8), {"sigma_color": 0}, "must be > 0"),
    (np.zeros((10, 16), np.uint8), np.zeros((40, 64, 3), np.uint8), {"radius": 0}, "radius"),
    (np.zeros((10, 16), np.uint8), np.zeros((40, 64, 3), np.uint8),
     {"guide_small": np.zeros((10, 15, 3), np.uint8)}, "guide_small"),
])
def test_refuses_unusable_inputs(labels: np.ndarray, guide: np.ndarray, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        upsample_labels_edge_aware(labels, guide, **kwargs)
