"""Pictures of a run: overlay frames, the class legend (name + colour) and the contact sheet. RGB uint8
throughout; no ROS, no bag reading."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The node's colouring (dcfm_ros.engine.visualize), imported on use: importing dcfm_ros.engine
    loads torch, which a report or an early error message should not wait for."""
    from dcfm_ros.engine.visualize import colorize as _colorize

    return _colorize(labels, palette)


def caption(img: np.ndarray, text: str) -> np.ndarray:
    """`text` in white on a black box in the top-left corner (a copy)."""
    out = img.copy()
    scale = max(0.35, img.shape[1] / 1200)
    thick = 1 if scale < 0.8 else 2
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thick)
    cv2.rectangle(out, (0, 0), (min(img.shape[1], tw + 8), th + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (4, th + 3), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def overlay_frame(rgb: np.ndarray, pred: np.ndarray | None, palette: Sequence[Sequence[int]],
                  alpha: float = 0.5, text: str = "") -> np.ndarray:
    """Camera image with the prediction blended in (the camera alone, captioned, when pred is None)."""
    from dcfm_ros.engine.visualize import overlay

    img = overlay(rgb, colorize(pred, palette), alpha) if pred is not None else rgb
    return caption(img, text) if text else img


def legend(class_names: Sequence[str], palette: Sequence[Sequence[int]], width: int) -> np.ndarray:
    """A strip `width` pixels wide: one colour swatch + name per class, left to right, wrapped into as
    many rows as needed; white text on black, so every palette colour stands out (swatches get a
    grey border for the dark ones)."""
    if len(class_names) != len(palette):
        raise ValueError(f"{len(class_names)} class names but {len(palette)} palette colours")
    scale = max(0.35, min(0.8, width / 1400))
    thick = 1
    (_, th), base = cv2.getTextSize("Ag", FONT, scale, thick)
    sw, pad, row_h = th + base, max(4, th // 2), th + base + 8
    items = []
    for name, color in zip(class_names, palette, strict=True):
        tw = cv2.getTextSize(str(name), FONT, scale, thick)[0][0]
        items.append((str(name), tuple(int(c) for c in color), sw + 4 + tw + 2 * pad))
    rows: list[list[tuple[str, tuple[int, ...], int]]] = [[]]
    used = pad
    for item in items:
        if rows[-1] and used + item[2] > width:
            rows.append([])
            used = pad
        rows[-1].append(item)
        used += item[2]
    out = np.zeros((row_h * len(rows) + 4, width, 3), np.uint8)
    for i, row in enumerate(rows):
        x, y = pad, 4 + i * row_h
        for name, color, w in row:
            cv2.rectangle(out, (x, y), (x + sw, y + sw), color, -1)
            cv2.rectangle(out, (x, y), (x + sw, y + sw), (128, 128, 128), 1)
            cv2.putText(out, name, (x + sw + 4, y + th), FONT, scale, (255, 255, 255), thick, cv2.LINE_AA)
            x += w
    return out


def with_legend(img: np.ndarray, strip: np.ndarray) -> np.ndarray:
    """`img` with the legend strip below it (resized to its width when they differ)."""
    if strip.shape[1] != img.shape[1]:
        h = max(1, round(strip.shape[0] * img.shape[1] / strip.shape[1]))
        strip = cv2.resize(strip, (img.shape[1], h), interpolation=cv2.INTER_AREA)
    return np.concatenate([img, strip], axis=0)


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], path: Path,
                  tile_width: int = 320, classes: tuple[Sequence[str], Sequence[Sequence[int]]] | None = None
                  ) -> None:
    """Grid PNG: one row per frame, each row a list of (caption, RGB image), e.g. camera | overlay |
    ground truth; `classes` = (names, palette) adds the legend below the grid. Written to a temporary
    name and renamed, so `path` is never a half-written file."""
    if not rows:
        raise ValueError("contact sheet needs at least one row")
    ncols = max(len(cells) for _, cells in rows)
    tiles = []
    for title, cells in rows:
        row_tiles = []
        for j in range(ncols):
            if j < len(cells):
                text, img = cells[j]
                h = max(1, round(img.shape[0] * tile_width / img.shape[1]))
                tile = cv2.resize(img, (tile_width, h), interpolation=cv2.INTER_AREA)
                tile = caption(tile, f"{title} {text}".strip())
            else:
                tile = None
            row_tiles.append(tile)
        height = max(t.shape[0] for t in row_tiles if t is not None)
        padded = [np.full((height, tile_width, 3), 255, np.uint8) if t is None else
                  np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255)
                  for t in row_tiles]
        tiles.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255)
                                     for t in padded], axis=1))
    sheet = np.concatenate(tiles, axis=0)
    if classes is not None:
        sheet = with_legend(sheet, legend(classes[0], classes[1], sheet.shape[1]))
    write_png(path, sheet)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """cv2.imwrite to a temporary name in the same folder, then rename (atomic)."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise RuntimeError(f"cannot write {path}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def pick_frames(n: int, count: int = 4) -> list[int]:
    """`count` indices spread evenly over 0..n-1 (first and last included)."""
    if n <= 0:
        return []
    if n <= count:
        return list(range(n))
    return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})
