"""`dcfm-compare`: the keyframe methods side by side on one split, in one run, P mode (causal).

    dcfm-compare --root ../shared/data/camvid --split val \\
        --dcfm dcfm_ros/models/camvid_efficientnet_lite0.safetensors --tfc runs/tfc/model.safetensors \\
        [--reuse CKPT] [--policies fixed:2,fixed:5,motion:0.1,feature:0.75] [--dcfm-label NAME] \\
        [--json OUT] [--markdown OUT]

Rows: the per-frame baseline (DCFM, every frame a keyframe), then per keyframe policy:
feature reuse (a DCFM trained without L_B, `--reuse`, when given), DCFM, DCFM + cosine blend
(nonkey_blend, engine/blend.py), TFC (its own blend); TFC's per-frame row too. Multi-frame peers
(`--peer LABEL=CKPT`: MRCFA, SD-CPC and their ablations) have one row each: every frame a full pass
with its references from the engine's ring (every 3rd frame on the dense val clip, every frame on the
1 Hz test split; evaluate.reference_stride), time under "key ms". Columns: mIoU, wIoU, mIoU
over non-key frames, mVC_8 / mVC_16 (densely labeled videos only: CamVid val; null on the 1 Hz test
split), keyframe ratio, and the median engine time (`FrameResult.timings_ms["total"]`) of keyframes
and of non-key frames. Times are measured in the same run for every row; compare them as ratios.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.data.datasets import dataset_spec, is_dense, video_frames
from dcfm_ros.data.datasets.pairs import read_label, read_rgb
from dcfm_ros.data.metrics import ConfusionMatrix, mean_video_consistency
from dcfm_ros.engine.keyframe import build_policy
from dcfm_ros.engine.specs import PolicySpec, parse_policy
from dcfm_ros.evaluation.evaluate import MVC_LENGTHS, reference_stride


@dataclass(frozen=True)
class Method:
    name: str
    checkpoint: str
    blend: str  # nonkey_blend spec
    trained: bool = True  # False: only its times mean something (accuracy columns print "n/t")


def run_method(model: Any, blend: str, policy: PolicySpec, videos: dict[str, list[np.ndarray]],
               labels: dict[str, list[np.ndarray | None]], dense: set[str], num_classes: int,
               ignore_index: int, device: str,
               strides: dict[str, int | None] | None = None) -> dict[str, Any]:
    """One (model, blend, policy) row over every video; `strides`: per video, a multi-frame model's
    reference spacing (evaluate.reference_stride)."""
    from dcfm_ros.engine import StreamEngine

    strides = strides or {}
    engines: dict[int | None, Any] = {}

    def engine_for(video: str) -> Any:
        stride = strides.get(video)
        if stride not in engines:
            engines[stride] = StreamEngine(model, build_policy(policy), device=device, nonkey_blend=blend,
                                           reference_stride=stride)
        return engines[stride]
    cm_all, cm_nonkey = ConfusionMatrix(num_classes, ignore_index), ConfusionMatrix(num_classes, ignore_index)
    key_ms: list[float] = []
    nonkey_ms: list[float] = []
    frames = keys = 0
    dense_videos = []
    for name, images in videos.items():
        engine = engine_for(name)
        engine.reset()
        preds = []
        for img, gt in zip(images, labels[name], strict=True):
            r = engine.process(img)
            preds.append(r.labels)
            frames += 1
            keys += r.is_keyframe
            (key_ms if r.is_keyframe else nonkey_ms).append(r.timings_ms["total"])
            if gt is not None:
                cm_all.update(r.labels, gt)
                if not r.is_keyframe:
                    cm_nonkey.update(r.labels, gt)
        if name in dense:
            dense_videos.append(([g for g in labels[name] if g is not None],
                                 [p for p, g in zip(preds, labels[name], strict=True) if g is not None]))
    out: dict[str, Any] = {
        "mIoU": cm_all.miou(),
        "wIoU": cm_all.fwiou(),
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "mIoU_nonkey": cm_nonkey.miou() if cm_nonkey.matrix.sum() else None,
        "keyframe_ratio": keys / frames,
        "key_ms_p50": float(np.median(key_ms)) if key_ms else None,
        "nonkey_ms_p50": float(np.median(nonkey_ms)) if nonkey_ms else None,
        "frames": frames,
    }
    for n in MVC_LENGTHS:
        out[f"mVC_{n}"] = mean_video_consistency(dense_videos, n, ignore_index) if dense_videos else None
    return out


def compare(methods: Sequence[Method], policies: Sequence[PolicySpec], root: str, split: str,
            dataset: str = "camvid", device: str = "cpu", progress: bool = True,
            per_frame_rows: bool = True,
            on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every (method, policy) row; `on_row(report so far)` after each (a long run keeps its rows)."""
    from dcfm_ros.model import load_checkpoint

    spec = dataset_spec(dataset, root)
    frames = video_frames(dataset, root, split)
    videos = {v: [read_rgb(f.image) for f in fs] for v, fs in frames.items()}
    labels = {v: [read_label(f.label, spec.lut) if f.label is not None else None for f in fs]
              for v, fs in frames.items()}
    dense = {v for v, fs in frames.items() if is_dense(dataset, fs)}
    models = {m.checkpoint: load_checkpoint(m.checkpoint)[0] for m in methods}
    ignore = 255
    per_frame = parse_policy("fixed:1")
    jobs: list[tuple[str, Method, PolicySpec]] = []
    ring = {m.checkpoint for m in methods if hasattr(models[m.checkpoint], "num_references")}
    for m in methods if per_frame_rows else ():  # each model's per-frame row once (no blend on keyframes)
        if m.checkpoint not in {j[1].checkpoint for j in jobs} and m.checkpoint not in ring:
            jobs.append((f"{m.name.split(' +')[0]}, per frame", m, per_frame))
    jobs += [(m.name, m, per_frame) for m in methods if m.checkpoint in ring]  # no keyframes: one row
    jobs += [(m.name, m, p) for p in policies for m in methods if m.checkpoint not in ring]
    rows = []
    for i, (label, m, p) in enumerate(jobs):
        model = models[m.checkpoint]
        if model.config.num_classes != len(spec.class_names):
            raise ValueError(f"{m.checkpoint} predicts {model.config.num_classes} classes, {dataset} has "
                             f"{len(spec.class_names)}")
        strides = {v: reference_stride(dataset, frames[v], model) for v in videos}
        metrics = run_method(model, m.blend, p, videos, labels, dense, model.config.num_classes, ignore,
                             device, strides)
        row = {"method": label, "checkpoint": m.checkpoint, "blend": m.blend, "policy": p.text,
               "trained": m.trained, **metrics}
        rows.append(row)
        if on_row is not None:
            on_row(_report(dataset, split, device, dense, videos, rows))
        if progress:
            print(f"[{i + 1}/{len(jobs)}] {label} {p.text}: mIoU {100 * row['mIoU']:.2f}", file=sys.stderr,
                  flush=True)
    return _report(dataset, split, device, dense, videos, rows)


