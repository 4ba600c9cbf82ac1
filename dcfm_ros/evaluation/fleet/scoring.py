"""One bag through one StreamEngine, as the node would process it with drop_policy none (every frame, in
record order): the node's per-frame confidence (engine/confidence.py), keyframes, class pixel shares,
and mIoU / mVC against the bag's ground truth with dcfm-bag-eval's own matching and metric code.

The engine is the node's: `settings_from_values` + `build_engine` from dcfm_ros.engine.settings, the
functions DCFMNode calls. It is built once per worker and reset before every bag (a bag starts on a
keyframe, as a freshly started node does), so a bag's numbers do not depend on which worker scored it
or what it scored before.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.data.metrics import ConfusionMatrix
from dcfm_ros.evaluation.bag_eval.analysis import (
    IGNORE_INDEX,
    MVC_LENGTHS,
    StampLookup,
    StreamingVC,
    label_classes_warning,
    topic_stamps,
)
from dcfm_ros.evaluation.bagio import BadMessage, BagReader, Frame
from dcfm_ros.evaluation.fleet.bags import bag_id, choose_topics
from dcfm_ros.evaluation.fleet.run_spec import RESULT_VERSION, FleetSpec

SKIPPED_LISTED = 20  # unusable messages listed by name per bag (all are counted)
# Keys of a result that describe how it was computed here, not what it is: left out when results of
# different executors are compared (they must agree on everything else).
VOLATILE_KEYS = ("timing", "worker")


def low_confidence_stretches(conf: np.ndarray, stamps_s: np.ndarray, warn_below: float,
                             window: int) -> list[dict[str, Any]]:
    """The node's diagnostics rule (node/diagnostics.py): warn while the mean confidence of the last
    `window` frames is below `warn_below` (a full window only; warn_below 0 = off). A stretch is the
    union of the windows that warned: [{start_s, end_s, frames, first, last, mean}]."""
    n = len(conf)
    if warn_below <= 0 or n < window:
        return []
    cs = np.concatenate([[0.0], np.cumsum(conf, dtype=np.float64)])
    means = (cs[window:] - cs[:-window]) / window  # means[j]: frames j .. j + window - 1
    flagged = np.flatnonzero(means < warn_below)
    out: list[dict[str, Any]] = []
    for j in flagged:
        first, last = int(j), int(j) + window - 1
        if out and first <= out[-1]["last"] + 1:
            out[-1]["last"] = last
        else:
            out.append({"first": first, "last": last})
    for s in out:
        a, b = s["first"], s["last"]
        s.update(start_s=float(stamps_s[a]), end_s=float(stamps_s[b]), frames=b - a + 1,
                 mean=float(conf[a:b + 1].mean()))
    return out


def _quantiles(conf: np.ndarray, low_pct: float) -> dict[str, float | None]:
    if conf.size == 0:
        return {"mean": None, "low": None, "min": None, "max": None}
    return {"mean": float(conf.mean()), "low": float(np.percentile(conf, low_pct)),
            "min": float(conf.min()), "max": float(conf.max())}


class BagScorer:
    """A worker's engine: build once, `score(path)` per bag. torch threads are set before the build
    (the graph backends take their thread count from torch)."""

    def __init__(self, spec: FleetSpec) -> None:
        import torch

        from dcfm_ros.engine.settings import build_engine, settings_from_values

        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.settings = settings_from_values(spec.values)
        self.engine = build_engine(self.settings)
        self.threads = torch.get_num_threads()

    def close(self) -> None:
        self.engine.close()

    def score(self, path: Path) -> dict[str, Any]:
        """The result of one bag; BagError / BagEvalError when the bag cannot be read at all (a damaged
        message is counted, a damaged storage file midway raises: the bag's numbers would be partial)."""
        spec, engine = self.spec, self.engine
        names = spec.class_names
        nc = len(names)
        t0 = time.perf_counter()
        warnings: list[str] = []
        with BagReader(path) as bag:
            topics = choose_topics(bag, spec.image_topic, spec.gt_topic)
            mismatch = label_classes_warning(bag.custom_data, topics.gt, names)
            if mismatch is not None:
                warnings.append(mismatch)
            start_ns = bag.start_ns
            engine.reset()
            gts = (StampLookup(bag.frames(topics.gt, "labels"), topic_stamps(bag, topics.gt))
                   if topics.gt else None)
            cm = ConfusionMatrix(nc, ignore_index=IGNORE_INDEX)
            vc = StreamingVC(MVC_LENGTHS)
            pixels = np.zeros(nc, np.int64)
            index: list[int] = []
            stamps: list[int] = []
            logs: list[int] = []
            conf: list[float] = []
            keys: list[bool] = []
            skipped: list[BadMessage] = []
            gt_bad: list[BadMessage] = []
            failed: list[str] = []
            engine_ms = 0.0
            metric_frames = 0
            # JPEG frames decoded as the node decodes them (reduced_decode), so the labels are the node's
            reduce_to = engine.input_size if self.settings.reduced_decode else None
            for item in bag.frames(topics.image.name, "image", reduce_to=reduce_to):
                if isinstance(item, BadMessage):
                    skipped.append(item)
                    continue
                if spec.max_frames is not None and len(index) + len(failed) >= spec.max_frames:
                    break
                try:
                    result = engine.process(item.image, item.camera)
                except Exception as exc:  # as the node: this frame only, the next one is a keyframe
                    engine.reset()
                    failed.append(f"frame {item.index}: {type(exc).__name__}: {exc}")
                    vc.end()
                    continue
                labels = result.labels
                engine_ms += result.timings_ms.get("total", 0.0)
                index.append(item.index)
                stamps.append(item.stamp_ns)
                logs.append(item.log_ns)
                conf.append(result.confidence.mean if result.confidence is not None else float("nan"))
                keys.append(bool(result.is_keyframe))
                pixels += np.bincount(labels.ravel(), minlength=nc)[:nc]
                g = gts.get(item.stamp_ns) if gts is not None else None
                gt = None
                if isinstance(g, BadMessage):
                    gt_bad.append(g)
                elif isinstance(g, Frame):
                    if g.image.shape != labels.shape:
                        gt_bad.append(BadMessage(g.topic, g.index, g.log_ns, f"ground truth is "
                                                 f"{g.image.shape[::-1]}, the image {labels.shape[::-1]}",
                                                 g.stamp_ns))
                    else:
                        gt = g.image
                if gt is not None:
                    cm.update(labels, gt)
                    vc.add(gt, labels)
                    metric_frames += 1
                else:
                    vc.end()  # windows never span a frame without GT
        wall = time.perf_counter() - t0
        c = np.asarray(conf, np.float64)
        rel_s = (np.asarray(logs, np.int64) - start_ns) / 1e9
        total_px = int(pixels.sum())
        metrics = None
        if topics.gt is not None:
            summary = cm.summary(names)
            metrics = {"frames": metric_frames, "ignore_index": IGNORE_INDEX, "miou": summary["mIoU"],
                       "wiou": summary["wIoU"], "pixel_acc": summary["pixel_acc"],
                       "per_class_iou": summary["per_class_IoU"], "mvc8": vc.result(8),
                       "mvc16": vc.result(16), "mvc_runs": vc.run_count,
                       "confusion": cm.matrix.tolist(), "extra_wrong": cm.extra_wrong.tolist()}
            if metric_frames == 0:
                warnings.append(f"no frame has ground truth on {topics.gt}: metrics are empty")
        s = self.settings
        bad = [b.to_dict() for b in (skipped + gt_bad)[:SKIPPED_LISTED]]
        return {
            "result_version": RESULT_VERSION,
            "key": spec.key,
            "status": "ok",
            "bag": str(path),
            "bag_id": bag_id(path),
            "image_topic": topics.image.name,
            "gt_topic": topics.gt,
            "gt_source": topics.gt_source,
            "start_ns": start_ns,
            "frames": len(index),
            "frames_failed": len(failed),
            "failed": failed[:SKIPPED_LISTED],
            "frames_skipped": len(skipped),
            "gt_skipped": len(gt_bad),
            "skipped": bad,
            "span_s": float(rel_s[-1] - rel_s[0]) if len(index) > 1 else 0.0,
            "keyframe_ratio": (sum(keys) / len(keys)) if keys else None,
            "confidence": _quantiles(c, spec.low_percentile),
            "low_percentile": spec.low_percentile,
            "class_shares": {n: (int(p) / total_px if total_px else None) for n, p in zip(names, pixels,
                                                                                     strict=True)},
            "class_pixels": pixels.tolist(),
            "metrics": metrics,
            "low_confidence": {"warn_below": s.confidence_warn_below, "window": s.confidence_window,
                               "stretches": low_confidence_stretches(c, rel_s, s.confidence_warn_below,
                                                                     s.confidence_window)},
            "per_frame": {"index": index, "stamp_ns": stamps, "log_ns": logs, "confidence": conf,
                          "keyframe": keys},
            "warnings": warnings,
            "timing": {"wall_s": wall, "fps": len(index) / wall if wall > 0 else None,
                       "engine_ms_mean": engine_ms / len(index) if index else None},
            "worker": {"pid": os.getpid(), "host": platform.node(), "threads": self.threads,
                       "backend": engine.backend.describe()},
        }


def error_result(path: Path, spec: FleetSpec, exc: BaseException) -> dict[str, Any]:
    """A bag that could not be scored: named with the reason; never a 'done' result (a rerun retries)."""
    return {"result_version": RESULT_VERSION, "key": spec.key, "status": "error", "bag": str(path),
            "bag_id": bag_id(path), "error": f"{type(exc).__name__}: {exc}"}


def comparable(result: dict[str, Any], drop: Sequence[str] = VOLATILE_KEYS) -> dict[str, Any]:
    """A result without how-it-ran keys (timing, worker): what serial, processes and Ray must agree on."""
    return {k: v for k, v in result.items() if k not in drop}
