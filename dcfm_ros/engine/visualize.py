"""Label maps -> pictures: colour lookup, blend over the camera image, per-class binary masks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import cv2
import numpy as np


def _check_labels(labels: object) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.ndim != 2:
        shape = getattr(labels, "shape", None)
        raise ValueError(f"labels must be a 2-D (H, W) numpy array, got {type(labels).__name__} "
                         f"with shape {shape}")
    if labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be an integer array, got dtype {labels.dtype}")
    return labels


def _palette_tuple(palette: Sequence[Sequence[int]] | np.ndarray) -> tuple[tuple[int, int, int], ...]:
    try:
        out = tuple(tuple(int(c) for c in colour) for colour in np.asarray(palette).tolist())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"palette must be a sequence of (R, G, B) triples, got {palette!r}") from exc
    if not out or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in out):
        raise ValueError("palette must be a non-empty sequence of (R, G, B) triples of ints 0..255")
    if len(out) > 65536:
        raise ValueError(f"palette has {len(out)} colours; at most 65536 are supported")
    return out


@lru_cache(maxsize=16)
def _lut(palette: tuple[tuple[int, int, int], ...], size: int) -> np.ndarray:
    # Labels without a colour (e.g. 255 = void/ignore) map to black instead of raising.
    lut = np.zeros((size, 3), dtype=np.uint8)
    lut[: min(size, len(palette))] = np.asarray(palette[:size], dtype=np.uint8)
    return lut


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """(H, W) integer labels -> (H, W, 3) uint8 RGB via a lookup table; unknown labels are black."""
    labels = _check_labels(labels)
    pal = _palette_tuple(palette)
    if labels.dtype == np.uint8:
        size = 256
    elif labels.dtype == np.uint16:
        size = 65536
    else:
        # Wider integer types: range-check, then index a table just big enough.
        if labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
        top = int(labels.max()) if labels.size else 0
        size = max(len(pal), top + 1)
    return np.take(_lut(pal, size), labels, axis=0)


def overlay(image_rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(1 - alpha) * image + alpha * color, both (H, W, 3) uint8 -> (H, W, 3) uint8 (rounded)."""
    for name, arr in (("image_rgb", image_rgb), ("color", color)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{name} must be an (H, W, 3) uint8 array, got "
                             f"{getattr(arr, 'shape', type(arr).__name__)} {getattr(arr, 'dtype', '')}")
    if image_rgb.shape != color.shape:
        raise ValueError(f"image_rgb {image_rgb.shape} and color {color.shape} must have the same shape")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return cv2.addWeighted(image_rgb, 1.0 - float(alpha), color, float(alpha), 0.0)


def class_mask(labels: np.ndarray, class_id: int) -> np.ndarray:
    """(H, W) uint8 mask: 255 where labels == class_id, else 0."""
    labels = _check_labels(labels)
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or class_id < 0:
        raise ValueError(f"class_id must be an int >= 0, got {class_id!r}")
    return np.where(labels == class_id, np.uint8(255), np.uint8(0))
