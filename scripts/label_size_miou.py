#!/usr/bin/env python3
"""Labels at camera resolution, two ways, on the CamVid val clip (docs/fast-path.md): the shipped
model through the engine with graph I/O, the clip's frames resized to a larger camera (bilinear) and
its labels to the same size (nearest); mIoU and the time per frame of
  camera   the exact method: logits upsampled to the camera's size, argmax there (in the graph)
  network  argmax at the network's input size, then nearest-neighbour scaling of the uint8 labels
Same frames, same keyframes (the node's default policy), interleaved.

    PYTHONPATH=. python scripts/label_size_miou.py --camera 1080x1440 --backend openvino
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2

from dcfm_ros.data.datasets.camvid import CAMVID_LUT, camvid_sequences
from dcfm_ros.data.datasets.pairs import read_label, read_rgb
from dcfm_ros.data.metrics import ConfusionMatrix
from dcfm_ros.engine import MotionThreshold, StreamEngine
from dcfm_ros.engine.backends import make_backend
from dcfm_ros.model import load_checkpoint
from dcfm_ros.tools.clips import cpu_name

SHIPPED = "dcfm_ros/models/camvid_efficientnet_lite0.safetensors"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--camera", default="1080x1440", help="HxW the val frames are resized to")
    p.add_argument("--backend", default="openvino")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=None, help="first N frames of the clip (default all)")
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/camvid"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.camera.lower().split("x"))
    model, _ = load_checkpoint(SHIPPED)
    samples = [s for seq in camvid_sequences(args.data, "val").values() for s in seq][: args.frames]
    net = make_backend(args.backend, model, "cpu")
    engines = {m: StreamEngine(model, MotionThreshold(0.1, 1, 30), backend=net, graph_io=True, labels_at=m)
               for m in ("camera", "network")}
    cms = {m: ConfusionMatrix(model.config.num_classes) for m in engines}
    ms: dict[str, list[float]] = {m: [] for m in engines}
    agree = []
    load0 = os.getloadavg()[0]
    for s in samples:
        img = cv2.resize(read_rgb(s.image), (w, h), interpolation=cv2.INTER_LINEAR)
        gt = cv2.resize(read_label(s.label, CAMVID_LUT), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        got = {}
        for m, e in engines.items():
            t0 = time.perf_counter()
            got[m] = e.process(img).labels
            ms[m].append((time.perf_counter() - t0) * 1000.0)
            cms[m].update(got[m], gt)
        agree.append(float((got["camera"] == got["network"]).mean()))
    out = {"cpu": cpu_name(), "threads": args.threads, "backend": net.describe(), "camera": [h, w],
           "frames": len(samples), "load": [load0, os.getloadavg()[0]],
           "pixel_agreement": statistics.fmean(agree)}
    for m in engines:
        out[m] = {"miou": 100.0 * cms[m].miou(), "median_ms": statistics.median(ms[m])}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
