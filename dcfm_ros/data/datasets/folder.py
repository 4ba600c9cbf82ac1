"""`dataset.type: folder`: the user's own recordings, one folder per sequence.

    ROOT/classes.yaml                                  names, palette, ignore_index, labels kind
    ROOT/<split>/images/<sequence>/<frame>.(png|jpg)   every recorded frame; names sort in time
    ROOT/<split>/labels/<sequence>/<frame>.png         labels for any subset of the frames

classes.yaml (index 0 is the FIRST name: a label value i is names[i], there is no "others" shift):
    names: [road, grass, person]
    palette: [[128, 64, 128], [0, 255, 0], [220, 20, 60]]   # RGB per class; optional for index labels
    ignore_index: 255          # the label value of unlabeled pixels (default 255); not a class index
    labels: index              # index (PNG value = class index, default) | color (RGB through the palette)
    ignore_color: [0, 0, 0]    # labels: color only, optional: the colour of unlabeled pixels

Frames sort by name with numbers compared as numbers (frame2 before frame10). Unlabeled frames are
real frames of the sequence: a training neighbour x_u of a labeled frame is the frame at one of
`dataset.neighbour_offsets` (frames, not labeled frames; default [-1, 1]) inside its sequence, the
labeled frame itself when none exists (a one-frame sequence).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dcfm_ros.data.datasets.pairs import ColorLabels, FrameSample, PairSample, neighbours_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_OFFSETS = (-1, 1)
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class FolderClasses:
    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    labels: str  # "index" | "color"
    ignore_color: tuple[int, int, int] | None

    def label_map(self) -> np.ndarray | ColorLabels:
        if self.labels == "color":
            return ColorLabels(self.palette, self.ignore_color)
        lut = np.full(256, 255, np.uint8)
        lut[: len(self.names)] = np.arange(len(self.names), dtype=np.uint8)
        return lut  # ignore_index (and every other value) -> 255; the start-up scan refuses the others

    def convention(self) -> str:
        if self.labels == "color":
            return (f"classes.yaml, labels: color: the {len(self.names)} palette colours are the classes"
                    f"{f', {self.ignore_color} is ignored' if self.ignore_color else ''}")
        return (f"classes.yaml: {len(self.names)} classes, label value i is names[i] (0-based: 0 = "
                f"{self.names[0]!r}), {self.ignore_index} = ignore")


def natural_key(name: str) -> tuple:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _DIGITS.split(name) if t)


def _rgb(value: Any, what: str, path: Path) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ValueError(f"{path}: {what} must be [R, G, B] with values 0..255, got {value!r}")
    return rgb  # type: ignore[return-value]


def golden_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Well-spread colours for classes without a palette: golden-ratio hues, two brightness levels."""
    import colorsys

    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 if i % 2 == 0 else 0.7)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(out)


def read_classes(root: str | Path) -> FolderClasses:
    path = Path(root) / "classes.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"folder dataset needs {path} (names: [...], palette: [[R, G, B], ...], "
                                "ignore_index: 255, labels: index|color)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping (names, palette, ignore_index, labels)")
    unknown = set(raw) - {"names", "palette", "ignore_index", "labels", "ignore_color"}
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: names, palette, ignore_index, "
                         "labels, ignore_color")
    names = raw.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: names must be a non-empty list of class names (index 0 = the first)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: names are not unique: {names}")
    labels = raw.get("labels", "index")
    if labels not in ("index", "color"):
        raise ValueError(f"{path}: labels must be 'index' or 'color', got {labels!r}")
    ignore = raw.get("ignore_index", 255)
    if not isinstance(ignore, int) or not len(names) <= ignore <= 255:
        raise ValueError(f"{path}: ignore_index must be an integer in {len(names)}..255 (not a class index), "
                         f"got {ignore!r}")
    if len(names) > 255:
        raise ValueError(f"{path}: at most 255 classes, got {len(names)}")
    pal = raw.get("palette")
    if pal is None:
        if labels == "color":
            raise ValueError(f"{path}: labels: color needs a palette (one [R, G, B] per name)")
        palette = golden_palette(len(names))
    else:
        if not isinstance(pal, list) or len(pal) != len(names):
            raise ValueError(f"{path}: palette needs one [R, G, B] per name ({len(names)}), got "
                             f"{len(pal) if isinstance(pal, list) else pal!r}")
        palette = tuple(_rgb(c, f"palette[{i}]", path) for i, c in enumerate(pal))
    ignore_color = None
    if raw.get("ignore_color") is not None:
        if labels != "color":
            raise ValueError(f"{path}: ignore_color goes with labels: color (index labels use ignore_index)")
        ignore_color = _rgb(raw["ignore_color"], "ignore_color", path)
    if labels == "color":
        colours = list(palette) + ([ignore_color] if ignore_color else [])
        if len(set(colours)) != len(colours):
            raise ValueError(f"{path}: with labels: color every class (and ignore_color) needs its own "
                             "colour")
    return FolderClasses(tuple(names), palette, ignore, labels, ignore_color)


