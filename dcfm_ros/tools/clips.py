"""Frames for the benchmark tools: a clip folder's images, the CamVid val clip beside a checkout, or a
synthetic panning texture; and the CPU's name for the reports."""

from __future__ import annotations

import platform
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def default_clip() -> Path | None:
    """The densely labelled CamVid val clip, next to the repository (../shared/data/camvid/val)."""
    repo = Path(__file__).resolve().parents[2]
    candidate = repo.parent / "shared" / "data" / "camvid" / "val"
    return candidate if candidate.is_dir() else None


def clip_paths(clip: Path) -> list[Path]:
    """The clip's image files sorted by name (CamVid names order frames in time)."""
    if not clip.is_dir():
        raise SystemExit(f"dcfm-bench: --clip {clip} is not a directory")
    paths = sorted(p for p in clip.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"dcfm-bench: no images ({', '.join(IMAGE_SUFFIXES)}) in {clip}")
    return paths


def load_clip(clip: Path | None, count: int, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """`count` RGB frames of `clip` sorted by name (cycled if shorter); synthetic without a clip."""
    if clip is not None:
        paths = clip_paths(clip)
        frames = []
        for path in paths[:count]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"dcfm-bench: cannot read image {path}")
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        while len(frames) < count:
            frames.append(frames[len(frames) % len(paths)])
        return frames, str(clip)
    # No clip: a smooth random texture panning sideways, so the motion score sees real motion.
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (45, 80, 3), dtype=np.uint8), (960, 360),
                      interpolation=cv2.INTER_CUBIC)
    frames = [np.ascontiguousarray(np.roll(base, 8 * i, axis=1)[:, :480]) for i in range(count)]
    return frames, "synthetic"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
