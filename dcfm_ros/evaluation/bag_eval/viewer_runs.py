"""`dcfm-bag-eval --viewer`: the same playback without and with a viewer process, side by side.

Cases (comma-separated after --viewer; default color+overlay):
- `color+overlay`: a viewer on segmentation/color and segmentation/overlay (raw Image), as in issue 21;
- `all`: color, overlay, confidence and three class masks (the node's mask_classes, else the model's
  first three classes, set for every run of the comparison so that only the viewer differs);
- `compressed`: segmentation/color/compressed and segmentation/overlay/compressed.
The first run has no viewer; each case then runs in DIR/<case>/ with a fresh node. The comparison
(frames/s, labels end-to-end p99 and max, the engine's p99, each as a ratio to the run without a
viewer; messages and bytes per message of each viewer topic) goes to DIR/viewers.md and
DIR/viewers.json and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.bag_eval.errors import BagEvalError

CASES = ("color+overlay", "all", "compressed")
BASELINE = "no viewer"
N_MASKS = 3


def case_topics(case: str, mask_classes: list[str]) -> list[tuple[str, str]]:
    """(topic, viewer type) of one case."""
    from dcfm_ros.engine.settings import mask_topic_suffix

    raw = [("/segmentation/color", "image"), ("/segmentation/overlay", "image")]
    if case == "color+overlay":
        return raw
    if case == "all":
        return raw + [("/segmentation/confidence", "image")] + [
            (f"/segmentation/masks/{mask_topic_suffix(c)}", "image") for c in mask_classes]
    if case == "compressed":
        return [("/segmentation/color/compressed", "compressed"),
                ("/segmentation/overlay/compressed", "compressed")]
    raise BagEvalError(f"--viewer: unknown case {case!r}; cases: {', '.join(CASES)}")


def parse_cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise argparse.ArgumentTypeError(f"--viewer takes cases from {', '.join(CASES)} (comma-separated); "
                                         f"got {text!r}")
    return cases


def udp_receive_buffer_errors() -> int | None:
    """The machine's count of UDP datagrams dropped for a full receive buffer (Linux), else None.

    A dropped fragment of a reliable DDS sample is repaired only at the writer's next heartbeat
    (Fast DDS: every 3 s), so each one can show up as a ~3 s latency spike of one frame."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def _row(name: str, report: Mapping[str, Any], base: Mapping[str, Any] | None) -> dict[str, Any]:
    lat, eng = report["latency_ms"]["all"], report["engine_latency_ms"]["all"]

    def ratio(key: str, value: float | None) -> float | None:
        if base is None or value is None or not base.get(key):
            return None
        return value / base[key]

    row = {"run": name, "frames": report["frames_out"], "fps": report["throughput_fps"],
           "p99_ms": lat["p99"], "max_ms": lat["max"], "engine_p99_ms": eng["p99"],
           "viewer": (report.get("viewer") or {}).get("topics")}
    row["fps_ratio"] = ratio("fps", row["fps"])
    row["p99_ratio"] = ratio("p99_ms", row["p99_ms"])
    row["max_over_2x_engine_p99"] = (row["max_ms"] / (2 * eng["p99"])
                                     if row["max_ms"] is not None and eng["p99"] else None)
    return row


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | frames | frames/s | x no viewer | labels e2e p99 ms | x no viewer | max ms | "
             "engine p99 ms | max / (2 x engine p99) | UDP rcvbuf drops | "
             "viewer topic: messages, bytes/message |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        topics = "; ".join(f"`{t}`: {c['messages']}, {_fmt(c['bytes_per_message'], 0)}"
                           for t, c in (r["viewer"] or {}).items()) or "-"
        lines.append(f"| {r['run']} | {r['frames']} | {_fmt(r['fps'], 2)} | {_fmt(r['fps_ratio'], 2)} | "
                     f"{_fmt(r['p99_ms'])} | {_fmt(r['p99_ratio'], 2)} | {_fmt(r['max_ms'])} | "
                     f"{_fmt(r['engine_p99_ms'])} | {_fmt(r['max_over_2x_engine_p99'], 2)} | "
                     f"{'-' if r.get('udp_rcvbuf_drops') is None else r['udp_rcvbuf_drops']} | {topics} |")
    return "\n".join(lines)


def run_cases(args: argparse.Namespace, stop: Any) -> int:
    """The baseline and every case of args.viewer (module docstring); returns the exit status."""
    from dcfm_ros.evaluation.bag_eval.params import effective_params, model_info
    from dcfm_ros.evaluation.bag_eval.runner import output_dir, run

    out = output_dir(args)
    params = list(args.param)
    values = effective_params(args.params, params + ([("model", args.model)] if args.model else []),
                              max_mode=args.max, transport="raw")
    masks = list(values.get("mask_classes") or [])
    if "all" in args.viewer and not masks:
        _, cfg = model_info(values)
        masks = list(cfg.class_names[:N_MASKS])
        params.append(("mask_classes", masks))
    rows = []
    base: dict[str, Any] | None = None
    for case in [BASELINE, *args.viewer]:
        sub = argparse.Namespace(**vars(args))
        sub.param = params
        sub.out = out / ("no_viewer" if case == BASELINE else case.replace("+", "_"))
        sub.viewer_topics = None if case == BASELINE else case_topics(case, masks)
        print(f"dcfm-bag-eval: --viewer run '{case}' -> {sub.out}", file=sys.stderr, flush=True)
        drops_before = udp_receive_buffer_errors()
        report = run(sub, stop)
        drops_after = udp_receive_buffer_errors()
        row = _row(case, report, base)
        # the whole machine's count (other processes' traffic too) over the run
        row["udp_rcvbuf_drops"] = (None if drops_before is None or drops_after is None
                                   else drops_after - drops_before)
        if base is None:
            base = row
        rows.append(row)
        if stop.requested:
            break
    md = ("# dcfm-bag-eval --viewer\n\nSame bag, same node parameters, one run after the other; ratios "
          "to the run without a viewer. Labels end to end: frame sent -> its labels received. UDP rcvbuf "
          "drops: datagrams the machine dropped for a full socket receive buffer during the run (each "
          "lost fragment of a reliable sample waits for the writer's next heartbeat, 3 s in Fast DDS).\n\n"
          + table(rows) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("viewers.md", md), ("viewers.json", json.dumps(rows, indent=1))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    print(table(rows))
    print(f"comparison: {out / 'viewers.md'}  ({out / 'viewers.json'})")
    return stop.exit_status() if stop.requested else 0
