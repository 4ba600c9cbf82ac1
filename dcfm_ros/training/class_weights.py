"""Per-class loss weights from the training labels: median frequency balancing (Eigen & Fergus 2015).

Driving scenes are mostly road, sky and building; poles, signs and cyclists cover about 1 % of the
pixels, and with a plain cross-entropy a short schedule barely learns them, which is what drags the
CamVid mIoU down. Median frequency balancing weights class c by median(freq) / freq(c), where
freq(c) is c's pixel count over the pixel count of the images that contain c (SegNet's CamVid recipe).
Written here because it is a dozen lines of NumPy over the labels; no library ships it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcfm_ros.data.datasets.pairs import read_label


def class_pixel_counts(labels: Sequence[Path], lut: np.ndarray,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels of each class, pixels of the images that contain the class), both (num_classes,) int64.

    Labels are mapped with `lut`; ids >= num_classes (void / ignore) are not counted anywhere.
    """
    counts = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for path in labels:
        label = read_label(Path(path), lut)
        hist = np.bincount(label.ravel(), minlength=256)[:num_classes]
        counts += hist
        image_pixels[hist > 0] += label.size
    return counts, image_pixels


def median_frequency_weights(counts: np.ndarray, image_pixels: np.ndarray, power: float = 1.0) -> np.ndarray:
    """(median(freq) / freq) ** power per class, freq = counts / image_pixels. A class never seen gets 0.

    The median is over the classes that occur, so an absent class cannot shift the others' weights.
    power < 1 softens the balancing: full weights (power 1) trade the large classes' IoU (building,
    sky) for the thin ones', and 0.5 (square root) keeps more of the large classes.
    """
    if power <= 0:
        raise ValueError(f"median frequency weights: power must be > 0, got {power}")
    counts = np.asarray(counts, np.float64)
    image_pixels = np.asarray(image_pixels, np.float64)
    seen = counts > 0
    if not seen.any():
        raise ValueError("median frequency weights: no labeled pixel of any class in the training labels")
    freq = np.zeros_like(counts)
    freq[seen] = counts[seen] / image_pixels[seen]
    weights = np.zeros_like(counts)
    weights[seen] = (np.median(freq[seen]) / freq[seen]) ** power
    return weights
