"""The bag evaluation report: report.json, report.md, PNG plots, an overlay video and a contact sheet.

No ROS and no bag reading here: dcfm-bag-eval collects per-frame records and metrics and calls
`write_report`; tests call the same functions with synthetic records.

report.json (all times in milliseconds unless the key says otherwise; null where not measurable):
  report_version       1
  complete             false when the run was cut short (SIGINT/SIGTERM): then the numbers cover only
                       what had been played and analysed
  incomplete_reason    null, or what was cut, e.g. "stopped by SIGINT after 37 frames sent (of 101)"
  input                {bag, image_topic, gt_topic, image_messages}: what was played
  slice                {start_s, max_frames, first_s, last_s}: the part of the bag played (--start
                       seconds after the bag's start, at most --max-frames frames; first_s / last_s:
                       record times of the first and last frame sent, in seconds after the bag's start)
  output               {bag, topics}: where the node's outputs were recorded
  mode                 {max: bool, rate: float | null}: --max (back-pressure) or the --rate factor
  transport            the Fast DDS builtin transport of the run (FASTDDS_BUILTIN_TRANSPORTS)
  frames_in            frames published to the node (decodable image messages)
  frames_out           frames whose labels came back (matched by header stamp)
  frames_dropped       frames_in - frames_out (dropped by the node or timed out)
  frames_skipped       image messages that could not be used (corrupt, undecodable, duplicate
                       stamp); never sent, listed in `skipped`
  skipped              [{topic, index, log_ns, stamp_ns, reason}] for image AND ground-truth messages
  gt_skipped           ground-truth messages that could not be used (also listed in `skipped`)
  wall_time_s          first frame sent -> last output received
  throughput_fps       frames_out / wall_time_s
  latency_ms           end-to-end (frame published -> its labels received, wall clock, measured by
                       dcfm-bag-eval): {all, key, nonkey: {p50, p95, p99, mean, max, n}}
  engine_latency_ms    the node's engine time per frame (SegmentationInfo), same layout
  stage_ms             mean per-stage engine times {enc_lo, enc_hi (keyframes only), ffm, head}
  keyframe_ratio       keyframes / frames with a SegmentationInfo
  node_counters        the node's last running counters {frames_received, frames_processed,
                       frames_dropped, bad_inputs}
  metrics              null without ground truth, else {frames, ignore_index, miou, wiou, pixel_acc,
                       per_class_iou {class name: IoU or null}, mvc8, mvc16, mvc_runs} computed with
                       dcfm_ros.data.metrics over the frames that have both labels and GT
  node_params          the parameters the node ran with (params file + overrides)
  model                {path, backbone, num_classes, input_size, class_names}
  classes              [{id, name, color: [r, g, b]}]: the legend of the colours in the pictures
  video_codec          h264 | vp9 | mpeg4 (see dcfm_ros.evaluation.video) or null without a video
  contact_sheet_columns  what the contact sheet's columns show, e.g. "camera | overlay | ground truth"
  machine              {cpu, cores, python, torch, platform}
  files                names (relative to the report folder) of report_md, output_bag, frames_csv,
                       latency_plot, latency_hist, class_iou_plot, legend, video, contact_sheet
                       (null when not made)
Every file is written under a temporary name and renamed, report.json last: a report.json that exists
belongs to a report whose files are whole.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

REPORT_VERSION = 1
FILES = {
    "report_md": "report.md",
    "frames_csv": "frames.csv",
    "latency_plot": "latency.png",
    "latency_hist": "latency_hist.png",
    "class_iou_plot": "class_iou.png",
    "legend": "legend.png",
    "video": "overlay.mp4",  # .webm when the VP9 fallback wrote it (dcfm_ros.evaluation.video)
    "contact_sheet": "contact_sheet.png",
}
STATUSES = ("ok", "dropped")


@dataclass
class FrameRecord:
    """What is known about one published frame. Times in ms; None where not available."""

    index: int  # position among the frames published, 0-based
    stamp_ns: int  # header stamp (the key that matches outputs to inputs)
    log_ns: int  # record time in the input bag
    status: str = "dropped"  # "ok" (labels came back) | "dropped"
    sent_s: float | None = None  # wall seconds since the first frame was sent
    latency_ms: float | None = None  # end-to-end, publish -> labels received (wall clock)
    engine_ms: float | None = None
    is_keyframe: bool | None = None
    frames_since_keyframe: int | None = None
    motion_score: float | None = None
    enc_lo_ms: float | None = None
    enc_hi_ms: float | None = None
    ffm_ms: float | None = None
    head_ms: float | None = None
    has_gt: bool = False
    common_age: int | None = None  # frames since the keyframe whose common feature this frame used
    deep_pass_in_flight: bool | None = None  # a keyframe's deep pass was running after this frame


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name next to `path` (same suffix, so writers that go by it still work), renamed to
    `path` when the block succeeds and removed when it fails."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# frames.csv


def write_frames_csv(records: Sequence[FrameRecord], path: Path) -> None:
    names = [f.name for f in fields(FrameRecord)]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})


def read_frames_csv(path: Path) -> list[FrameRecord]:
    types = {f.name: f.type for f in fields(FrameRecord)}
    out = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            kw: dict[str, Any] = {}
            for k, v in row.items():
                t = str(types[k])
                if v == "":
                    kw[k] = None
                elif t.startswith("int"):
                    kw[k] = int(v)
                elif t.startswith("bool"):
                    kw[k] = v == "True"
                elif t.startswith("float"):
                    kw[k] = float(v)
                else:
                    kw[k] = v
            out.append(FrameRecord(**kw))
    return out


# ---------------------------------------------------------------------------------------------------------
# Numbers


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def stats(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """{p50, p95, p99, mean, max, n} of the finite values (None entries when there are none)."""
    v = np.asarray(_finite(values), dtype=np.float64)
    if v.size == 0:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "n": 0}
    p50, p95, p99 = np.percentile(v, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(v.mean()),
            "max": float(v.max()), "n": int(v.size)}


def split_stats(records: Sequence[FrameRecord], attr: str) -> dict[str, dict[str, float | int | None]]:
    """Latency statistics of `attr` over all returned frames, keyframes and non-key frames."""
    ok = [r for r in records if r.status == "ok"]
    return {
        "all": stats(getattr(r, attr) for r in ok),
        "key": stats(getattr(r, attr) for r in ok if r.is_keyframe is True),
        "nonkey": stats(getattr(r, attr) for r in ok if r.is_keyframe is False),
    }


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version: str | None = importlib_metadata.version("torch")
    except importlib_metadata.PackageNotFoundError:
        torch_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0], "torch": torch_version,
            "platform": platform.platform()}


def summarize(records: Sequence[FrameRecord], *, skipped: Sequence[dict[str, Any]] = (),
              image_skipped: int = 0, gt_skipped: int = 0,
              node_counters: dict[str, int] | None = None) -> dict[str, Any]:
    """The frame/latency part of report.json from the per-frame records."""
    frames_in = len(records)
    ok = [r for r in records if r.status == "ok"]
    ends = [r.sent_s + r.latency_ms / 1000.0 for r in ok if r.sent_s is not None and r.latency_ms is not None]
    starts = [r.sent_s for r in records if r.sent_s is not None]
    wall = (max(ends) - min(starts)) if ends and starts else None
    with_info = [r for r in ok if r.is_keyframe is not None]

    def mean(attr: str, keys_only: bool = False) -> float | None:
        vals = _finite(getattr(r, attr) for r in with_info if (r.is_keyframe or not keys_only))
        return float(np.mean(vals)) if vals else None

    return {
        "frames_in": frames_in,
        "frames_out": len(ok),
        "frames_dropped": frames_in - len(ok),
        "frames_skipped": int(image_skipped),
        "gt_skipped": int(gt_skipped),
        "skipped": list(skipped),
        "wall_time_s": wall,
        "throughput_fps": (len(ok) / wall) if wall and wall > 0 else None,
        "latency_ms": split_stats(records, "latency_ms"),
        "engine_latency_ms": split_stats(records, "engine_ms"),
        "stage_ms": {"enc_lo": mean("enc_lo_ms"), "enc_hi": mean("enc_hi_ms", keys_only=True),
                     "ffm": mean("ffm_ms"), "head": mean("head_ms")},
        "keyframe_ratio": (sum(1 for r in with_info if r.is_keyframe) / len(with_info)) if with_info
        else None,
        # keyframe schedules: how old the common feature was, {age in frames: frames}
        "common_age": {str(a): n for a, n in sorted(Counter(
            r.common_age for r in with_info if r.common_age is not None).items())},
        "node_counters": node_counters,
    }


# ---------------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg backend: no display needed)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_latency(records: Sequence[FrameRecord], path: Path) -> None:
    """Per-frame end-to-end and engine latency over the frame index; keyframes marked, drops shown."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4), dpi=100)
    ok = [r for r in records if r.status == "ok"]
    idx = np.array([r.index for r in ok])
    if ok:
        e2e = np.array([np.nan if r.latency_ms is None else r.latency_ms for r in ok])
        eng = np.array([np.nan if r.engine_ms is None else r.engine_ms for r in ok])
        ax.plot(idx, eng, "-", color="tab:green", lw=1, label="engine (node)")
        ax.plot(idx, e2e, "-", color="tab:blue", lw=1, label="end-to-end (publish -> labels)")
        key = np.array([r.is_keyframe is True for r in ok])
        if key.any():
            ax.scatter(idx[key], e2e[key], marker="o", s=18, color="tab:red", zorder=3, label="keyframe")
        # spread/background schedules: the frames during which a keyframe's deep pass ran
        deep = np.array([r.deep_pass_in_flight is True for r in ok])
        if deep.any():
            ax.scatter(idx[deep], np.zeros(int(deep.sum())), marker="|", s=60, color="tab:orange", zorder=3,
                       label="deep pass in flight")
    drops = [r.index for r in records if r.status != "ok"]
    if drops:
        ax.scatter(drops, np.zeros(len(drops)), marker="x", color="black", zorder=3,
                   label=f"dropped ({len(drops)})")
    ax.set_xlabel("frame")
    ax.set_ylabel("latency [ms]")
    ax.set_title("Per-frame latency")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_latency_hist(records: Sequence[FrameRecord], path: Path) -> None:
    """Histogram of end-to-end latency, keyframes and non-key frames stacked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ok = [r for r in records if r.status == "ok" and r.latency_ms is not None]
    key = _finite(r.latency_ms for r in ok if r.is_keyframe is True)
    non = _finite(r.latency_ms for r in ok if r.is_keyframe is not True)
    data = [d for d in (non, key) if d]
    if data:
        allv = non + key
        bins = np.linspace(min(allv), max(allv) + 1e-6, 31)
        labels = [lbl for d, lbl in ((non, "non-key frame"), (key, "keyframe")) if d]
        colors = [c for d, c in ((non, "tab:blue"), (key, "tab:red")) if d]
        ax.hist(data, bins=bins, stacked=True, label=labels, color=colors)
        ax.legend(fontsize=8)
    ax.set_xlabel("end-to-end latency [ms]")
    ax.set_ylabel("frames")
    ax.set_title("Latency histogram")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def plot_class_iou(per_class: dict[str, float | None], miou: float | None, path: Path) -> None:
    """Horizontal bars of per-class IoU (classes without IoU are shown as 'n/a')."""
    plt = _pyplot()
    names = list(per_class)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1.5), dpi=100)
    vals = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
    y = np.arange(len(names))
    ax.barh(y, vals, color="tab:blue")
    for yi, n in zip(y, names, strict=True):
        v = per_class[n]
        ax.text((v or 0.0) + 0.01, yi, "n/a" if v is None else f"{v:.3f}", va="center", fontsize=7)
    if miou is not None:
        ax.axvline(miou, color="tab:red", ls="--", lw=1, label=f"mIoU {miou:.3f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    ax.set_title("Per-class IoU")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# report.json / report.md


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: the same numbers as report.json as readable tables, with the PNGs embedded."""
    files = report.get("files", {})
    inp = report.get("input", {})
    mode = report.get("mode", {})
    model = report.get("model") or {}
    machine = report.get("machine") or {}
    playback = ("--max (back-pressure: the next frame is sent when the last one came back)" if mode.get("max")
                else f"--rate {mode.get('rate')} (recorded timing scaled)")
    lines = ["# DCFM bag evaluation", ""]
    if report.get("complete") is False:
        lines += [f"**Incomplete run: {report.get('incomplete_reason') or 'cut short'}.** The numbers below "
                  "cover only what was played and analysed.", ""]
    lines += [f"- input bag: `{inp.get('bag')}` (image topic `{inp.get('image_topic')}`, "
              f"ground truth `{inp.get('gt_topic') or 'none'}`)",
              f"- frames played: {_slice_text(report.get('slice'))}",
              f"- playback: {playback}; Fast DDS transport {report.get('transport') or 'n/a'}",
              f"- output bag: `{report.get('output', {}).get('bag')}`",
              f"- model: `{model.get('path')}` ({model.get('backbone')}, input {model.get('input_size')})",
              f"- machine: {machine.get('cpu')} ({machine.get('cores')} cores), "
              f"torch {machine.get('torch')}", ""]
    lines += ["## Frames", "",
              "| frames in | out | dropped | skipped (corrupt) | GT skipped | throughput [fps] "
              "| keyframe ratio |",
              "|---|---|---|---|---|---|---|",
              f"| {report['frames_in']} | {report['frames_out']} | {report['frames_dropped']} | "
              f"{report['frames_skipped']} | {report.get('gt_skipped', 0)} | "
              f"{_fmt(report['throughput_fps'], 2)} | {_fmt(report['keyframe_ratio'], 3)} |", ""]
    if report.get("common_age"):
        lines += ["common feature age [frames: count]: " + ", ".join(
            f"{a}: {n}" for a, n in report["common_age"].items()), ""]
    lines += ["## Latency [ms]", "", "| | frames | p50 | p95 | p99 | mean |", "|---|---|---|---|---|---|"]
    for title, key in (("end-to-end", "latency_ms"), ("engine", "engine_latency_ms")):
        for part in ("all", "key", "nonkey"):
            s = report[key][part]
            name = {"all": "all frames", "key": "keyframes", "nonkey": "non-key frames"}[part]
            lines.append(f"| {title}, {name} | {s['n']} | {_fmt(s['p50'])} | {_fmt(s['p95'])} | "
                         f"{_fmt(s['p99'])} | {_fmt(s['mean'])} |")
    st = report.get("stage_ms", {})
    lines += ["", f"Mean engine stages [ms]: enc_lo {_fmt(st.get('enc_lo'))}, enc_hi (keyframes) "
              f"{_fmt(st.get('enc_hi'))}, ffm {_fmt(st.get('ffm'))}, head {_fmt(st.get('head'))}.", ""]
    if files.get("latency_plot"):
        lines += [f"![per-frame latency]({files['latency_plot']})", ""]
    if files.get("latency_hist"):
        lines += [f"![latency histogram]({files['latency_hist']})", ""]
    m = report.get("metrics")
    lines += ["## Accuracy", ""]
    if m is None:
        lines += ["No ground-truth topic: no accuracy metrics.", ""]
    else:
        lines += [f"Over {m['frames']} frames with labels and ground truth "
                  f"(ignore index {m['ignore_index']}).",
                  "", "| mIoU | wIoU | pixel acc | mVC_8 | mVC_16 |", "|---|---|---|---|---|",
                  f"| {_fmt(m['miou'], 4)} | {_fmt(m['wiou'], 4)} | {_fmt(m['pixel_acc'], 4)} | "
                  f"{_fmt(m['mvc8'], 4)} | {_fmt(m['mvc16'], 4)} |", "",
                  "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {_fmt(v, 4)} |" for name, v in m["per_class_iou"].items()]
        lines.append("")
        if files.get("class_iou_plot"):
            lines += [f"![per-class IoU]({files['class_iou_plot']})", ""]
    if report.get("classes"):
        lines += ["## Classes", ""]
        if files.get("legend"):
            lines += [f"![class legend]({files['legend']})", ""]
        lines += ["| id | class | colour (RGB) |", "|---|---|---|"]
        lines += [f"| {c['id']} | {c['name']} | `#{''.join(f'{v:02x}' for v in c['color'])}` "
                  f"({', '.join(map(str, c['color']))}) |" for c in report["classes"]]
        lines.append("")
    if files.get("contact_sheet") or files.get("video"):
        lines += ["## Pictures", ""]
        if files.get("contact_sheet"):
            columns = report.get("contact_sheet_columns") or "contact sheet"
            lines += [f"Contact sheet: {columns}, class legend below.", "",
                      f"![{columns}]({files['contact_sheet']})", ""]
        if files.get("video"):
            codec = report.get("video_codec")
            note = {"h264": "H.264", "vp9": "VP9 (WebM)",
                    "mpeg4": "MPEG-4 Part 2: browsers do not play it; VLC or mpv do"}.get(str(codec), codec)
            lines += [f"Overlay video ({note}; legend burnt in): [{files['video']}]({files['video']})", ""]
    if report.get("skipped"):
        lines += ["## Skipped messages", "", "| topic | index | stamp [ns] | reason |", "|---|---|---|---|"]
        for s in report["skipped"][:200]:
            reason = str(s.get("reason", "")).replace("|", "/")
            lines.append(f"| {s.get('topic')} | {s.get('index')} | {s.get('stamp_ns')} | {reason} |")
        if len(report["skipped"]) > 200:
            lines.append(f"| ... | | | {len(report['skipped']) - 200} more in report.json |")
        lines.append("")
    if report.get("node_params"):
        params = json.dumps(report["node_params"], indent=2, sort_keys=True)
        lines += ["## Node parameters", "", "```json", params, "```", ""]
    return "\n".join(lines)


