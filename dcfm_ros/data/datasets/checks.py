"""Start-up scan of a split's labels, before any training step: every file is read once and checked.

A label value that is neither a class of the model nor one of the layout's "ignore" values, a colour
outside the palette, or a label whose size differs from its frame's, is an error that names the
files and the values AS STORED (a 1-based VSPW mask with value 7 for 6 classes says 7, not the
train id 6 it would have become). Without this scan a wrong value either trains silently as the
wrong class, turns into "ignore", or crashes the loss many iterations in with a CUDA assert.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcfm_ros.data.datasets.pairs import ColorLabels, LabelMap, read_label, read_raw_label

_LISTED = 8


class LabelError(ValueError):
    """Label files do not fit the class list (names the files and their values)."""


@dataclass(frozen=True)
class _Finding:
    label: Path
    problem: str


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image  # reads the header only

    with Image.open(path) as im:
        return im.size  # (W, H)


def _check_one(image: Path, label: Path, lut: LabelMap, valid: np.ndarray | None) -> _Finding | None:
    try:
        if isinstance(lut, ColorLabels):
            lab = read_label(label, lut)  # an unknown colour raises, naming the pixel
        else:
            lab = read_raw_label(label)
            assert valid is not None
            if int(lab.max()) >= len(valid):
                values = np.unique(lab)
            else:
                values = np.flatnonzero(np.bincount(lab.ravel(), minlength=len(valid)))
            bad = [int(v) for v in values if v >= len(valid) or not valid[v]]
            if bad:
                return _Finding(label, f"values {bad}")
        w, h = _image_size(image)
    except (OSError, ValueError) as exc:
        return _Finding(label, str(exc))
    if lab.shape[:2] != (h, w):
        return _Finding(label, f"size {lab.shape[1]}x{lab.shape[0]} differs from its frame {image} ({w}x{h})")
    return None


def check_labels(pairs: Sequence[tuple[Path, Path]], lut: LabelMap, num_classes: int,
                 ignore_values: Sequence[int], convention: str, what: str,
                 workers: int | None = None) -> int:
    """Check every (image, label) pair; raise LabelError listing the offending files. Returns the count.

    Valid raw values: those `lut` maps to a class id < num_classes, and `ignore_values`.
    """
    valid = None
    if not isinstance(lut, ColorLabels):
        valid = np.zeros(len(lut), bool)
        valid[np.flatnonzero(lut < num_classes)] = True
        valid[[v for v in ignore_values if v < len(lut)]] = True
    workers = workers or min(8, os.cpu_count() or 1)  # PNG decoding releases the GIL
    with ThreadPoolExecutor(workers) as pool:
        found = [f for f in pool.map(lambda p: _check_one(p[0], p[1], lut, valid), pairs) if f is not None]
    if found:
        listed = "; ".join(f"{f.label}: {f.problem}" for f in found[:_LISTED])
        more = f"; (+{len(found) - _LISTED} more files)" if len(found) > _LISTED else ""
        raise LabelError(f"{what}: {len(found)} of {len(pairs)} label files do not fit the {num_classes} "
                         f"classes ({convention}): {listed}{more}")
    return len(pairs)
