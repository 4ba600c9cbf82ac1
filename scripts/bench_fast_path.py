#!/usr/bin/env python3
"""The fast path's figures in one interleaved run (docs/fast-path.md): for each engine variant, the
median StreamEngine.process() time of keyframes and non-key frames on the same frames, frame by frame
in turn, so a busy machine slows them alike; ratios against the first variant of the same backend.

Variants: `host` (one fused call a frame, pre/post-processing in torch), `io` (graph I/O: uint8 in,
labels out), `stages` (the profiling mode: the stage calls one by one), `io-bf16` (OpenVINO's bf16
hint), `io-int8` (the int8 frame graphs, engine/backends/quantize.py), and with --cameras the clip
resized to each camera size (labels at the camera's size: `io`, or made at the network's size:
`io-net`; `node`: the node's defaults on openvino, bf16 and labels_at auto; on openvino `io-net-onnx`
and `node-onnx`: the same with the pre-processing as ONNX ops instead of OpenVINO's PrePostProcessor).

    PYTHONPATH=. python scripts/bench_fast_path.py --backends openvino,onnxruntime --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import cv2
import torch

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.backends import make_backend
from dcfm_ros.engine.backends.openvino_backend import OpenVINOBackend
from dcfm_ros.model import load_checkpoint
from dcfm_ros.tools.clips import cpu_name, default_clip, load_clip

SHIPPED = "dcfm_ros/models/camvid_efficientnet_lite0.safetensors"


class OnnxPreOpenVINO(OpenVINOBackend):
    """OpenVINO running the graph-I/O variants with their pre-processing as ONNX ops (as onnxruntime
    does), for the side-by-side with the PrePostProcessor."""

    onnx_pre = True


def engines_for(model, backend: str, camera: tuple[int, int] | None,
                only: set[str] | None = None) -> dict[str, tuple]:
    """name -> (key engine, non-key engine); each pair shares one backend instance."""
    out = {}
    variants = [("host", "fp32", {}), ("io", "fp32", {"graph_io": True}),
                ("stages", "fp32", {"stages": True})]
    if backend == "openvino":
        variants.append(("io-bf16", "bf16", {"graph_io": True}))
    if backend in ("openvino", "onnxruntime"):
        variants.append(("io-int8", "int8", {"graph_io": True}))
    if camera is not None:
        variants = [("host", "fp32", {}), ("io", "fp32", {"graph_io": True}),
                    ("io-net", "fp32", {"graph_io": True, "labels_at": "network"})]
        if backend == "openvino":  # the node's defaults: precision auto (bf16 here), labels_at auto
            variants.append(("node", "bf16", {"graph_io": True, "labels_at": "auto"}))
            variants.append(("io-net-onnx", "fp32", {"graph_io": True, "labels_at": "network"}))
            variants.append(("node-onnx", "bf16", {"graph_io": True, "labels_at": "auto"}))
    if only:
        variants = [v for v in variants if v[0] in only]
    nets: dict[tuple[str, bool], object] = {}
    for name, precision, opts in variants:
        onnx = name.endswith("-onnx")
        net = nets.get((precision, onnx)) or (OnnxPreOpenVINO(model, "cpu", precision) if onnx
                                              else make_backend(backend, model, "cpu", precision))
        nets[(precision, onnx)] = net
        key = StreamEngine(model, FixedInterval(1), backend=net, **opts)
        nonkey = StreamEngine(model, FixedInterval(2**31 - 1), backend=net, **opts)
        out[name] = (key, nonkey)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="openvino,onnxruntime")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cameras", default=None,
                   help="comma list of HxW camera sizes (the clip's frames resized to each), measured in "
                        "the same interleaved run; default: the clip as it is")
    p.add_argument("--variants", default=None,
                   help="comma list of the variants to run (default: all), e.g. io,io-bf16,io-int8")
    args = p.parse_args()
    only = set(args.variants.split(",")) if args.variants else None
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(SHIPPED)
    frames, clip = load_clip(default_clip(), args.warmup + args.frames)
    cams: list[tuple[int, int] | None] = [None]
    if args.cameras:
        cams = [tuple(int(v) for v in c.lower().split("x")) for c in args.cameras.split(",")]  # type: ignore[misc]
    sized = {c: frames if c is None else [cv2.resize(f, (c[1], c[0]), interpolation=cv2.INTER_LINEAR)
                                          for f in frames] for c in cams}
    load0 = os.getloadavg()[0]

    def label(c: tuple[int, int] | None) -> str:
        return "clip" if c is None else f"{c[1]}x{c[0]}"

    runs = {f"{b.strip()}@{label(c)}": (c, engines_for(model, b.strip(), c, only))
            for b in args.backends.split(",") if b.strip() for c in cams}
    times = {(b, v, k): [] for b, (_, vs) in runs.items() for v in vs for k in ("key", "nonkey")}
    # CPU time of the whole process (every thread: the runtime's and torch's) per frame: threads that
    # spin beside the runtime's show up here, not in the wall time
    cpu = {key: [] for key in times}
    for i in range(len(frames)):
        for b, (c, vs) in runs.items():
            f = sized[c][i]
            for v, (key, nonkey) in vs.items():
                for kind, eng in (("key", key), ("nonkey", nonkey)):
                    t0, c0 = time.perf_counter(), time.process_time()
                    eng.process(f)
                    if i >= args.warmup:
                        times[(b, v, kind)].append((time.perf_counter() - t0) * 1000.0)
                        cpu[(b, v, kind)].append((time.process_time() - c0) * 1000.0)
    load1 = os.getloadavg()[0]
    print(f"{cpu_name()}  threads={args.threads}  clip={clip}"
          f"  load avg {load0:.1f} -> {load1:.1f}  (medians of {args.frames}, ms; interleaved)")
    rows = []
    for b, (_, vs) in runs.items():
        first = None
        for v in vs:
            med = {k: statistics.median(times[(b, v, k)]) for k in ("key", "nonkey")}
            cpu_med = {k: statistics.median(cpu[(b, v, k)]) for k in ("key", "nonkey")}
            first = first or med
            row = {"backend": b, "variant": v, "key_ms": med["key"], "nonkey_ms": med["nonkey"],
                   "key_vs_first": first["key"] / med["key"],
                   "nonkey_vs_first": first["nonkey"] / med["nonkey"],
                   "nonkey_over_key": med["nonkey"] / med["key"],
                   "key_cpu_ms": cpu_med["key"], "nonkey_cpu_ms": cpu_med["nonkey"]}
            rows.append(row)
            print(f"{b:22s} {v:8s} key {med['key']:7.1f}  non-key {med['nonkey']:7.1f}  speed-up vs "
                  f"{next(iter(vs))}: key {row['key_vs_first']:.2f}x non-key {row['nonkey_vs_first']:.2f}x  "
                  f"non-key/key {row['nonkey_over_key']:.2f}  CPU ms key {cpu_med['key']:.0f} "
                  f"non-key {cpu_med['nonkey']:.0f}")
    print(json.dumps({"cpu": cpu_name(), "threads": args.threads, "load": [load0, load1], "rows": rows}))
    for _, vs in runs.values():
        for key, nonkey in vs.values():
            key.close()
            nonkey.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
