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
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from dcfm_ros.training.datasets.pairs import FrameSample, PairSample, make_lut, neighbours_of

NUM_CLASSES = 124
VSPW_LUT: np.ndarray = make_lut({v: v - 1 for v in range(1, NUM_CLASSES + 1)})  # 0, 255 -> ignore
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


def vspw_palette() -> tuple[tuple[int, int, int], ...]:
    """A fixed, well-spread palette (VSPW ships none): golden-ratio hues at two brightness levels."""
    import colorsys

    out = []
    for i in range(NUM_CLASSES):
        h = (i * 0.618033988749895) % 1.0
        v = 0.95 if i % 2 == 0 else 0.7
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, v)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(out)


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
