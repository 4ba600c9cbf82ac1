#!/usr/bin/env python3
"""Labels at a camera larger than the network, three ways, against CamVid's real labels (issue 23
item 2): the val clip at its native 360x480 plays the large camera and the shipped model runs at a
reduced input (default 180x240 and 240x320), per frame (keyframe path `forward_key`, torch, fp32,
no temporal propagation). The same logits feed every method, so they differ only in how labels reach
360x480:
  exact          logits bilinearly upsampled to 360x480, argmax there
  nearest        argmax at the network's size, then cv2.INTER_NEAREST (what the node did before 6 Dec)
  nearest_exact  the same with cv2.INTER_NEAREST_EXACT (pixel-centre aligned; = nearest at 2x; the node now)
  edge_r1        argmax at the network's size, then dcfm_ros.engine.label_upsample's joint-bilateral
                 vote guided by the 360x480 image over the 2x2 surrounding low-res cells
  edge_r2        the same over 4x4 cells (sigma_spatial 1 low-res px for both)
Accuracy: mIoU over the clip; the same restricted to a boundary band (pixels with another GT value,
void included, within --band px in x and y: morphological gradient of the GT with a square kernel;
void pixels themselves never count); pixel agreement with exact. Cost (1 thread, median of --reps
runs over --time-frames frames, methods interleaved): the label step alone (network-size labels ->
camera labels; for exact: its argmax at the camera's size) and the whole way from the logits, at
360x480 and at a 1080x1920 camera (frames resized to it, network at 270x480). Paired per frame:
how many frames have more / fewer band pixels right than nearest. A size of 360x480 in --sizes
gives the reference row (network at the camera's size: every method is the same there).

    PYTHONPATH=. python scripts/label_upsampling.py --sizes 180x240,240x320,360x480
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dcfm_ros.data.datasets.camvid import CAMVID_LUT, camvid_sequences
from dcfm_ros.data.datasets.pairs import read_label, read_rgb
from dcfm_ros.data.metrics import ConfusionMatrix
from dcfm_ros.engine.label_upsample import SIGMA_COLOR, upsample_labels_edge_aware
from dcfm_ros.model import load_checkpoint
from dcfm_ros.model.build import build_model
from dcfm_ros.model.dcfm import upsample_logits
from dcfm_ros.tools.clips import cpu_name

SHIPPED = "dcfm_ros/models/camvid_efficientnet_lite0.safetensors"
METHODS = ("exact", "nearest", "nearest_exact", "edge_r1", "edge_r2")
Size = tuple[int, int]


def parse_size(text: str) -> Size:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def model_at(model: nn.Module, size: Size) -> nn.Module:
    """The same network rebuilt with input_size = size (the CNN runs at any size; the config only
    tells the engine what to resize to), weights copied."""
    net = build_model(dataclasses.replace(model.config, input_size=size))
    net.load_state_dict(model.state_dict(), strict=True)
    return net.eval()


@torch.no_grad()
def logits_of(net: nn.Module, image: np.ndarray) -> torch.Tensor:
    """The engine's preprocessing (bilinear, no antialias, as FramePreprocessor.upload) + keyframe."""
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=net.config.input_size, mode="bilinear", align_corners=False, antialias=False)
    return net.forward_key(net.normalize_input(x / 255.0))[0]


def argmax_at(logits: torch.Tensor, size: Size) -> np.ndarray:
    """Exact labels at `size` (as FramePreprocessor.labels: bilinear, then max(dim).indices)."""
    return upsample_logits(logits, size).max(dim=1).indices[0].to(torch.uint8).numpy()


