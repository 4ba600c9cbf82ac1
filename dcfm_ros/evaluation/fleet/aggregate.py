"""The fleet report: OUT/fleet_report.json, fleet_report.md and plots, from the per-bag results of a run.

fleet_report.json:
  report_version   1
  key              the run key (model bytes + scoring parameters)
  bags             {given, scored, reused, failed}
  frames           frames scored over all bags
  drives           [{bag, bag_id, frames, keyframe_ratio, confidence {mean, low, min, max}, low_stretches,
                   low_seconds, miou, mvc8, mvc16}] ranked by mean confidence, lowest (most out of
                   domain) first
  failed           [{bag, error}]: bags that could not be scored (unreadable, damaged, no camera topic)
  class_shares     {class: share of all predicted pixels over the fleet}
  accuracy         null without ground truth anywhere, else {bags, frames, miou, wiou, pixel_acc,
                   per_class_iou} from the summed confusion matrices of the bags with ground truth
  model, node_params, executor, machine, files
Each file is written under a temporary name and renamed, fleet_report.json last.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.data.metrics import ConfusionMatrix
from dcfm_ros.evaluation.bag_eval.analysis import IGNORE_INDEX
from dcfm_ros.evaluation.fleet.run_spec import FleetSpec
from dcfm_ros.evaluation.report import atomic_path, machine_info

FILES = {"report_md": "fleet_report.md", "confidence_plot": "drives_confidence.png",
         "class_plot": "class_shares.png", "accuracy_plot": "drives_miou.png"}


def _drive(r: dict[str, Any]) -> dict[str, Any]:
    m = r.get("metrics") or {}
    stretches = r["low_confidence"]["stretches"]
    return {"bag": r["bag"], "bag_id": r["bag_id"], "frames": r["frames"],
            "keyframe_ratio": r["keyframe_ratio"],
            "confidence": r["confidence"], "low_stretches": len(stretches),
            "low_seconds": float(sum(s["end_s"] - s["start_s"] for s in stretches)),
            "gt_topic": r["gt_topic"], "miou": m.get("miou"), "mvc8": m.get("mvc8"), "mvc16": m.get("mvc16"),
            "frames_skipped": r["frames_skipped"], "frames_failed": r["frames_failed"]}


def _rank_key(d: dict[str, Any]) -> tuple:
    mean = d["confidence"]["mean"]
    return (mean is None, mean if mean is not None else 0.0, d["bag"])


def build_report(results: Sequence[dict[str, Any]], spec: FleetSpec, *, reused: int,
                 executor: dict[str, Any]) -> dict[str, Any]:
    ok = [r for r in results if r.get("status") == "ok"]
    failed = [{"bag": r["bag"], "error": r.get("error")} for r in results if r.get("status") != "ok"]
    names = spec.class_names
    pixels = np.zeros(len(names), np.int64)
    cm = ConfusionMatrix(len(names), ignore_index=IGNORE_INDEX)
    with_gt = 0
    gt_frames = 0
    for r in ok:
        pixels += np.asarray(r["class_pixels"], np.int64)
        m = r.get("metrics")
        if m and m["frames"]:
            cm.matrix += np.asarray(m["confusion"], np.int64)
            cm.extra_wrong += np.asarray(m["extra_wrong"], np.int64)
            with_gt += 1
            gt_frames += m["frames"]
    total = int(pixels.sum())
    accuracy = None
    if with_gt:
        s = cm.summary(names)
        accuracy = {"bags": with_gt, "frames": gt_frames, "miou": s["mIoU"], "wiou": s["wIoU"],
                    "pixel_acc": s["pixel_acc"], "per_class_iou": s["per_class_IoU"]}
    return {
        "report_version": 1,
        "key": spec.key,
        "bags": {"given": len(results), "scored": len(ok) - reused, "reused": reused, "failed": len(failed)},
        "frames": int(sum(r["frames"] for r in ok)),
        "drives": sorted((_drive(r) for r in ok), key=_rank_key),
        "failed": failed,
        "class_shares": {n: (int(p) / total if total else None) for n, p in zip(names, pixels, strict=True)},
        "accuracy": accuracy,
        "low_percentile": spec.low_percentile,
        "model": spec.model,
        "node_params": spec.values,
        "executor": executor,
        "machine": machine_info(),
        "files": dict(FILES),
    }


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def render_markdown(rep: dict[str, Any]) -> str:
    b = rep["bags"]
    pct = rep["low_percentile"]
    lines = ["# Fleet evaluation", "",
             f"{b['given']} bags: {b['scored']} scored now, {b['reused']} reused from an earlier run with "
             f"the same model and parameters, {b['failed']} could not be read; {rep['frames']} frames. Model "
             f"`{rep['model']['path']}` ({rep['model']['backbone']}), run key `{rep['key'][:16]}`.", "",
             "## Drives by confidence (lowest first: the most out-of-domain drives)", "",
             f"| # | bag | frames | mean conf. | p{pct:g} conf. | low stretches (s) | keyframes | mIoU "
             "| mVC_8 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for i, d in enumerate(rep["drives"], 1):
        c = d["confidence"]
        lines.append(f"| {i} | `{d['bag']}` | {d['frames']} | {_num(c['mean'])} | {_num(c['low'])} | "
                     f"{d['low_stretches']} ({d['low_seconds']:.1f}) | {_num(d['keyframe_ratio'], 2)} | "
                     f"{_num(d['miou'], 4)} | {_num(d['mvc8'], 4)} |")
    if rep["failed"]:
        lines += ["", "## Bags that could not be scored", ""]
        lines += [f"- `{f['bag']}`: {str(f['error']).replace(chr(10), ' ')}" for f in rep["failed"]]
    lines += ["", "## Class shares over the fleet (predicted pixels)", "", "| class | share |",
              "| --- | --- |"]
    lines += [f"| {n} | {_num(s, 4)} |" for n, s in rep["class_shares"].items()]
    acc = rep["accuracy"]
    lines += ["", "## Accuracy where labels exist", ""]
    if acc is None:
        lines.append("No bag has a ground-truth topic (--gt-topic, or dcfm-make-bag's label topic).")
    else:
        lines += [f"{acc['bags']} bags, {acc['frames']} labelled frames: mIoU {_num(acc['miou'], 4)}, wIoU "
                  f"{_num(acc['wiou'], 4)}, pixel accuracy {_num(acc['pixel_acc'], 4)} (summed confusion "
                  "matrices).", "", "| class | IoU |", "| --- | --- |"]
        lines += [f"| {n} | {_num(v, 4)} |" for n, v in acc["per_class_iou"].items()]
    files = rep["files"]
    lines += ["", "## Plots", ""] + [f"![{k}]({files[k]})" for k in ("confidence_plot", "class_plot",
                                                                      "accuracy_plot") if files.get(k)]
    ex = rep["executor"]
    lines += ["", f"Executor: {ex.get('kind')} ({json.dumps({k: v for k, v in ex.items() if k != 'kind'})}); "
              f"machine: {rep['machine']['cpu']}, {rep['machine']['cores']} cores.", ""]
    return "\n".join(lines)


def _plots(rep: dict[str, Any], out_dir: Path) -> dict[str, str | None]:
    from dcfm_ros.evaluation.report import _pyplot

    plt = _pyplot()
    files: dict[str, str | None] = {k: None for k in FILES if k != "report_md"}
    drives = rep["drives"]
    pct = rep["low_percentile"]

    def save(fig: Any, key: str) -> None:
        with atomic_path(out_dir / FILES[key]) as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        files[key] = FILES[key]

    if drives:
        labels = [Path(d["bag"]).name for d in drives]
        y = np.arange(len(drives))
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(drives)), dpi=100)
        ax.barh(y, [d["confidence"]["mean"] or 0 for d in drives], color="#4477aa", label="mean")
        ax.scatter([d["confidence"]["low"] or 0 for d in drives], y, color="#cc3311", zorder=3,
                   label=f"p{pct:g}")
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("per-frame confidence (mean top softmax probability)")
        ax.set_title("drives by confidence, lowest first")
        ax.legend(loc="lower left", bbox_to_anchor=(1.01, 0.0))  # outside: bars span the width
        fig.tight_layout()
        save(fig, "confidence_plot")
    shares = {n: s for n, s in rep["class_shares"].items() if s is not None}
    if shares:
        fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
        ax.bar(list(shares), list(shares.values()), color="#228833")
        ax.set_ylabel("share of predicted pixels")
        ax.set_title("class shares over the fleet")
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
        fig.tight_layout()
        save(fig, "class_plot")
    scored = [d for d in drives if d["miou"] is not None]
    if scored:
        fig, ax = plt.subplots(figsize=(8, 1.5 + 0.3 * len(scored)), dpi=100)
        ax.barh(np.arange(len(scored)), [d["miou"] for d in scored], color="#ee7733")
        ax.set_yticks(np.arange(len(scored)), [Path(d["bag"]).name for d in scored], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("mIoU (drives with ground truth, in confidence order)")
        fig.tight_layout()
        save(fig, "accuracy_plot")
    return files


def write_report(out_dir: Path, rep: dict[str, Any]) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fleet_report.json").unlink(missing_ok=True)  # an old report never passes for this one
    rep["files"] = {"report_md": FILES["report_md"], **_plots(rep, out_dir)}
    with atomic_path(out_dir / FILES["report_md"]) as tmp:
        tmp.write_text(render_markdown(rep))
    with atomic_path(out_dir / "fleet_report.json") as tmp:
        tmp.write_text(json.dumps(rep, indent=2) + "\n")
    return rep
