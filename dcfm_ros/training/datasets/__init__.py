"""Video segmentation datasets for DCFM training/evaluation: CamVid, Cityscapes (sequence), VSPW.

Each dataset type provides, through this registry:
- `dataset_spec(type)`: class names, palette and the raw-label -> train-id lookup table (ignore 255);
- `pair_samples(type, root, split)`: the training pairs (labeled frame + neighbour candidates);
- `video_frames(type, root, split)`: every video's frames in temporal order for evaluation (with the
  label path where a frame has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from dcfm_ros.model.config import CAMVID_CLASSES, CAMVID_PALETTE
from dcfm_ros.training.datasets.pairs import FrameSample, LabeledFrames, PairDataset, PairSample

TYPES = ("camvid", "cityscapes", "vspw")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    lut: np.ndarray  # raw label value -> train id (255 = ignore)


def _check(kind: str) -> str:
    kind = str(kind).lower()
    if kind not in TYPES:
        raise ValueError(f"unknown dataset type {kind!r}; expected one of {TYPES}")
    return kind


def dataset_spec(kind: str, root: str | Path | None = None) -> DatasetSpec:
    """`root` is only used by VSPW, whose class names come from a file inside the dataset."""
    kind = _check(kind)
    if kind == "camvid":
        from dcfm_ros.training.datasets import camvid as m
        return DatasetSpec(kind, CAMVID_CLASSES, CAMVID_PALETTE, m.CAMVID_LUT)
    if kind == "cityscapes":
        from dcfm_ros.training.datasets import cityscapes as c
        return DatasetSpec(kind, c.CITYSCAPES_CLASSES, c.CITYSCAPES_PALETTE, c.CITYSCAPES_LUT)
    from dcfm_ros.training.datasets import vspw as v
    return DatasetSpec(kind, v.vspw_class_names(root), v.vspw_palette(), v.VSPW_LUT)


def pair_samples(kind: str, root: str | Path, split: str) -> list[PairSample]:
    kind = _check(kind)
    if kind == "camvid":
        from dcfm_ros.training.datasets.camvid import camvid_pairs
        return camvid_pairs(root, split)
    if kind == "cityscapes":
        from dcfm_ros.training.datasets.cityscapes import cityscapes_pairs
        return cityscapes_pairs(root, split)
    from dcfm_ros.training.datasets.vspw import vspw_pairs
    return vspw_pairs(root, split)


def video_frames(kind: str, root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    kind = _check(kind)
    if kind == "camvid":
        from dcfm_ros.training.datasets.camvid import camvid_sequences
        return camvid_sequences(root, split)
    if kind == "cityscapes":
        from dcfm_ros.training.datasets.cityscapes import cityscapes_snippets
        return cityscapes_snippets(root, split)
    from dcfm_ros.training.datasets.vspw import vspw_videos
    return vspw_videos(root, split)


def is_dense(kind: str, frames: list[FrameSample]) -> bool:
    """Whether a video is densely labeled (every frame labeled, a real frame rate), so that video
    consistency (mVC) means something on it.

    CamVid: the labeled frames must be at most 3 source frames apart (>= 10 Hz of the 30 fps video):
    the val clip is 15 Hz (dense), train/test are 1 Hz (not). Cityscapes: one labeled frame per
    snippet (never). VSPW: every frame labeled (dense).
    """
    kind = _check(kind)
    if len(frames) < 2 or any(f.label is None for f in frames) or kind == "cityscapes":
        return False
    if kind == "camvid":
        from dcfm_ros.training.datasets.camvid import frame_number
        nums = [frame_number(f.name) for f in frames]
        steps = [b - a for a, b in pairwise(nums)]
        return max(steps) <= 3
    return True


__all__ = [
    "TYPES",
    "DatasetSpec",
    "FrameSample",
    "LabeledFrames",
    "PairDataset",
    "PairSample",
    "dataset_spec",
    "is_dense",
    "pair_samples",
    "video_frames",
]
