"""VSPW (480p release): every frame labeled, 124 classes.

Layout:
    data/<video>/origin/<frame>.jpg      RGB frames
    data/<video>/mask/<frame>.png        labels, one byte per pixel
    train.txt / val.txt / test.txt       video names, one per line (optional: all videos otherwise)
    label_num_dic_final.json             optional {class name: value}, for the class names

Label convention (our choice, the common one of the VSPW benchmark code and its mmseg-style
`reduce_zero_label`): mask value 0 is "others" and 255 is void; both are ignored (255), and values
1..124 become train ids 0..123. So the network predicts 124 classes.
A training neighbour is the previous or next frame of the same video.

Own data in this layout with its own `dataset.class_names` (N names): the 1-based VSPW reading
silently turns 0-based masks into nonsense (class 0 ignored, class 1 trained as names[0]), so then
`dataset.zero_label` must say which it is: `others` (VSPW's: 0 ignored, value v is names[v-1]) or
`class` (value v is names[v]). Either way the lookup table has exactly N classes, so the start-up
scan (checks.py) names every value outside them as it is stored in the file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.data.datasets.pairs import DatasetSpec, FrameSample, PairSample, make_lut, neighbours_of

NUM_CLASSES = 124
VSPW_LUT: np.ndarray = make_lut({v: v - 1 for v in range(1, NUM_CLASSES + 1)})  # 0, 255 -> ignore
VSPW_OTHERS, VSPW_VOID = 0, 255
_DIGITS = re.compile(r"(\d+)")


def vspw_class_names(root: str | Path | None = None) -> tuple[str, ...]:
    """Names from the dataset's label_num_dic_final.json when present, else "class_1".."class_124"."""
    names = [f"class_{i}" for i in range(1, NUM_CLASSES + 1)]
    if root is not None:
        path = Path(root) / "label_num_dic_final.json"
        if path.is_file():
            mapping = json.loads(path.read_text())
            for name, value in mapping.items():
                v = int(value)
                if 1 <= v <= NUM_CLASSES:
                    names[v - 1] = str(name)
    return tuple(names)


def vspw_palette(n: int = NUM_CLASSES) -> tuple[tuple[int, int, int], ...]:
    """A fixed, well-spread palette (VSPW ships none): golden-ratio hues at two brightness levels."""
    from dcfm_ros.data.datasets.folder import golden_palette

    return golden_palette(n)


def vspw_spec(root: str | Path | None, class_names: Sequence[str] | None = None,
              zero_label: str | None = None) -> Any:
    """The DatasetSpec of this layout: VSPW's own 124 classes, or the config's names (module doc)."""
    if not class_names:
        if zero_label == "class":
            raise ValueError("dataset.zero_label: class needs your own dataset.class_names (VSPW's 124 "
                             "classes are 1-based: 0 is 'others')")
        return DatasetSpec("vspw", vspw_class_names(root), vspw_palette(), VSPW_LUT, (VSPW_OTHERS, VSPW_VOID),
                           "VSPW: 0 = others (ignored), value v is class v-1 of 124, 255 = void")
    n = len(class_names)
    if zero_label is None:
        raise ValueError(f"dataset.type vspw with your own {n} class_names: set dataset.zero_label to say "
                         f"how the masks count: 'others' (VSPW's convention: 0 = others, ignored; value v "
                         f"is class_names[v-1], 1..{n}) or 'class' (0-based: value v is class_names[v], "
                         f"0..{n - 1}); or use dataset.type folder (0-based, classes.yaml)")
    if zero_label == "others":
        if n > 254:
            raise ValueError(f"dataset.class_names: at most 254 classes with zero_label: others, got {n}")
        lut = make_lut({v: v - 1 for v in range(1, n + 1)})
        return DatasetSpec("vspw", tuple(class_names), vspw_palette(n), lut, (VSPW_OTHERS, VSPW_VOID),
                           f"VSPW layout, zero_label: others: 0 = others (ignored), value v is "
                           f"class_names[v-1] (1..{n}), 255 = void")
    if n > 255:
        raise ValueError(f"dataset.class_names: at most 255 classes, got {n}")
    lut = make_lut({v: v for v in range(n)})
    return DatasetSpec("vspw", tuple(class_names), vspw_palette(n), lut, (VSPW_VOID,),
                       f"VSPW layout, zero_label: class: value v is class_names[v] (0..{n - 1}), 255 = void")


def _frame_key(path: Path) -> tuple:
    # Numeric order when names are numbers ("00000010" after "00000009"), text order otherwise.
    return tuple(int(t) if t.isdigit() else t for t in _DIGITS.split(path.stem))


def _video_names(root: Path, split: str) -> list[str]:
    data = root / "data"
    if not data.is_dir():
        raise FileNotFoundError(f"VSPW needs folder {data} (data/<video>/origin, data/<video>/mask)")
    split_file = root / f"{split}.txt"
    if split_file.is_file():
        names = [ln.strip() for ln in split_file.read_text().splitlines() if ln.strip()]
        missing = [n for n in names if not (data / n).is_dir()]
        if missing:
            raise FileNotFoundError(f"{split_file} lists {len(missing)} video(s) not in {data}: "
                                    f"{missing[:5]}")
        return names
    return sorted(p.name for p in data.iterdir() if p.is_dir())


def vspw_videos(root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    """Frames of every video of `split` in temporal order (a frame without a mask has label None)."""
    root = Path(root)
    out: dict[str, list[FrameSample]] = {}
    for video in _video_names(root, split):
        vdir = root / "data" / video
        frames = sorted((vdir / "origin").glob("*.jpg"), key=_frame_key)
        if not frames:
            continue
        clip = []
        for img in frames:
            mask = vdir / "mask" / f"{img.stem}.png"
            clip.append(FrameSample(f"{video}/{img.stem}", img, mask if mask.is_file() else None, video))
        out[video] = clip
    if not out:
        raise FileNotFoundError(f"no VSPW video with frames found for split {split!r} under {root / 'data'}")
    return out


def vspw_pairs(root: str | Path, split: str) -> list[PairSample]:
    out = []
    for video, frames in vspw_videos(root, split).items():
        for i, f in enumerate(frames):
            if f.label is None:
                continue
            nbs = tuple(frames[j].image for j in neighbours_of(i, len(frames))) or (f.image,)
            out.append(PairSample(f.name, f.image, f.label, nbs, video))
    return out