def _slice_text(sl: dict[str, Any] | None) -> str:
    if not sl:
        return "the whole bag"
    parts = []
    if sl.get("start_s"):
        parts.append(f"from {sl['start_s']:g} s after the bag's start")
    if sl.get("max_frames") is not None:
        parts.append(f"at most {sl['max_frames']} frames")
    what = ", ".join(parts) if parts else "the whole bag"
    if sl.get("first_s") is not None and sl.get("last_s") is not None:
        what += f" (sent: {sl['first_s']:.3f} s to {sl['last_s']:.3f} s after the bag's start)"
    return what


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_report(out_dir: Path, report: dict[str, Any], records: Sequence[FrameRecord]) -> dict[str, Any]:
    """Write frames.csv, the plots, the legend, report.md and (last) report.json into `out_dir`; returns
    the final report.

    `report` holds everything but the plots (see the module docstring); `files` entries already set
    (video, contact sheet, output bag) are kept.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = dict(report.get("files") or {})
    write_frames_csv(records, out_dir / FILES["frames_csv"])
    files["frames_csv"] = FILES["frames_csv"]
    plot_latency(records, out_dir / FILES["latency_plot"])
    files["latency_plot"] = FILES["latency_plot"]
    plot_latency_hist(records, out_dir / FILES["latency_hist"])
    files["latency_hist"] = FILES["latency_hist"]
    m = report.get("metrics")
    if m is not None:
        plot_class_iou(m["per_class_iou"], m["miou"], out_dir / FILES["class_iou_plot"])
        files["class_iou_plot"] = FILES["class_iou_plot"]
    else:
        files["class_iou_plot"] = None
    classes = report.get("classes")
    if classes:
        from dcfm_ros.evaluation.pictures import legend, write_png

        strip = legend([c["name"] for c in classes], [c["color"] for c in classes], 640)
        write_png(out_dir / FILES["legend"], strip)
        files["legend"] = FILES["legend"]
    else:
        files["legend"] = None
    files["report_md"] = FILES["report_md"]
    for key in ("video", "contact_sheet", "output_bag"):
        files.setdefault(key, None)
    report = _json_safe({"report_version": REPORT_VERSION, "complete": True, "incomplete_reason": None,
                         **report, "files": files})
    with atomic_path(out_dir / FILES["report_md"]) as tmp:
        tmp.write_text(render_markdown(report))
    with atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def class_table(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> list[dict[str, Any]]:
    """report.json's `classes`: [{id, name, color}] in class-id order."""
    return [{"id": i, "name": str(n), "color": [int(v) for v in c]}
            for i, (n, c) in enumerate(zip(class_names, palette, strict=True))]
