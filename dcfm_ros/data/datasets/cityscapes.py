"""Cityscapes with its video sequences (leftImg8bit_sequence), 19 train classes.

Layout (the official archives unpacked into one root):
    leftImg8bit_sequence/{split}/{city}/{city}_{seq}_{frame:06d}_leftImg8bit.png   (30-frame snippets)
    gtFine/{split}/{city}/{city}_{seq}_{frame:06d}_gtFine_labelIds.png             (the 20th frame)
labelIds are mapped to the 19 trainIds, every other id to 255 (ignore). A training neighbour is
frame-1 or frame+1 of the labeled frame in the sequence folder. For evaluation each labeled frame
is one "video": the frames of its snippet in order (19 before, 10 after), only the 20th labeled.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from dcfm_ros.data.datasets.pairs import FrameSample, PairSample, make_lut

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
# labelId -> trainId (cityscapesScripts labels.py); everything else is ignored.
LABEL_TO_TRAIN: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_LUT: np.ndarray = make_lut(LABEL_TO_TRAIN)
MAX_LABEL_ID = 33  # labelIds run 0..33; 255 is accepted as "ignore" as well
SNIPPET_BEFORE, SNIPPET_AFTER = 19, 10  # the labeled frame is the 20th of 30
_GT = re.compile(r"^(?P<city>[^_]+)_(?P<seq>\d+)_(?P<frame>\d+)_gtFine_labelIds\.png$")
_SEQ = re.compile(r"^(?P<city>[^_]+)_(?P<seq>\d+)_(?P<frame>\d+)_leftImg8bit\.png$")


def _seq_image(root: Path, split: str, city: str, seq: str, frame: int) -> Path:
    return root / "leftImg8bit_sequence" / split / city / f"{city}_{seq}_{frame:06d}_leftImg8bit.png"


def _scan(root: Path, split: str) -> tuple[list[tuple[str, str, int, Path]], dict[tuple[str, str], set[int]]]:
    gt_dir = root / "gtFine" / split
    seq_dir = root / "leftImg8bit_sequence" / split
    for d in (gt_dir, seq_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"Cityscapes split {split!r} needs folder {d}")
    labeled = []
    for city in sorted(p.name for p in gt_dir.iterdir() if p.is_dir()):
        for entry in sorted(os.listdir(gt_dir / city)):
            m = _GT.match(entry)
            if m:
                labeled.append((city, m["seq"], int(m["frame"]), gt_dir / city / entry))
    if not labeled:
        raise FileNotFoundError(f"no *_gtFine_labelIds.png under {gt_dir}")
    frames: dict[tuple[str, str], set[int]] = defaultdict(set)
    for city in sorted({c for c, *_ in labeled}):
        if not (seq_dir / city).is_dir():
            raise FileNotFoundError(f"Cityscapes sequence folder {seq_dir / city} is missing")
        for entry in os.listdir(seq_dir / city):  # one listing per city: folders hold ~10^4 files
            m = _SEQ.match(entry)
            if m:
                frames[(m["city"], m["seq"])].add(int(m["frame"]))
    return labeled, frames


def cityscapes_pairs(root: str | Path, split: str) -> list[PairSample]:
    root = Path(root)
    labeled, frames = _scan(root, split)
    out = []
    for city, seq, frame, label in labeled:
        have = frames.get((city, seq), set())
        if frame not in have:
            raise FileNotFoundError(f"labeled frame {_seq_image(root, split, city, seq, frame)} is missing "
                                    "from leftImg8bit_sequence")
        nbs = tuple(_seq_image(root, split, city, seq, f) for f in (frame - 1, frame + 1) if f in have)
        if not nbs:
            raise FileNotFoundError(f"no neighbour frame of {city}_{seq}_{frame:06d} in leftImg8bit_sequence")
        out.append(PairSample(f"{city}_{seq}_{frame:06d}", _seq_image(root, split, city, seq, frame),
                              label, nbs, f"{city}_{seq}"))
    return out


def cityscapes_snippets(root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    """One entry per labeled frame: its snippet's frames in order, the labeled one with its label."""
    root = Path(root)
    labeled, frames = _scan(root, split)
    out: dict[str, list[FrameSample]] = {}
    for city, seq, frame, label in labeled:
        have = frames.get((city, seq), set())
        if frame not in have:
            raise FileNotFoundError(f"labeled frame {_seq_image(root, split, city, seq, frame)} is missing")
        clip = []
        for f in range(frame - SNIPPET_BEFORE, frame + SNIPPET_AFTER + 1):
            if f in have:
                name = f"{city}_{seq}_{f:06d}"
                clip.append(FrameSample(name, _seq_image(root, split, city, seq, f),
                                        label if f == frame else None, f"{city}_{seq}_{frame:06d}"))
        out[f"{city}_{seq}_{frame:06d}"] = clip
    return out