def steps(sigma: float) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """method -> (network-size labels, camera image) -> camera-size labels (not exact)."""
    def resize(flag: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        return lambda lab, img: cv2.resize(lab, (img.shape[1], img.shape[0]), interpolation=flag)
    return {"nearest": resize(cv2.INTER_NEAREST), "nearest_exact": resize(cv2.INTER_NEAREST_EXACT),
            "edge_r1": lambda lab, img: upsample_labels_edge_aware(lab, img, sigma_color=sigma, radius=1),
            "edge_r2": lambda lab, img: upsample_labels_edge_aware(lab, img, sigma_color=sigma, radius=2)}


def all_methods(logits: torch.Tensor, image: np.ndarray, size: Size, sigma: float) -> dict[str, np.ndarray]:
    cam = image.shape[:2]
    net_labels = argmax_at(logits, size)
    out = {"exact": argmax_at(logits, cam)}
    out.update({m: f(net_labels, image) for m, f in steps(sigma).items()})
    return out


def boundary_band(gt: np.ndarray, radius: int) -> np.ndarray:
    """Pixels with another GT value (void included) within `radius` px (Chebyshev distance)."""
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(gt, k) != cv2.erode(gt, k)


def timings(net: nn.Module, images: list[np.ndarray], reps: int, sigma: float) -> dict[str, dict[str, float]]:
    """method -> {"step_ms", "from_logits_ms"}: medians over reps x images, methods interleaved."""
    size = net.config.input_size
    step_fns = steps(sigma)
    step: dict[str, list[float]] = {m: [] for m in METHODS}
    total: dict[str, list[float]] = {m: [] for m in METHODS}
    for img in images:
        logits = logits_of(net, img)
        cam = img.shape[:2]
        for _ in range(reps):
            t0 = time.perf_counter()
            argmax_at(logits, cam)
            dt = (time.perf_counter() - t0) * 1000.0
            step["exact"].append(dt)
            total["exact"].append(dt)
            for m, f in step_fns.items():
                t0 = time.perf_counter()
                lab = argmax_at(logits, size)
                t1 = time.perf_counter()
                f(lab, img)
                t2 = time.perf_counter()
                step[m].append((t2 - t1) * 1000.0)
                total[m].append((t2 - t0) * 1000.0)
    return {m: {"step_ms": statistics.median(step[m]), "from_logits_ms": statistics.median(total[m])}
            for m in METHODS}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="180x240,240x320", help="network input sizes HxW, comma-separated")
    p.add_argument("--big-camera", default="1080x1920", help="HxW of the large camera for the timing")
    p.add_argument("--big-grid", default="270x480", help="network input (label grid) for --big-camera")
    p.add_argument("--band", type=int, default=3, help="boundary band radius in px")
    p.add_argument("--sigma", type=float, default=SIGMA_COLOR, help="edge: colour sigma (RGB 0..255)")
    p.add_argument("--reps", type=int, default=20, help="timing repetitions per timing frame")
    p.add_argument("--time-frames", type=int, default=5, help="frames (evenly spaced) used for timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=None, help="first N frames of the clip (default all)")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/camvid"))
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    model, _ = load_checkpoint(SHIPPED)
    n_cls = model.config.num_classes
    samples = [s for seq in camvid_sequences(args.data, "val").values() for s in seq][: args.frames]
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    load0 = os.getloadavg()[0]
    out: dict = {"cpu": cpu_name(), "threads": args.threads, "split": "val", "frames": len(samples),
                 "camera": [360, 480], "band_px": args.band, "sigma_color": args.sigma, "results": {}}
    images: list[np.ndarray] = []
    for size in sizes:
        net = model_at(model, size)
        cms = {m: ConfusionMatrix(n_cls) for m in METHODS}
        band_cms = {m: ConfusionMatrix(n_cls) for m in METHODS}
        agree = {m: [0, 0] for m in METHODS}  # agreeing pixels, pixels
        band_agree = {m: [0, 0] for m in METHODS}
        band_frac = []
        vs_nearest = {m: [0, 0] for m in METHODS}  # frames with more / fewer band pixels right
        for s in samples:
            img = read_rgb(s.image)
            gt = read_label(s.label, CAMVID_LUT)
            band = boundary_band(gt, args.band)
            band_frac.append(float((band & (gt != 255)).mean()))
            got = all_methods(logits_of(net, img), img, size, args.sigma)
            gt_band = np.where(band, gt, 255).astype(gt.dtype)
            right = {m: int((lab == gt_band)[gt_band != 255].sum()) for m, lab in got.items()}
            for m in METHODS:
                vs_nearest[m][0] += right[m] > right["nearest"]
                vs_nearest[m][1] += right[m] < right["nearest"]
            for m, lab in got.items():
                cms[m].update(lab, gt)
                band_cms[m].update(lab, gt_band)
                same = lab == got["exact"]
                agree[m][0] += int(same.sum())
                agree[m][1] += same.size
                band_agree[m][0] += int(same[band].sum())
                band_agree[m][1] += int(band.sum())
        out["results"][f"{size[0]}x{size[1]}"] = {m: {
            "miou": 100.0 * cms[m].miou(), "pixel_acc": 100.0 * cms[m].pixel_accuracy(),
            "band_miou": 100.0 * band_cms[m].miou(), "band_pixel_acc": 100.0 * band_cms[m].pixel_accuracy(),
            "agree_exact": 100.0 * agree[m][0] / agree[m][1],
            "band_agree_exact": 100.0 * band_agree[m][0] / band_agree[m][1],
            "band_frames_better_worse_than_nearest": vs_nearest[m]} for m in METHODS}
        out["band_fraction"] = statistics.fmean(band_frac)

    step = max(1, len(samples) // args.time_frames)
    images = [read_rgb(s.image) for s in samples[::step][: args.time_frames]]
    out["timing"] = {}
    for size in sizes:
        if size == (360, 480):  # the reference row: nothing to upsample
            continue
        out["timing"][f"360x480 from {size[0]}x{size[1]}"] = timings(model_at(model, size), images,
                                                                     args.reps, args.sigma)
    bh, bw = parse_size(args.big_camera)
    big = [cv2.resize(img, (bw, bh), interpolation=cv2.INTER_LINEAR) for img in images]
    grid = parse_size(args.big_grid)
    out["timing"][f"{bh}x{bw} from {grid[0]}x{grid[1]}"] = timings(model_at(model, grid), big,
                                                                    args.reps, args.sigma)
    out["load"] = [load0, os.getloadavg()[0]]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
