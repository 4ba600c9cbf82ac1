"""Dataset-independent parts: the pair sample, image/label reading, the training-pair and eval datasets.

A dataset module (camvid, cityscapes, vspw) only has to list `PairSample`s (one labeled frame, the
paths of its usable neighbours) and give a label lookup table; everything else is here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dcfm_ros.data.transforms import PairAugment, image_to_tensor, label_to_tensor, resize_for_eval


@dataclass(frozen=True)
class PairSample:
    """A labeled frame of a video and the frames allowed as its neighbour x_u (u = l-1 or l+1)."""

    name: str  # e.g. "0016E5_07959"
    image: Path
    label: Path
    neighbours: tuple[Path, ...]  # 1 or 2 paths; at a sequence end only one exists
    video: str = ""


@dataclass(frozen=True)
class FrameSample:
    """One frame of a video in temporal order, with its label when it has one (evaluation)."""

    name: str
    image: Path
    label: Path | None
    video: str


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class ColorLabels:
    """Colour label PNGs (`labels: color` in a folder layout's classes.yaml): a pixel of palette[i] is
    class i, a pixel of `ignore_rgb` is ignored (255); any other colour is an error naming file and pixel."""

    palette: tuple[tuple[int, int, int], ...]
    ignore_rgb: tuple[int, int, int] | None = None

    def decode(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        codes = _rgb_codes(rgb)
        table = [(_code(c), i) for i, c in enumerate(self.palette)]
        if self.ignore_rgb is not None:
            table.append((_code(self.ignore_rgb), 255))
        keys = np.array(sorted(k for k, _ in table), np.int64)
        ids = np.array([i for _, i in sorted(table)], np.uint8)
        pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
        known = keys[pos] == codes
        if not known.all():
            y, x = (int(v[0]) for v in np.nonzero(~known))
            colour = tuple(int(c) for c in rgb[y, x])
            raise ValueError(f"label {path}: pixel (x={x}, y={y}) has colour {colour}, "
                             f"which is not in the palette of classes.yaml"
                             f"{' nor its ignore_color' if self.ignore_rgb is not None else ''} "
                             f"({int((~known).sum())} such pixels)")
        return ids[pos]


def _code(rgb: tuple[int, int, int]) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    c = rgb.astype(np.int64)
    return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]


LabelMap = np.ndarray | ColorLabels  # a lookup table of raw values, or a palette of colours


def read_raw_label(path: Path) -> np.ndarray:
    """A label file's stored values: (H, W) class values, palette PNGs as their indices."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f"cannot read label {path}")
    if raw.ndim == 3 and path.suffix.lower() == ".png":
        # Palette PNGs (VSPW's masks) store class ids as palette indices; OpenCV expands them to
        # colours, Pillow reads the indices themselves.
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "P":
                raw = np.asarray(im)
    if raw.ndim != 2:
        raise ValueError(f"label {path} must be a single-channel image, got shape {raw.shape}")
    return raw


def read_color_label(path: Path) -> np.ndarray:
    """(H, W, 3) RGB of a colour label PNG (alpha dropped)."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise FileNotFoundError(f"cannot read label {path}")
    if raw.ndim != 3 or raw.dtype != np.uint8:
        raise ValueError(f"label {path}: classes.yaml says `labels: color`, but this is not an 8-bit colour "
                         f"image (shape {raw.shape}, {raw.dtype})")
    return cv2.cvtColor(raw[..., :3], cv2.COLOR_BGR2RGB)


def read_label(path: Path, lut: LabelMap) -> np.ndarray:
    """Read a label PNG as train ids (255 = ignore): single-channel values mapped with `lut` (uint8,
    256 or 65536 entries), or colours mapped through a `ColorLabels` palette."""
    if isinstance(lut, ColorLabels):
        return lut.decode(read_color_label(path), path)
    raw = read_raw_label(path)
    if raw.dtype == np.uint16 and lut.shape[0] < 65536 and int(raw.max()) >= lut.shape[0]:
        raise ValueError(f"label {path} has value {int(raw.max())} outside the lookup table")
    return lut[raw]


def make_lut(mapping: dict[int, int], size: int = 256, default: int = 255) -> np.ndarray:
    lut = np.full(size, default, np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


class _WorkerRng:
    """A NumPy generator per process, seeded from torch's per-worker seed.

    DataLoader workers get distinct torch seeds (base_seed + worker id, a fresh base each epoch), and
    the main process follows `torch.manual_seed`, so runs are reproducible with a fixed seed and workers
    never replay each other's augmentations.
    """

    def __init__(self) -> None:
        self._pid: int | None = None
        self._rng: np.random.Generator | None = None
        self._seed: int | None = None

    def get(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or self._pid != os.getpid() or self._seed != seed:
            self._pid, self._seed = os.getpid(), seed
            self._rng = np.random.default_rng(seed % (2**63))
        return self._rng


class PairDataset(Dataset):
    """Training pairs: dict(image=x_l uint8 (3,H,W), label=y_l int64 (H,W), neighbour=x_u uint8 (3,H,W)).

    Also the names of both frames ("name", "neighbour_name") so that tests and logs can check pairing.
    """

    def __init__(self, samples: Sequence[PairSample], lut: LabelMap, augment: PairAugment | None) -> None:
        if not samples:
            raise ValueError("the training dataset is empty (no labeled frame with a neighbour found)")
        self.samples = list(samples)
        self.lut = lut
        self.augment = augment
        self._rng = _WorkerRng()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        rng = self._rng.get()
        nb = s.neighbours[int(rng.integers(len(s.neighbours)))] if len(s.neighbours) > 1 else s.neighbours[0]
        img_l = read_rgb(s.image)
        img_u = read_rgb(nb)
        label = read_label(s.label, self.lut)
        if self.augment is not None:
            img_l, label, img_u = self.augment(img_l, label, img_u, rng)
        return {
            "image": image_to_tensor(img_l),
            "label": label_to_tensor(label),
            "neighbour": image_to_tensor(img_u),
            "name": s.name,
            "neighbour_name": nb.stem,
        }


class LabeledFrames(Dataset):
    """Evaluation frames: image resized to the network input size, label at its own size (uint8)."""

    def __init__(self, samples: Sequence[FrameSample], lut: LabelMap, input_size: tuple[int, int]) -> None:
        self.samples = [s for s in samples if s.label is not None]
        if not self.samples:
            raise ValueError("no labeled frame to evaluate on")
        self.lut = lut
        self.input_size = tuple(input_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        img = resize_for_eval(read_rgb(s.image), self.input_size)  # type: ignore[arg-type]
        label = read_label(s.label, self.lut)  # type: ignore[arg-type]
        return {"image": image_to_tensor(img), "label": torch.from_numpy(label), "name": s.name}


def neighbours_of(i: int, n: int, offsets: Sequence[int] = (-1, 1)) -> tuple[int, ...]:
    """Indices u = i + offset inside [0, n): all of them inside a sequence, fewer near its ends."""
    return tuple(i + o for o in offsets if 0 <= i + o < n)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset layout is: its classes, colours and how raw label values map to train ids."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    lut: LabelMap  # raw label value -> train id (255 = ignore), or a colour palette (folder)
    ignore_values: tuple[int, ...] = ()  # raw values that mean "not labeled"; other non-classes are errors
    convention: str = ""  # how raw values map to classes, for error messages
