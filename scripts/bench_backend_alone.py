"""One inference backend alone in this process: the shipped model's StreamEngine (fixed K=2) over
real demo frames; prints one JSON line (network medians and minima of key and non-key frames).

Complements `dcfm-bench --backends`, which interleaves backends in one process: there the thread
pools of one runtime (spinning after its run) can slow the next one. Run it once per backend, e.g.
    for b in torch-nchw torch onnxruntime openvino; do
        .venv/bin/python scripts/bench_backend_alone.py $b; done
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import torch

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.backends import make_backend
from dcfm_ros.evaluation.bagio import BagReader, Frame
from dcfm_ros.model import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    name = sys.argv[1]
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    model, _ = load_checkpoint(REPO / "dcfm_ros" / "models" / "camvid_efficientnet_lite0.safetensors")
    options = {"channels_last": False} if name == "torch-nchw" else {}
    net = make_backend("torch" if name.startswith("torch") else name, model, "cpu", progress=None, **options)
    engine = StreamEngine(model, FixedInterval(2), backend=net)
    with BagReader(REPO / "demo" / "camvid_val_0016E5") as bag:
        frames = [f.image for f in bag.frames("/camera/image/compressed") if isinstance(f, Frame)][:96:4]
    results = [engine.process(f) for f in frames][4:]  # the first frames warm up

    def network(r) -> float:
        return sum(r.timings_ms[k] for k in ("enc_lo", "enc_hi", "ffm", "head"))

    key = [network(r) for r in results if r.is_keyframe]
    nonkey = [network(r) for r in results if not r.is_keyframe]
    print(json.dumps({"backend": name, "impl": net.describe(), "key_ms": statistics.median(key),
                      "nonkey_ms": statistics.median(nonkey), "key_min_ms": min(key),
                      "nonkey_min_ms": min(nonkey), "loadavg_1min": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
