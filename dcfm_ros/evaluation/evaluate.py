"""`dcfm-evaluate`: offline accuracy / consistency of a DCFM checkpoint on a video dataset split.

    dcfm-evaluate --model CKPT --dataset camvid --root DIR --split val \\
        [--modes p,b] [--policies fixed:1,fixed:2,fixed:5,motion:0.05] [--size HxW] [--json OUT]

Every video of the split is run in frame order through the engine, once per (mode, policy):
- P mode: `StreamEngine` (causal, previous keyframe only; what the live node does);
- B mode: `run_bmode` (previous and next keyframe averaged; offline), with the keyframes the same
  policy picks (`select_keyframes`, identical to P mode's choice).
`fixed:1` (every frame a keyframe) is the per-frame baseline; B mode equals P mode there and is not
run twice. `motion:THR[:MIN[:MAX]]` is the causal adaptive policy (MotionThreshold),
`feature:THR[:MIN[:MAX]]` the feature-similarity policy (engine/feature_policy.py, P mode only).
`--blend none|auto|cosine[:feature|logits][:key|prev][:strength]` sets P mode's nonkey_blend
(engine/blend.py).

Reported per row: mIoU, wIoU, pixel accuracy, per-class IoU (all over labeled frames), mIoU over
labeled keyframes and over labeled non-key frames, the keyframe ratio (over all frames run), and
mVC_8 / mVC_16 averaged over DENSELY labeled videos only (CamVid val: 15 Hz; CamVid train/test are
1 Hz and Cityscapes has one labeled frame per snippet, so mVC is null there, with a note).
mIoU excludes classes absent from both GT and prediction (see metrics.py).

CamVid here holds only the labeled frames, so a "video" is its labeled frames in order: 15 Hz for
val, but 1 s apart for train/test (keyframe reuse across 1 s is much harder than in the paper's
30 fps setting).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.evaluation.metrics import ConfusionMatrix, mean_video_consistency
from dcfm_ros.training.datasets import dataset_spec, is_dense, video_frames
from dcfm_ros.training.datasets.pairs import FrameSample, read_label, read_rgb

MVC_LENGTHS = (8, 16)
MODES = ("p", "b")


@dataclass(frozen=True)
class PolicySpec:
    text: str  # as given, e.g. "fixed:2", "motion:0.05:1:30"
    kind: str  # fixed | motion
    interval: int = 1
    threshold: float = 0.0
    min_interval: int = 1
    max_interval: int = 30

    def build(self) -> Any:
        from dcfm_ros.engine import make_policy

        if self.kind == "feature":
            from dcfm_ros.engine.feature_policy import FeatureSimilarity

            return FeatureSimilarity(self.threshold, self.min_interval, self.max_interval)

        return make_policy(self.kind, interval=self.interval, threshold=self.threshold,
                           min_interval=self.min_interval, max_interval=self.max_interval)


def parse_policy(text: str) -> PolicySpec:
    parts = text.strip().lower().split(":")
    if parts[0] == "feature":
        from dcfm_ros.engine.feature_policy import parse_feature_policy

        p = parse_feature_policy(text)
        return PolicySpec(text.strip().lower(), "feature", threshold=p.threshold,
                          min_interval=p.min_interval, max_interval=p.max_interval)
    try:
        if parts[0] == "fixed" and len(parts) == 2:
            k = int(parts[1])
            if k < 1:
                raise ValueError
            return PolicySpec(f"fixed:{k}", "fixed", interval=k)
        if parts[0] == "motion" and 2 <= len(parts) <= 4:
            thr = float(parts[1])
            mn = int(parts[2]) if len(parts) > 2 else 1
            mx = int(parts[3]) if len(parts) > 3 else 30
            spec = PolicySpec(text.strip().lower(), "motion", threshold=thr, min_interval=mn, max_interval=mx)
            spec.build()  # validates ranges with the engine's own checks
            return spec
    except ValueError as exc:
        raise ValueError(f"bad policy {text!r}: {exc or 'expected fixed:K with K >= 1'}") from exc
    raise ValueError(f"bad policy {text!r}; expected fixed:K or motion:THR[:MIN[:MAX]]")


def parse_schedules(text: str) -> list[str]:
    """"sync,spread:3,lag:2" -> the names; `background` is refused (its timing-dependent result is
    what lag:L prices exactly)."""
    from dcfm_ros.engine.schedules import make_schedule

    out = []
    for item in (t.strip().lower() for t in text.split(",") if t.strip()):
        if item.startswith("background"):
            raise ValueError("--schedule background depends on timing; use lag:L for a cache L frames late")
        if item == "spread":
            raise ValueError("--schedule spread needs N: spread:N")
        make_schedule(item)  # validates
        out.append(item)
    if not out:
        raise ValueError("--schedule must name at least one schedule")
    return out


def parse_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"--size must be HxW, e.g. 360x480, got {text!r}") from exc
    if h < 1 or w < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return h, w


class _Accumulator:
    """Metrics of one (mode, policy) row."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.all = ConfusionMatrix(num_classes, ignore_index)
        self.key = ConfusionMatrix(num_classes, ignore_index)
        self.nonkey = ConfusionMatrix(num_classes, ignore_index)
        self.frames = 0
        self.keyframes = 0
        self.labeled = 0
        self.seconds = 0.0
        self.dense_videos: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    def add_video(self, labels: Sequence[np.ndarray | None], preds: Sequence[np.ndarray],
                  is_key: Sequence[bool], dense: bool, fresh: Sequence[bool] | None = None) -> None:
        """`fresh`: frames that used their own F_co (the key side of the key/non-key split; with
        schedule sync these are the keyframes, with spread/lag only forced ones)."""
        self.frames += len(preds)
        self.keyframes += sum(bool(k) for k in is_key)
        for gt, pred, k in zip(labels, preds, is_key if fresh is None else fresh, strict=True):
            if gt is None:
                continue
            self.labeled += 1
            self.all.update(pred, gt)
            (self.key if k else self.nonkey).update(pred, gt)
        if dense:
            self.dense_videos.append(([g for g in labels if g is not None], list(preds)))

    def row(self, mode: str, policy: str, class_names: Sequence[str], ignore_index: int,
            schedule: str = "sync") -> dict[str, Any]:
        out: dict[str, Any] = {"mode": mode, "policy": policy, "schedule": schedule}
        out.update(self.all.summary(class_names))
        out["mIoU_key"] = _finite(self.key.miou()) if self.key.matrix.sum() else None
        out["mIoU_nonkey"] = _finite(self.nonkey.miou()) if self.nonkey.matrix.sum() else None
        out["keyframe_ratio"] = self.keyframes / self.frames if self.frames else None
        for n in MVC_LENGTHS:
            out[f"mVC_{n}"] = (mean_video_consistency(self.dense_videos, n, ignore_index)
                               if self.dense_videos else None)
        out["frames"] = self.frames
        out["labeled_frames"] = self.labeled
        out["keyframes"] = self.keyframes
        out["seconds_per_frame"] = self.seconds / self.frames if self.frames else None
        return out