def _split_dirs(root: Path, part: str) -> tuple[Path, Path]:
    img_dir, lbl_dir = root / part / "images", root / part / "labels"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"folder dataset split {part!r} needs {img_dir}/<sequence>/<frame>.png|jpg")
    if not lbl_dir.is_dir():
        raise FileNotFoundError(f"folder dataset split {part!r} has no label folder {lbl_dir} "
                                "(<sequence>/<frame>.png for any subset of the frames)")
    return img_dir, lbl_dir


def folder_videos(root: str | Path, split: str) -> dict[str, list[FrameSample]]:
    """Every sequence of `split` ("a" or "a+b") in time order; a frame without a label has label None."""
    root = Path(root)
    parts = split.split("+")
    out: dict[str, list[FrameSample]] = {}
    for part in parts:
        img_dir, lbl_dir = _split_dirs(root, part)
        seqs = sorted((p for p in img_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
        orphan_seqs = sorted({p.name for p in lbl_dir.iterdir() if p.is_dir()} - {p.name for p in seqs})
        if orphan_seqs:
            raise ValueError(f"{lbl_dir} has label folders without images: {orphan_seqs[:5]} "
                             f"(expected {img_dir}/<the same name>)")
        for seq in seqs:
            frames: dict[str, Path] = {}
            for f in seq.iterdir():
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    if f.stem in frames:
                        raise ValueError(f"{seq}: two images named {f.stem!r} "
                                         f"({frames[f.stem].name}, {f.name})")
                    frames[f.stem] = f
            labels: dict[str, Path] = {}
            if (lbl_dir / seq.name).is_dir():
                labels = {f.stem: f for f in (lbl_dir / seq.name).iterdir() if f.is_file()}
            bad = sorted(f.name for f in labels.values() if f.suffix.lower() != ".png")
            if bad:
                raise ValueError(f"{lbl_dir / seq.name}: labels must be PNG files, found {bad[:5]}")
            orphans = sorted(set(labels) - set(frames))
            if orphans:
                raise ValueError(f"{lbl_dir / seq.name}: label(s) without an image of that name in {seq}: "
                                 f"{[labels[o].name for o in orphans[:5]]}")
            if not frames:
                continue
            key = seq.name if len(parts) == 1 else f"{part}/{seq.name}"
            out[key] = [FrameSample(f"{key}/{stem}", frames[stem], labels.get(stem), key)
                        for stem in sorted(frames, key=natural_key)]
    if not out:
        raise FileNotFoundError(f"no frames found for split {split!r} under {root} "
                                "(<split>/images/<sequence>/<frame>.png|jpg)")
    return out


def folder_pairs(root: str | Path, split: str, offsets: Sequence[int] | None = None) -> list[PairSample]:
    """One pair per labeled frame; its neighbours are the frames at `offsets` (labeled or not)."""
    offsets = tuple(offsets) if offsets else DEFAULT_OFFSETS
    out = []
    for video, frames in folder_videos(root, split).items():
        for i, f in enumerate(frames):
            if f.label is None:
                continue
            nbs = tuple(frames[j].image for j in neighbours_of(i, len(frames), offsets)) or (f.image,)
            out.append(PairSample(f.name, f.image, f.label, nbs, video))
    if not out:
        raise FileNotFoundError(f"folder dataset split {split!r} under {root} has no labeled frame "
                                "(<split>/labels/<sequence>/<frame>.png)")
    return out