def _report(dataset: str, split: str, device: str, dense: set[str], videos: dict[str, list[np.ndarray]],
            rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"dataset": dataset, "split": split, "device": device, "dense_videos": sorted(dense),
            "num_frames": sum(len(v) for v in videos.values()), "results": list(rows)}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| method | keyframes | mIoU | wIoU | non-key mIoU | mVC_8 | mVC_16 | params (M) "
             "| keyframe ratio | key ms | non-key ms |", "| --- " * 11 + "|"]
    for r in report["results"]:
        acc = [_pct(r.get(k)) if r.get("trained", True) else "n/t"
               for k in ("mIoU", "wIoU", "mIoU_nonkey", "mVC_8", "mVC_16")]
        params = "-" if r.get("params_M") is None else f"{r['params_M']:.2f}"
        lines.append(f"| {r['method']} | {r['policy']} | {' | '.join(acc)} | {params} | "
                     f"{r['keyframe_ratio']:.2f} | {_ms(r['key_ms_p50'])} | {_ms(r['nonkey_ms_p50'])} |")
    return "\n".join(lines)


def write_atomic(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, target)


def merge_reports(paths: Sequence[str]) -> dict[str, Any]:
    """Rows of several reports of one split (e.g. run in parallel, one policy each), grouped by policy."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    splits = {r["split"] for r in reports}
    if len(splits) != 1:
        raise ValueError(f"--merge: reports of different splits {sorted(splits)}")
    rows = [row for r in reports for row in r["results"]]
    # One table: the per-frame rows first, then the rows of each keyframe policy together, in the
    # order the policies first appear (sorted() is stable, so each report's row order is kept).
    order: dict[str, int] = {}
    for row in rows:
        order.setdefault(row["policy"], len(order))
    rows = sorted(rows, key=lambda row: (row["policy"] != "fixed:1", order[row["policy"]]))
    return {**reports[0], "results": rows, "merged_from": list(paths)}