def reference_stride(dataset: str, frames: Sequence[FrameSample], model: Any) -> int | None:
    """Frames between a multi-frame model's references (MRCFA / SD-CPC) on this video: the model's
    own spacing (both papers: t-3, t-6 at 15 Hz) on a densely labeled clip, 1 on a sparse one (CamVid
    test: the frames are the 1 Hz labeled ones, the spacing they were trained with). None for the
    keyframe models."""
    if not hasattr(model, "num_references"):
        return None
    return int(model.default_stride) if is_dense(dataset, list(frames)) else 1


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def evaluate(model: Any, videos: dict[str, list[FrameSample]], lut: np.ndarray, dataset: str,
             modes: Sequence[str], policies: Sequence[PolicySpec], *,
             input_size: tuple[int, int] | None = None,
             device: str = "auto", precision: str = "fp32", ignore_index: int = 255,
             progress: bool = True, schedules: Sequence[str] = ("sync",), backend: str = "auto",
             backend_cache_dir: str | None = None, nonkey_blend: str = "auto") -> dict[str, Any]:
    """Run every (mode, policy) over every video, P mode once per keyframe schedule (sync, spread:N,
    lag:L; B mode is offline and runs with sync only); returns the JSON-ready report (without file
    info)."""
    from dcfm_ros.engine import StreamEngine, make_backend, resolve_device, run_bmode, select_keyframes

    bad = [m for m in modes if m not in MODES]
    if "b" in modes and any(p.kind == "feature" for p in policies):
        raise ValueError("the feature policy needs the engine's similarity map: P mode only (--modes p)")
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; expected a subset of {MODES}")
    cfg = model.config
    size = tuple(input_size) if input_size is not None else tuple(cfg.input_size)
    ring = hasattr(model, "num_references")  # MRCFA / SD-CPC: one P-mode row, every frame a full pass
    if ring:
        modes, policies, schedules = ["p"], [parse_policy("fixed:1")], ("sync",)
    per_frame = [p.kind == "fixed" and p.interval == 1 for p in policies]
    jobs = [(m, p, sc) for p, pf in zip(policies, per_frame, strict=True) for m in modes
            for sc in (schedules if m == "p" else ("sync",)) if not (m == "b" and pf)]
    acc = {(m, p.text, sc): _Accumulator(cfg.num_classes, ignore_index) for m, p, sc in jobs}
    dense_names = [v for v, frames in videos.items() if is_dense(dataset, frames)]
    # One backend for every engine and B mode: the same weights, graphs and sessions throughout.
    net = None if ring else make_backend(backend, model, device, precision, input_size=size,
                                         cache_dir=backend_cache_dir)
    engines = {} if ring else {(p.text, sc): StreamEngine(model, p.build(), input_size=size, backend=net,
                                                          schedule=sc, nonkey_blend=nonkey_blend)
                               for m, p, sc in jobs if m == "p"}
    total_frames = sum(len(f) for f in videos.values())
    done = 0
    for vi, (name, frames) in enumerate(videos.items()):
        images = [read_rgb(f.image) for f in frames]
        labels = [read_label(f.label, lut) if f.label is not None else None for f in frames]
        dense = name in dense_names
        for mode, pol, sched in jobs:
            t0 = time.perf_counter()
            fresh = None
            if mode == "p":
                stride = reference_stride(dataset, frames, model)
                if ring and (pol.text, stride) not in engines:
                    engines[(pol.text, stride)] = StreamEngine(model, pol.build(), device=device,
                                                               precision=precision, input_size=size,
                                                               backend=backend, reference_stride=stride)
                eng = engines[(pol.text, stride if ring else sched)]
                eng.reset()
                results = [eng.process(img) for img in images]
                preds = [r.labels for r in results]
                keys = [r.is_keyframe for r in results]
                fresh = [r.common_age == 0 for r in results]
            else:
                key_idx = select_keyframes(images, pol.build(), size, device=device)
                preds = run_bmode(model, images, key_idx, input_size=size, backend=net)
                key_set = set(key_idx)
                keys = [i in key_set for i in range(len(images))]
            a = acc[(mode, pol.text, sched)]
            a.seconds += time.perf_counter() - t0
            a.add_video(labels, preds, keys, dense, fresh)
        done += len(frames)
        if progress:
            print(f"[{vi + 1}/{len(videos)}] {name}: {len(frames)} frames "
                  f"({done}/{total_frames}){' dense' if dense else ''}", file=sys.stderr, flush=True)
    rows = [acc[(m, p.text, sc)].row(m, p.text, cfg.class_names, ignore_index, sc) for m, p, sc in jobs]
    notes = []
    if not dense_names:
        notes.append("no densely labeled video in this split: mVC is not meaningful and is reported as null")
    notes.append("B mode with fixed:1 equals P mode (every frame is a keyframe) and is not repeated")
    notes.append("mIoU excludes classes absent from both ground truth and prediction")
    if ring:
        notes.append(f"{model.model_class} runs the whole network on every frame with the ring of earlier "
                     f"frames' features: one P-mode row (references every {model.default_stride} frames on "
                     "dense clips, every frame on 1 Hz ones); --modes/--policies/--schedule do not apply")
    if any(sc != "sync" for sc in schedules):
        notes.append("with spread:N / lag:L the key/non-key split is by the common feature used: 'key' = "
                     "frames that used their own F_co (forced ones), 'nonkey' = frames that reused an older "
                     "one; kf% counts keyframes (deep passes started)")
    baseline = next((r for r in rows if r["policy"] == "fixed:1"), None)
    return {
        "dataset": dataset,
        "input_size": list(size),
        "device": str(resolve_device(device)),
        "precision": precision,
        "backend": net.describe() if net is not None else "torch (reference ring)",
        "nonkey_blend": nonkey_blend,
        "num_videos": len(videos),
        "num_frames": total_frames,
        "num_labeled_frames": sum(f.label is not None for v in videos.values() for f in v),
        "dense_videos": dense_names,
        "class_names": list(cfg.class_names),
        "results": rows,
        "baseline": None if baseline is None else {k: baseline[k] for k in
                                                   ("mode", "policy", "mIoU", "wIoU", "mVC_8", "mVC_16")},
        "notes": notes,
    }


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def format_table(report: dict[str, Any]) -> str:
    head = (f"{'mode':4} {'policy':18} {'schedule':10} {'mIoU':>6} {'wIoU':>6} {'key':>6} {'nonkey':>6} "
            f"{'kf%':>6} {'mVC8':>6} {'mVC16':>6} {'s/frame':>8}")
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        spf = "-" if r["seconds_per_frame"] is None else f"{r['seconds_per_frame']:.3f}"
        lines.append(f"{r['mode'].upper():4} {r['policy']:18} {r.get('schedule', 'sync'):10} "
                     f"{_pct(r['mIoU'])} {_pct(r['wIoU'])} "
                     f"{_pct(r['mIoU_key'])} {_pct(r['mIoU_nonkey'])} {_pct(r['keyframe_ratio'])} "
                     f"{_pct(r['mVC_8'])} {_pct(r['mVC_16'])} {spf:>8}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dcfm-evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) written by dcfm-train")
    p.add_argument("--dataset", required=True, choices=("camvid", "cityscapes", "vspw", "folder"),
                   help="folder: your own recordings (ROOT/classes.yaml; dcfm-train's dataset.type folder)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="val", help="split name (val, test, ...)")
    p.add_argument("--modes", default="p,b", help="comma list of p (causal) and b (bidirectional)")
    p.add_argument("--policies", default="fixed:1,fixed:2,fixed:5",
                   help="comma list of fixed:K, motion:THR[:MIN[:MAX]] and feature:THR[:MIN[:MAX]]")
    p.add_argument("--schedule", default="sync",
                   help="comma list of keyframe schedules for P mode: sync, spread:N (deep pass in N "
                        "pieces over the following frames), lag:L (cache used L frames late: what "
                        "background amounts to); all exact and deterministic")
    p.add_argument("--blend", default="auto",
                   help="P mode's non-key blend: none | auto (the model's own: none for DCFM, cosine "
                        "for TFC) | cosine[:feature|logits][:key|prev][:strength], e.g. cosine:prev:0.5")
    p.add_argument("--size", help="network input HxW (default: the checkpoint's input_size)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--precision", default="fp32", help="fp32 | fp16 | bf16 (engine precisions)")
    p.add_argument("--backend", default="auto",
                   help="auto | torch | onnxruntime | openvino | tensorrt (inference backend)")
    p.add_argument("--backend-cache-dir", default=None,
                   help="exported graphs / engines (default: $XDG_CACHE_HOME/dcfm_ros or ~/.cache/dcfm_ros)")
    p.add_argument("--videos", help="comma list of video names to restrict to (default: all)")
    p.add_argument("--max-frames", type=int, help="use at most the first N frames of each video")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no per-video progress")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from dcfm_ros.model import load_checkpoint

        modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
        policies = [parse_policy(t) for t in args.policies.split(",") if t.strip()]
        if not modes or not policies:
            raise ValueError("--modes and --policies must name at least one entry each")
        size = parse_size(args.size)
        schedules = parse_schedules(args.schedule)
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        model, meta = load_checkpoint(args.model)
        spec = dataset_spec(args.dataset, args.root)
        if model.config.num_classes != len(spec.class_names):
            raise ValueError(f"checkpoint predicts {model.config.num_classes} classes but {args.dataset} "
                             f"has {len(spec.class_names)}")
        videos = video_frames(args.dataset, args.root, args.split)
        if args.videos:
            wanted = [v.strip() for v in args.videos.split(",") if v.strip()]
            unknown = [v for v in wanted if v not in videos]
            if unknown:
                raise ValueError(f"unknown video(s) {unknown}; available: {sorted(videos)[:20]}")
            videos = {v: videos[v] for v in wanted}
        if args.max_frames is not None:
            if args.max_frames < 1:
                raise ValueError("--max-frames must be >= 1")
            videos = {k: v[: args.max_frames] for k, v in videos.items()}
        report = evaluate(model, videos, spec.lut, args.dataset, modes, policies, input_size=size,
                          device=args.device, precision=args.precision, progress=not args.quiet,
                          schedules=schedules, backend=args.backend,
                          backend_cache_dir=args.backend_cache_dir, nonkey_blend=args.blend)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # CheckpointError is a ValueError
        print(f"dcfm-evaluate: error: {exc}", file=sys.stderr)
        return 2
    report = {"checkpoint": str(args.model), "split": args.split,
              "checkpoint_extra": {k: v for k, v in meta["extra"].items() if k != "train_config"}, **report}
    print(format_table(report))
    for n in report["notes"]:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
