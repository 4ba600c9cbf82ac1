"""--export-hard N: the N lowest-confidence frames of the fleet, as a folder dataset ready to label and
then to train on with `dataset.type: folder` (dcfm_ros/data/datasets/folder.py):

    ROOT/classes.yaml                                   the model's names and palette, ignore_index 255
    ROOT/<split>/images/<bag id>_<first frame>/<frame>.png
    ROOT/<split>/labels/                                empty: the labels to be made go here, as
                                                        <sequence>/<frame>.png (any subset of the frames)
    ROOT/hard_frames.json                               which frame came from where, with its confidence

A sequence is one run of consecutive frames of one bag: each hard frame with `context` frames before and
after it (DCFM trains on a labelled frame and its unlabelled neighbours, dataset.neighbour_offsets), runs
that touch merged. Frame files are named by the frame's message index in its bag, so they sort in time.
The folder is built under ROOT.partial and renamed when whole.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import yaml

from dcfm_ros.evaluation.bagio import BagReader, Frame


class ExportError(RuntimeError):
    """The hard-frame folder cannot be written (it exists, a frame is no longer readable)."""


@dataclass(frozen=True)
class HardFrame:
    rank: int  # 0 = the lowest confidence of the fleet
    result: int  # position of its bag's result in the list given
    position: int  # position of the frame in that result's per_frame arrays
    confidence: float


def pick_hard(results: Sequence[dict[str, Any]], n: int) -> list[HardFrame]:
    """The n frames of lowest confidence over all results (ties: bag order, then frame order)."""
    cands = []
    for ri, r in enumerate(results):
        for pos, c in enumerate(r["per_frame"]["confidence"]):
            if c is not None and math.isfinite(c):
                cands.append((c, ri, pos))
    cands.sort()
    return [HardFrame(rank, ri, pos, c) for rank, (c, ri, pos) in enumerate(cands[:n])]


def _runs(positions: set[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for p in sorted(positions):
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def export_hard(results: Sequence[dict[str, Any]], n: int, root: Path, *, class_names: Sequence[str],
                palette: Sequence[Sequence[int]], context: int = 1, split: str = "train",
                overwrite: bool = False) -> dict[str, Any]:
    """Write the folder dataset; returns the manifest (also ROOT/hard_frames.json)."""
    if n < 1:
        raise ExportError(f"--export-hard needs N >= 1, got {n}")
    if context < 0:
        raise ExportError(f"--export-context must be >= 0, got {context}")
    if root.exists() and not overwrite:
        raise ExportError(f"{root} exists already (use --overwrite, or another --export-dir)")
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    hard = pick_hard(results, n)
    by_bag: dict[int, list[HardFrame]] = {}
    for h in hard:
        by_bag.setdefault(h.result, []).append(h)
    images = partial / split / "images"
    (partial / split / "labels").mkdir(parents=True)
    entries: list[dict[str, Any]] = []
    try:
        for ri, frames in sorted(by_bag.items()):
            r = results[ri]
            pf = r["per_frame"]
            count = len(pf["index"])
            wanted = {p for h in frames for p in range(max(0, h.position - context),
                                                       min(count, h.position + context + 1))}
            hard_at = {h.position: h for h in frames}
            files: dict[int, Path] = {}  # message index -> file
            seq_of: dict[int, str] = {}
            for run in _runs(wanted):
                seq = f"{r['bag_id']}_{pf['index'][run[0]]:06d}"
                for p in run:
                    seq_of[pf["index"][p]] = seq
            with BagReader(r["bag"]) as bag:
                for item in bag.frames(r["image_topic"], "image"):
                    if isinstance(item, Frame) and item.index in seq_of:
                        path = images / seq_of[item.index] / f"{item.index:06d}.png"
                        path.parent.mkdir(parents=True, exist_ok=True)
                        if not cv2.imwrite(str(path), cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR)):
                            raise ExportError(f"cannot write {path}")
                        files[item.index] = path
                        if len(files) == len(seq_of):
                            break
            for p in sorted(wanted):
                idx = pf["index"][p]
                if idx not in files:
                    raise ExportError(f"frame {idx} of {r['bag']} is no longer readable")
                h = hard_at.get(p)
                entries.append({"rank": h.rank if h else None, "hard": h is not None, "bag": r["bag"],
                                "bag_id": r["bag_id"], "index": idx, "stamp_ns": pf["stamp_ns"][p],
                                "time_s": (pf["log_ns"][p] - r["start_ns"]) / 1e9,
                                "confidence": pf["confidence"][p], "sequence": seq_of[idx],
                                "file": str(files[idx].relative_to(partial))})
        classes = {"names": list(class_names), "palette": [list(map(int, c)) for c in palette],
                   "ignore_index": 255, "labels": "index"}
        (partial / "classes.yaml").write_text(
            "# written by dcfm-fleet-eval --export-hard: the model's classes. Label frames of "
            f"{split}/images/<sequence>/ as {split}/labels/<sequence>/<frame>.png (value = class index, "
            "255 = unlabelled), then train with dataset.type: folder\n"
            + yaml.safe_dump(classes, sort_keys=False))
        entries.sort(key=lambda e: (e["rank"] is None, e["rank"] or 0, e["bag_id"], e["index"]))
        manifest = {"split": split, "context": context, "hard_frames": len(hard),
                    "frames_written": len(entries), "frames": entries}
        (partial / "hard_frames.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if root.exists():
        shutil.rmtree(root)
    partial.rename(root)
    return manifest
