"""dcfm-bench: keyframe / non-key frame / per-frame baseline timing of the streaming engine.

One run measures, on the same frames and the same model instance:
- baseline: the backbone's plain per-frame model, implemented as head(enc_hi(enc_lo(x))), i.e. the
  DCFM keyframe without the FFM. For MiT this is SegFormer (enc_hi ends with the all-MLP decoder's
  fuse, the head is the classifier on it), for ResNet the dilated ResNet + PPM + classifier, for
  EfficientNet-Lite0 the same encoder + decoder without FFM;
- the DCFM keyframe (enc_lo, enc_hi, ffm, head) and non-key frame (enc_lo, ffm, head), medians;
- fixed intervals K: stream time = (T_key + (K - 1) T_nonkey) / K (paper, Section IV-E), from the
  medians; the motion policy run causally over the real clip (measured keyframe ratio and mean).

"network" times cover the network only (what the paper's Table VIII reports): the frame's one fused
call on the graph backends (the baseline, too, is one graph there), or with --stages (the engine's
profiling mode) the four stages enc_lo, enc_hi, ffm, head called and timed one by one;
"e2e" times are the wall time of StreamEngine.process(), i.e. also upload, resize, normalise,
logits upsampling to the image size, argmax and the copy back to the host.
--overhead instead times, interleaved per frame (each pair in both orders on alternate frames),
StreamEngine's key and non-key frames against the same backend's fused key and non-key graphs called
bare (numpy in, no conversions; with --graph-io their I/O variants, uint8 image in): the engine's own
cost.
Weights are random (timing only: the speed of these networks does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dcfm_ros.engine.backends.base import GraphIO
from dcfm_ros.engine.device import PRECISIONS, StageTimer
from dcfm_ros.engine.keyframe import FixedInterval, MotionThreshold
from dcfm_ros.engine.specs import label_size
from dcfm_ros.engine.stream import StreamEngine
from dcfm_ros.tools.args import size_type
from dcfm_ros.tools.clips import clip_paths, cpu_name, default_clip, load_clip

BACKBONE_CHOICES = ("mit-b0", "mit-b1", "mit-b2", "mit-b3", "mit-b4", "mit-b5",
                    "resnet18", "resnet50", "resnet101", "efficientnet-lite0")
NETWORK_STAGES = ("enc_lo", "enc_hi", "ffm", "head")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _network_ms(timings: dict[str, float]) -> float:
    # The network's work on the frame's thread: the fused call (or, --stages, the stages one by one).
    return timings["network"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _baseline_frame(engine: StreamEngine, image: np.ndarray) -> tuple[float, float]:
    """One per-frame-baseline pass, head(enc_hi(enc_lo(x))), with the engine's own pre/post-processing
    and stage timer: one call where the backend fuses it, the three stages with --stages. Returns
    (network ms, end-to-end ms)."""
    net, pre, device = engine.backend, engine.preprocessor, engine.device
    with torch.inference_mode():
        t0 = time.perf_counter()
        timer = StageTimer(device)
        timer.start()
        x = pre.normalize(pre.upload(image))
        timer.mark("preprocess")
        # The baseline decodes F_co directly (no FFM): head(enc_hi(enc_lo(x))).
        logits = net.head(net.enc_hi(net.enc_lo(x))) if engine.stages else net.baseline_logits(x)
        timer.mark("network")
        pre.labels(logits, (image.shape[0], image.shape[1]))
        e2e = (time.perf_counter() - t0) * 1000.0
        timer.mark("postprocess")
        return timer.read()["network"], e2e


def _summary(key: list[dict], nonkey: list[dict], baseline_net: list[float],
             baseline_e2e: list[float]) -> dict:
    """The keys every record shares: medians, minima and ratios of the fixed measurements."""
    key_ms = _median([_network_ms(t) for t in key])
    nonkey_ms = _median([_network_ms(t) for t in nonkey])
    base_ms = _median(baseline_net)
    return {
        "key_ms": key_ms, "nonkey_ms": nonkey_ms, "baseline_ms": base_ms,
        "key_e2e_ms": _median([t["total"] for t in key]),
        "nonkey_e2e_ms": _median([t["total"] for t in nonkey]),
        "baseline_e2e_ms": _median(baseline_e2e),
        "ratio_nonkey_key": nonkey_ms / key_ms, "ratio_key_baseline": key_ms / base_ms,
        # Best of N: on a shared machine other jobs only ever add time, so the minimum is the closest
        # to the uncontended cost; ratios from it are the ones to trust when the load was high.
        "key_min_ms": min(_network_ms(t) for t in key),
        "nonkey_min_ms": min(_network_ms(t) for t in nonkey),
        "baseline_min_ms": min(baseline_net),
        "ratio_nonkey_key_min": min(_network_ms(t) for t in nonkey) / min(_network_ms(t) for t in key),
        "ratio_key_baseline_min": min(_network_ms(t) for t in key) / min(baseline_net),
        "key_stages_ms": {k: _median([t[k] for t in key]) for k in (*NETWORK_STAGES, "preprocess",
                                                                      "postprocess")},
        "nonkey_stages_ms": {k: _median([t[k] for t in nonkey]) for k in (*NETWORK_STAGES, "preprocess",
                                                                            "postprocess")},
    }


def measure_many(engines: dict[str, StreamEngine], frames: list[np.ndarray], warmup: int, count: int,
                 threshold: float, min_interval: int, max_interval: int, motion_frames: list[np.ndarray],
                 intervals: Sequence[int]) -> dict[str, list[dict]]:
    """`measure` for several engines (one per backend) at once: every frame goes through every
    backend's three measurements before the next frame, so a shared, busy machine slows them alike
    and the ratios between backends stay meaningful. Returns {name: records}."""
    runs = {}
    for name, engine in engines.items():
        # Two engines on the same backend: one where every frame is a keyframe, one where (after its
        # first frame) no frame is.
        engine.policy = FixedInterval(1)
        engine.reset()
        nonkey_engine = StreamEngine(engine.model, FixedInterval(2**31 - 1), input_size=engine.input_size,
                                     backend=engine.backend, stages=engine.stages, graph_io=engine.graph_io)
        nonkey_engine.process(frames[0])
        runs[name] = (engine, nonkey_engine, ([], [], [], []))
    for i, f in enumerate(frames[: warmup + count]):
        for key_engine, nonkey_engine, (key, nonkey, baseline_net, baseline_e2e) in runs.values():
            device = key_engine.device
            _sync(device)
            rk = key_engine.process(f)
            _sync(device)
            rn = nonkey_engine.process(f)
            if rn.is_keyframe or not rk.is_keyframe:  # cannot happen; guards the numbers' meaning
                raise RuntimeError("dcfm-bench: unexpected keyframe decision in the fixed measurements")
            _sync(device)
            net, e2e = _baseline_frame(key_engine, f)
            if i >= warmup:
                key.append(rk.timings_ms)
                nonkey.append(rn.timings_ms)
                baseline_net.append(net)
                baseline_e2e.append(e2e)
    out = {}
    for name, (engine, _, lists) in runs.items():
        common = _summary(*lists)
        out[name] = _records(engine, common, threshold, min_interval, max_interval, motion_frames, intervals)
    return out


def measure_overhead(engines: dict[str, StreamEngine], frames: list[np.ndarray], warmup: int,
                     count: int) -> dict[str, dict]:
    """StreamEngine's key / non-key frame (process() wall time) against the backend's fused key /
    non-key graph called bare on the same frame, interleaved frame by frame. Graph backends only."""
    runs = {}
    for name, engine in engines.items():
        net = engine.backend
        if not hasattr(net, "raw_runner"):
            raise SystemExit(f"dcfm-bench --overhead: backend {name!r} has no fused graphs to time alone")
        engine.policy = FixedInterval(1)
        engine.reset()
        nonkey_engine = StreamEngine(engine.model, FixedInterval(2**31 - 1), input_size=engine.input_size,
                                     backend=net, graph_io=engine.graph_io)
        nonkey_engine.process(frames[0])
        common = nonkey_engine.state.cache.common.numpy()  # type: ignore[union-attr]
        # With graph I/O the engine runs the frame graphs' I/O variants (uint8 image in, labels and
        # confidence out): the same graphs are timed bare, so the ratio is the engine's own cost.
        shape = frames[0].shape[:2]
        camera = (GraphIO(shape, label_size(engine.labels_at, shape, engine.input_size))
                  if engine.graph_io else None)
        runs[name] = (engine, nonkey_engine, net.raw_runner("key", camera),
                      net.raw_runner("nonkey", camera), common, camera is not None,
                      {"engine_key": [], "engine_nonkey": [], "graph_key": [], "graph_nonkey": []})
    pre = next(iter(engines.values())).preprocessor
    for i, f in enumerate(frames[: warmup + count]):
        with torch.inference_mode():
            x = pre.normalize(pre.upload(f)).numpy()
        image = np.ascontiguousarray(f)[None]
        for key_engine, nonkey_engine, key_graph, nonkey_graph, common, io, t in runs.values():
            feed = {"image": image} if io else {"x": x}
            calls = {"engine_key": (key_engine.process, f), "graph_key": (key_graph, feed),
                     "engine_nonkey": (nonkey_engine.process, f),
                     "graph_nonkey": (nonkey_graph, {**feed, "common": common})}
            # Each pair in both orders on alternate frames: the second call of a graph finds its
            # weights in the caches the first one warmed.
            order = ["engine_key", "graph_key", "engine_nonkey", "graph_nonkey"]
            if i % 2:
                order = ["graph_key", "engine_key", "graph_nonkey", "engine_nonkey"]
            samples = {}
            for k in order:
                call, arg = calls[k]
                t0 = time.perf_counter()
                call(arg)
                samples[k] = time.perf_counter() - t0
            if i >= warmup:
                for k, v in samples.items():
                    t[k].append(v * 1000.0)
    out = {}
    for name, (*_, t) in runs.items():
        med = {k: _median(v) for k, v in t.items()}
        out[name] = {**{f"{k}_ms": v for k, v in med.items()},
                     **{f"{k}_min_ms": min(v) for k, v in t.items()},
                     "ratio_key_engine_graph": med["engine_key"] / med["graph_key"],
                     "ratio_nonkey_engine_graph": med["engine_nonkey"] / med["graph_nonkey"]}
    return out


def measure(engine: StreamEngine, frames: list[np.ndarray], warmup: int, count: int, threshold: float,
            min_interval: int, max_interval: int, motion_frames: list[np.ndarray],
            intervals: Sequence[int]) -> list[dict]:
    """Run all measurements; returns one record per fixed K and one for the motion policy."""
    return measure_many({"engine": engine}, frames, warmup, count, threshold, min_interval, max_interval,
                        motion_frames, intervals)["engine"]


def _records(engine: StreamEngine, common: dict, threshold: float, min_interval: int, max_interval: int,
             motion_frames: list[np.ndarray], intervals: Sequence[int]) -> list[dict]:
    key_ms, nonkey_ms, base_ms = common["key_ms"], common["nonkey_ms"], common["baseline_ms"]
    key_e2e, nonkey_e2e, base_e2e = common["key_e2e_ms"], common["nonkey_e2e_ms"], common["baseline_e2e_ms"]
    device = engine.device
    records = []
    for k in intervals:
        stream = (key_ms + (k - 1) * nonkey_ms) / k
        stream_e2e = (key_e2e + (k - 1) * nonkey_e2e) / k
        records.append({**common, "mode": "fixed", "K": k, "keyframe_ratio": 1.0 / k,
                        "stream_ms": stream, "stream_e2e_ms": stream_e2e, "fps": 1000.0 / stream,
                        "ratio_stream_baseline": stream / base_ms,
                        "ratio_stream_baseline_e2e": stream_e2e / base_e2e})

    if motion_frames:
        engine.policy = MotionThreshold(threshold, min_interval, max_interval)
        engine.reset()
        results = []
        for f in motion_frames:
            _sync(device)
            results.append(engine.process(f))
        keys = sum(r.is_keyframe for r in results)
        stream = statistics.fmean(_network_ms(r.timings_ms) for r in results)
        stream_e2e = statistics.fmean(r.timings_ms["total"] for r in results)
        predicted = (keys * key_ms + (len(results) - keys) * nonkey_ms) / len(results)
        scores = [r.motion_score for r in results if r.frames_since_key > 0 or r.motion_score > 0]
        records.append({**common, "mode": "motion", "threshold": threshold, "min_interval": min_interval,
                        "max_interval": max_interval, "motion_frames": len(results),
                        "keyframes": int(keys), "keyframe_ratio": keys / len(results),
                        "mean_motion_score": statistics.fmean(scores) if scores else 0.0,
                        "stream_ms": stream, "stream_e2e_ms": stream_e2e, "fps": 1000.0 / stream,
                        "ratio_stream_baseline": stream / base_ms,
                        "ratio_stream_baseline_e2e": stream_e2e / base_e2e,
                        # the same keyframe ratio priced with the interleaved medians (robust to a
                        # machine whose load changed between the measurements)
                        "stream_ms_from_medians": predicted,
                        "ratio_stream_baseline_from_medians": predicted / base_ms})
    return records


def _print_table(records: list[dict], info: dict) -> None:
    r0 = records[0]
    print(f"dcfm-bench  {info['backbone']}  {info['size'][0]}x{info['size'][1]}  device={info['device']} "
          f"({info['device_name']})  precision={info['precision']}  torch {info['torch']}  "
          f"threads={info['threads']}")
    print(f"clip: {info['clip']}  frames={info['frames']} warmup={info['warmup']}  "
          f"weights: {info['weights']}")
    print("network = enc_lo+enc_hi+ffm+head; e2e = process() incl. pre/post-processing (medians, ms)")
    print(f"{'':14s}{'network':>10s}{'e2e':>10s}{'net min':>10s}")
    for name, a, b, c in (("baseline", r0["baseline_ms"], r0["baseline_e2e_ms"], r0["baseline_min_ms"]),
                          ("DCFM key", r0["key_ms"], r0["key_e2e_ms"], r0["key_min_ms"]),
                          ("DCFM non-key", r0["nonkey_ms"], r0["nonkey_e2e_ms"], r0["nonkey_min_ms"])):
        print(f"{name:14s}{a:10.1f}{b:10.1f}{c:10.1f}")
    print("stages key:     " + "  ".join(f"{k} {v:.1f}" for k, v in r0["key_stages_ms"].items()))
    print("stages non-key: " + "  ".join(f"{k} {v:.1f}" for k, v in r0["nonkey_stages_ms"].items()))
    print(f"non-key / key = {r0['ratio_nonkey_key']:.3f} (min {r0['ratio_nonkey_key_min']:.3f})   "
          f"key / baseline = {r0['ratio_key_baseline']:.3f} (min {r0['ratio_key_baseline_min']:.3f})   "
          f"load avg {info['loadavg_1min_before_after'][0]:.1f}")
    print(f"{'schedule':28s}{'key ratio':>10s}{'ms/frame':>10s}{'FPS':>8s}{'/baseline':>11s}"
          f"{'e2e ms':>9s}{'/base e2e':>11s}")
    for r in records:
        name = f"fixed K={r['K']}" if r["mode"] == "fixed" else \
            f"motion S={r['threshold']} [{r['min_interval']},{r['max_interval']}] n={r['motion_frames']}"
        print(f"{name:28s}{r['keyframe_ratio']:10.3f}{r['stream_ms']:10.1f}{r['fps']:8.1f}"
              f"{r['ratio_stream_baseline']:11.3f}{r['stream_e2e_ms']:9.1f}{r['ratio_stream_baseline_e2e']:11.3f}")
        if r["mode"] == "motion":
            priced = r["stream_ms_from_medians"]
            print(f"{'  same keys, medians':28s}{'':10s}{priced:10.1f}{1000.0 / priced:8.1f}"
                  f"{r['ratio_stream_baseline_from_medians']:11.3f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", default="mit-b2", choices=BACKBONE_CHOICES)
    p.add_argument("--size", type=size_type, default=(480, 853), help="network input HxW")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--frames", type=int, default=20, help="timed frames per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed frames before each measurement")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--clip", type=Path, default=None,
                   help="directory of frames (sorted by name); default: ../shared/data/camvid/val next "
                        "to the repository if it exists, else synthetic frames")
    p.add_argument("--threshold", type=float, default=0.05, help="motion policy threshold (0..1 units)")
    p.add_argument("--min-interval", type=int, default=1, help="motion policy minimum interval")
    p.add_argument("--max-interval", type=int, default=6, help="motion policy maximum interval")
    p.add_argument("--motion-frames", type=int, default=None,
                   help="frames of the clip for the motion-policy run (default: the whole clip; 0: skip)")
    p.add_argument("--intervals", default="1,2,6", help="fixed keyframe intervals K to report")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--model", type=Path, default=None,
                   help="time this checkpoint (its backbone, classes and weights; --size still applies) "
                        "instead of a random-init --backbone")
    p.add_argument("--backends", default="torch",
                   help="comma list of inference backends measured side by side in this run: torch, "
                        "torch-nchw (torch without channels_last), onnxruntime, tensorrt, auto")
    p.add_argument("--backend-cache-dir", default=None,
                   help="exported graphs / engines (default: $XDG_CACHE_HOME/dcfm_ros or ~/.cache/dcfm_ros)")
    p.add_argument("--stages", action="store_true",
                   help="the engine's profiling mode: each frame's stages called and timed one by one "
                        "(default: one fused call per frame on the graph backends)")
    p.add_argument("--graph-io", action="store_true",
                   help="engines with the pre/post-processing in the graph (StreamEngine graph_io: uint8 "
                        "image in, labels out) where the backend can")
    p.add_argument("--overhead", action="store_true",
                   help="instead: StreamEngine's key / non-key frames against the same fused graphs "
                        "called bare (graph backends), interleaved")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--latency", action="store_true",
                   help="instead: replay a clip at a camera rate per keyframe schedule (see "
                        "`dcfm-bench --latency --help`)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--latency" in argv:  # the replay mode: latency per keyframe schedule (engine/latency.py)
        from dcfm_ros.tools.latency import main as latency_main

        return latency_main([a for a in argv if a != "--latency"])
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.num_classes < 1:
        raise SystemExit("dcfm-bench: --frames and --num-classes must be >= 1, --warmup >= 0")
    try:
        intervals = [int(k) for k in args.intervals.split(",") if k.strip()]
    except ValueError as exc:
        raise SystemExit(f"dcfm-bench: --intervals must be comma-separated ints, got {args.intervals!r}") \
            from exc
    if not intervals or min(intervals) < 1:
        raise SystemExit("dcfm-bench: --intervals must be ints >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Built here, not at import: keeps `dcfm-bench --help` free of the model import.
    from dcfm_ros.model import DCFMConfig, build_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = DCFMConfig(
        backbone=args.backbone, num_classes=args.num_classes,
        class_names=tuple(f"class{i}" for i in range(args.num_classes)),
        palette=tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(args.num_classes)),
        input_size=args.size)
    model = build_model(config)  # random init: timing only
    weights = "random init (timing only)"
    if args.model is not None:
        from dcfm_ros.model import load_checkpoint

        model, _ = load_checkpoint(args.model)
        config = model.config
        weights = str(args.model)
    from dcfm_ros.engine.backends import BACKEND_CHOICES, make_backend, resolve_backend

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in (*BACKEND_CHOICES, "torch-nchw")]
    if not names or unknown:
        raise SystemExit(f"dcfm-bench: --backends: unknown {unknown}; expected a comma list of "
                         f"{', '.join((*BACKEND_CHOICES, 'torch-nchw'))}")
    engines: dict[str, StreamEngine] = {}
    for name in names:
        # Each backend its own copy of the weights: the torch backend changes the model's memory
        # format, and the graph backends move it to the CPU for export.
        copy_ = build_model(config)
        copy_.load_state_dict(model.state_dict())
        copy_.eval()
        if name == "torch-nchw":
            net = make_backend("torch", copy_, args.device, args.precision, channels_last=False)
        else:
            net = make_backend(resolve_backend(name, args.device, args.precision), copy_, args.device,
                               args.precision, input_size=args.size, cache_dir=args.backend_cache_dir)
        engines[name] = StreamEngine(copy_, FixedInterval(1), input_size=args.size, backend=net,
                                     stages=args.stages, graph_io=args.graph_io)
    engine = next(iter(engines.values()))

    clip = args.clip if args.clip is not None else default_clip()
    clip_len = len(clip_paths(clip)) if clip is not None else 100
    n_motion = clip_len if args.motion_frames is None else max(0, args.motion_frames)
    frames, clip_name = load_clip(clip, max(args.warmup + args.frames, n_motion))

    load_before = os.getloadavg()[0]  # the machine may be shared: record how busy it was
    if args.overhead:
        over = measure_overhead(engines, frames, args.warmup, args.frames)
        load = [load_before, os.getloadavg()[0]]
        for name, r in over.items():
            row = {"backend": name, "backend_impl": engines[name].backend.describe(), "cpu": cpu_name(),
                   "threads": torch.get_num_threads(), "size": list(args.size),
                   "image_size": list(frames[0].shape[:2]), "loadavg_1min_before_after": load, **r}
            if args.json:
                print(json.dumps(row))
            else:
                print(f"== {name}: {row['backend_impl']}  {cpu_name()}  threads={row['threads']}  "
                      f"load avg {load[0]:.1f} -> {load[1]:.1f}  (medians, ms; same run, interleaved)")
                for kind in ("key", "nonkey"):
                    print(f"  {kind:7s} StreamEngine {r[f'engine_{kind}_ms']:7.1f}  graph alone "
                          f"{r[f'graph_{kind}_ms']:7.1f}  ratio {r[f'ratio_{kind}_engine_graph']:.2f}  "
                          f"(min {r[f'engine_{kind}_min_ms']:.1f} / {r[f'graph_{kind}_min_ms']:.1f})")
        return 0
    by_backend = measure_many(engines, frames, args.warmup, args.frames, args.threshold, args.min_interval,
                              args.max_interval, frames[:n_motion], intervals)
    device = engine.device
    info = {
        "backbone": config.backbone, "size": list(args.size), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "cpu": cpu_name(), "precision": args.precision, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "num_classes": config.num_classes,
        "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
        "frames": args.frames, "warmup": args.warmup, "clip": clip_name,
        "image_size": list(frames[0].shape[:2]),
        "weights": weights,
        "timing": "medians; network = enc_lo+enc_hi+ffm+head, e2e = StreamEngine.process wall time",
    }
    first = by_backend[names[0]][0]
    for name, records in by_backend.items():
        backend = engines[name].backend
        extra = {"backend": name, "backend_impl": backend.describe(),
                 # side by side in this run: this backend's time over the first one's
                 "speedup_key_vs_first": first["key_ms"] / records[0]["key_ms"],
                 "speedup_nonkey_vs_first": first["nonkey_ms"] / records[0]["nonkey_ms"]}
        if args.json:
            for r in records:
                print(json.dumps({**info, **extra, **r}, sort_keys=False))
        else:
            print(f"== backend {name}: {extra['backend_impl']}")
            _print_table(records, info)
            if name != names[0]:
                print(f"vs {names[0]}: key {extra['speedup_key_vs_first']:.2f}x, non-key "
                      f"{extra['speedup_nonkey_vs_first']:.2f}x faster (same run, interleaved)")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
