"""Video segmentation datasets for DCFM training/evaluation: CamVid, Cityscapes (sequence), VSPW, and
`folder`, the user's own recordings (folder.py).

Each dataset type provides, through this registry:
- `dataset_spec(type, root)`: class names, palette, the raw-label -> train-id map (ignore 255) and
  which raw values mean "ignore" (checks.py refuses every other value that is not a class);
- `pair_samples(type, root, split)`: the training pairs (labeled frame + neighbour candidates);
- `video_frames(type, root, split)`: every video's frames in temporal order for evaluation (with the
  label path where a frame has one).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from dcfm_ros.data.datasets.pairs import (
    DatasetSpec,
    FrameSample,
    LabeledFrames,
    PairDataset,
    PairSample,
)
from dcfm_ros.model.config import CAMVID_CLASSES, CAMVID_PALETTE

TYPES = ("camvid", "cityscapes", "vspw", "folder")


def _check(kind: str) -> str:
    kind = str(kind).lower()
    if kind not in TYPES:
        raise ValueError(f"unknown dataset type {kind!r}; expected one of {TYPES}")
    return kind


def dataset_spec(kind: str, root: str | Path | None = None, class_names: Sequence[str] | None = None,
                 zero_label: str | None = None) -> DatasetSpec:
    """`root` is used by VSPW (class names from a file inside the dataset) and folder (classes.yaml).

    class_names: the training config's own names (the checkpoint gets them); for VSPW they also set
    how many mask values are classes, and then `zero_label` must say what mask value 0 is.
    """
    kind = _check(kind)
    if kind == "camvid":
        from dcfm_ros.data.datasets import camvid as m
        return DatasetSpec(kind, _names(class_names, CAMVID_CLASSES), CAMVID_PALETTE, m.CAMVID_LUT,
                           (m.CAMVID_VOID,), "CamVid: 0..10 are the classes, 11 is void")
    if kind == "cityscapes":
        from dcfm_ros.data.datasets import cityscapes as c
        ignored = (*(v for v in range(c.MAX_LABEL_ID + 1) if v not in c.LABEL_TO_TRAIN), 255)
        return DatasetSpec(kind, _names(class_names, c.CITYSCAPES_CLASSES), c.CITYSCAPES_PALETTE,
                           c.CITYSCAPES_LUT, ignored,
                           f"Cityscapes labelIds 0..{c.MAX_LABEL_ID} (19 of them are train classes), 255")
    if kind == "folder":
        from dcfm_ros.data.datasets.folder import read_classes
        if root is None:
            raise ValueError("the folder dataset needs its root (ROOT/classes.yaml)")
        fc = read_classes(root)
        return DatasetSpec(kind, fc.names, fc.palette, fc.label_map(),
                           (fc.ignore_index,) if fc.labels == "index" else (), fc.convention())
    from dcfm_ros.data.datasets import vspw as v
    return v.vspw_spec(root, class_names, zero_label)


def _names(given: Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(given) if given else default


def pair_samples(kind: str, root: str | Path, split: str,
                 neighbour_offsets: Sequence[int] | None = None) -> list[PairSample]:
    """neighbour_offsets: folder only (frames around the labeled one that may be its x_u)."""
    kind = _check(kind)
    if kind == "folder":
        from dcfm_ros.data.datasets.folder import folder_pairs
        return folder_pairs(root, split, neighbour_offsets)
    if kind == "camvid":
        from dcfm_ros.data.datasets.camvid import camvid_pairs
        return camvid_pairs(root, split)
    if kind == "cityscapes":
        from dcfm_ros.data.datasets.cityscapes import cityscapes_pairs
        return cityscapes_pairs(root, split)
    from dcfm_ros.data.datasets.vspw import vspw_pairs
    return vspw_pairs(root, split)


def video_frames(kind: str, root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    kind = _check(kind)
    if kind == "camvid":
        from dcfm_ros.data.datasets.camvid import camvid_sequences
        return camvid_sequences(root, split)
    if kind == "cityscapes":
        from dcfm_ros.data.datasets.cityscapes import cityscapes_snippets
        return cityscapes_snippets(root, split)
    if kind == "folder":
        from dcfm_ros.data.datasets.folder import folder_videos
        return folder_videos(root, split)
    from dcfm_ros.data.datasets.vspw import vspw_videos
    return vspw_videos(root, split)


def is_dense(kind: str, frames: list[FrameSample]) -> bool:
    """Whether a video is densely labeled (every frame labeled, a real frame rate), so that video
    consistency (mVC) means something on it.

    CamVid: the labeled frames must be at most 3 source frames apart (>= 10 Hz of the 30 fps video):
    the val clip is 15 Hz (dense), train/test are 1 Hz (not). Cityscapes: one labeled frame per
    snippet (never). VSPW and folder: when every frame is labeled (a recording's own frame rate).
    """
    kind = _check(kind)
    if len(frames) < 2 or any(f.label is None for f in frames) or kind == "cityscapes":
        return False
    if kind == "camvid":
        from dcfm_ros.data.datasets.camvid import frame_number
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
