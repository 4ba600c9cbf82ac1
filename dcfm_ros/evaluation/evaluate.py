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

import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from dcfm_ros.data.datasets import is_dense
from dcfm_ros.data.datasets.pairs import FrameSample, read_label, read_rgb
from dcfm_ros.data.metrics import ConfusionMatrix, mean_video_consistency
from dcfm_ros.engine.keyframe import build_policy
from dcfm_ros.engine.specs import PolicySpec, parse_policy

MVC_LENGTHS = (8, 16)
MODES = ("p", "b")


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
        modes, policies, schedules = ["p"], [parse_policy("fixed:1")], ("sync",)  # type: ignore[assignment]
    per_frame = [p.kind == "fixed" and p.interval == 1 for p in policies]
    jobs = [(m, p, sc) for p, pf in zip(policies, per_frame, strict=True) for m in modes
            for sc in (schedules if m == "p" else ("sync",)) if not (m == "b" and pf)]
    acc = {(m, p.text, sc): _Accumulator(cfg.num_classes, ignore_index) for m, p, sc in jobs}
    dense_names = [v for v, frames in videos.items() if is_dense(dataset, frames)]
    # One backend for every engine and B mode: the same weights, graphs and sessions throughout.
    net = None if ring else make_backend(backend, model, device, precision, input_size=size,
                                         cache_dir=backend_cache_dir)
    engines = {} if ring else {(p.text, sc): StreamEngine(model, build_policy(p), input_size=size,
                                                          backend=net, schedule=sc, nonkey_blend=nonkey_blend)
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
                    engines[(pol.text, stride)] = StreamEngine(model, build_policy(pol), device=device,
                                                               precision=precision, input_size=size,
                                                               backend=backend, reference_stride=stride)
                eng = engines[(pol.text, stride if ring else sched)]
                eng.reset()
                results = [eng.process(img) for img in images]
                preds = [r.labels for r in results]
                keys = [r.is_keyframe for r in results]
                fresh = [r.common_age == 0 for r in results]
            else:
                key_idx = select_keyframes(images, build_policy(pol), size, device=device)
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
