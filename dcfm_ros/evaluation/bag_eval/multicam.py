"""dcfm-bag-eval with several --image-topic: every camera of a bag through one dcfm_node with the
parameter `cameras`, ground truth per camera, a report per camera and one overall.

Camera names come from the topics (/front/image/compressed -> front; clashes get _2, _3); the node
runs with cameras: [names], each camera's input remapped to its topic, and publishes under
/<camera>/segmentation/... . Playback publishes every camera's messages in the bag's log-time order;
--max keeps one frame per camera in flight (the next frame of a camera goes once the previous one's
labels and info came back or --frame-timeout passed), so frames of several cameras are in the node
together, as live; --rate R plays the recorded timing scaled by R.

Output (DIR): bag/ (every camera's outputs), <camera>/ (that camera's full single-camera report:
report.md/json, frames.csv, plots, overlay video, contact sheet), report.json and report.md (each
camera's row and the overall one: frames, throughput, latency, keyframe ratio, metrics over all
cameras' frames).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.analysis import IGNORE_INDEX, MVC_LENGTHS, analyze, label_classes_warning
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError, NodeFailedError
from dcfm_ros.evaluation.bag_eval.node_process import (
    NodeProcess,
    choose_transport,
    default_domain_id,
    large_output_warning,
    ros_environment,
)
from dcfm_ros.evaluation.bag_eval.params import model_info, prepare_output, run_params
from dcfm_ros.evaluation.bag_eval.playback import _fill_info, _Recorder
from dcfm_ros.evaluation.bag_eval.ros_session import RosSession
from dcfm_ros.evaluation.bag_eval.stopping import Interrupted, StopRequest
from dcfm_ros.evaluation.bagio import BadMessage, BagReader, BagWriter
from dcfm_ros.evaluation.report import FrameRecord
from dcfm_ros.evaluation.video import CODECS

NODE_INPUT = {bagio.IMAGE: ("raw", "image"), bagio.COMPRESSED_IMAGE: ("compressed", "image/compressed")}
OUTPUTS = (("labels", bagio.IMAGE), ("info", bagio.SEGMENTATION_INFO),
           ("classes", bagio.SEGMENTATION_CLASSES))


def camera_names(topics: Sequence[str]) -> list[str]:
    """A ROS name token per topic: the last path element that is not image/image_raw/compressed
    (/front/image/compressed -> front, /cam/left/image_raw -> left); clashes numbered."""
    out: list[str] = []
    for i, topic in enumerate(topics):
        parts = [p for p in topic.strip("/").split("/") if p]
        while parts and parts[-1] in ("compressed", "image", "image_raw", "image_rect", "image_color"):
            parts.pop()
        name = re.sub(r"[^A-Za-z0-9_]", "_", parts[-1]) if parts else f"camera{i}"
        if not (name[0].isalpha() or name[0] == "_"):
            name = f"camera_{name}"
        base, k = name, 2
        while name in out:
            name, k = f"{base}_{k}", k + 1
        out.append(name)
    return out


@dataclass
class Camera:
    name: str
    topic: bagio.TopicInfo
    gt_topic: str | None
    records: list[FrameRecord] = field(default_factory=list)
    skipped: list[BadMessage] = field(default_factory=list)
    node_counters: dict[str, int] | None = None
    timeouts: int = 0
    camera: tuple[int, int] | None = None  # (H, W) of the first frame sent

    def out_topic(self, key: str) -> str:
        return f"/{self.name}/segmentation/{key}"


def _pair_gt(image_topics: Sequence[str], gt_topics: Sequence[str]) -> list[str | None]:
    if not gt_topics:
        return [None] * len(image_topics)
    if len(gt_topics) != len(image_topics):
        raise BagEvalError(f"{len(gt_topics)} --gt-topic for {len(image_topics)} --image-topic: give one per "
                           "camera, in the same order (none for a camera without ground truth)")
    return [None if g.lower() in ("none", "-", "") else g for g in gt_topics]


def run_multi(args: argparse.Namespace, out_dir: Path, stop: StopRequest | None = None) -> dict[str, Any]:
    """Like runner.run for several cameras (see the module docstring), writing into `out_dir`; returns
    the overall report."""
    from dcfm_ros.evaluation import report as rp

    stop = stop or StopRequest()
    rate = 1.0 if args.rate is None else float(args.rate)
    if not args.max and not (math.isfinite(rate) and rate > 0):
        raise BagEvalError(f"--rate must be a positive factor, got {args.rate}")
    if args.frame_timeout <= 0 or args.startup_timeout <= 0:
        raise BagEvalError("timeouts must be positive")
    domain_id = default_domain_id() if args.domain_id is None else args.domain_id
    single_only = [flag for flag, on in (("--start", args.start is not None),
                                         ("--max-frames", args.max_frames is not None),
                                         ("--record-color", args.record_color),
                                         ("--record-overlay", args.record_overlay),
                                         ("--viewer", bool(getattr(args, "viewer", None)))) if on]
    if single_only:
        raise BagEvalError(f"{', '.join(single_only)}: single-camera options for now (one --image-topic)")
    dds_transport = choose_transport(args.transport)
    image_topics = list(args.image_topic)
    if len(set(image_topics)) != len(image_topics):
        raise BagEvalError(f"an --image-topic is given twice: {image_topics}")
    gts = _pair_gt(image_topics, list(args.gt_topic or []))
    in_path = bagio.resolve_bag(args.bag)
    with BagReader(in_path) as bag:
        infos = [bag.require_topic(t, bagio.IMAGE_TYPES, "image") for t in image_topics]
        for g in gts:
            if g is not None:
                bag.require_topic(g, bagio.IMAGE_TYPES, "ground-truth")
        custom_data = bag.custom_data
    types = {i.msgtype for i in infos}
    if len(types) != 1:
        raise BagEvalError("the cameras' topics mix raw and compressed images; the node's image_transport "
                           "is one for all cameras")
    cams = [Camera(n, i, g) for n, i, g in zip(camera_names(image_topics), infos, gts, strict=True)]
    image_transport, node_input = NODE_INPUT[infos[0].msgtype]

    values = run_params(args, image_transport)
    values["cameras"] = [c.name for c in cams]
    model, cfg = model_info(values)
    if stop.requested:
        raise Interrupted(f"stopped by {stop.name} before the node started; nothing written")
    params_path = prepare_output(out_dir, args.overwrite, values)
    out_bag = out_dir / "bag"
    cmd = [sys.executable, "-m", "dcfm_ros.node.main", "--ros-args", "--params-file", str(params_path)]
    for c in cams:
        cmd += ["-r", f"{c.name}/{node_input}:={c.topic.name}"]
    say = (lambda *_: None) if args.quiet else (lambda text: print(f"dcfm-bag-eval: {text}", file=sys.stderr))
    say(f"playing {in_path} ({', '.join(f'{c.name}: {c.topic.name}' for c in cams)}; "
        f"{'--max' if args.max else f'--rate {rate:g}'}) through one dcfm_node (ROS domain {domain_id})")
    warnings: list[str] = []
    with ros_environment(domain_id, dds_transport) as env:
        node = NodeProcess(cmd, env, out_dir / "node.log")
        try:
            with BagReader(in_path) as bag, BagWriter(out_bag) as writer:
                writer.set_custom_data("dcfm_ros.bag_eval", json.dumps(
                    {"input": str(in_path), "cameras": {c.name: c.topic.name for c in cams}}))
                stopped, classes = play_cameras(bag, cams, node, writer, domain_id=domain_id,
                                                max_mode=args.max, rate=rate,
                                                frame_timeout=args.frame_timeout,
                                                startup_timeout=args.startup_timeout,
                                                should_stop=lambda: stop.requested)
        finally:
            code = node.stop()
        if code not in (0, -signal.SIGINT):
            warnings.append(f"dcfm_node exited with status {code} after the run (see node.log)")
    names = list(cfg.class_names)
    for cam_name, got in classes.items():
        if got != names:
            warnings.append(f"camera {cam_name}: the node's class map {got} differs from the checkpoint's")
    rows: dict[str, dict[str, Any]] = {}
    confusion = None
    mvc_runs: dict[int, list[float]] = {n: [] for n in MVC_LENGTHS}
    all_records: list[FrameRecord] = []
    signalled_before = stop.requested
    for c in cams:
        cam_dir = out_dir / c.name
        cam_dir.mkdir(exist_ok=True)
        cam_warnings = [w for w in (label_classes_warning(custom_data, c.gt_topic, names),
                                    large_output_warning(c.camera, dds_transport)) if w]
        an = analyze(in_path, out_bag, c.records, image_topic=c.topic.name, gt_topic=c.gt_topic,
                     class_names=names, palette=cfg.palette, out_dir=cam_dir, video=not args.no_video,
                     video_codecs=CODECS if args.video_codec == "auto" else (args.video_codec,),
                     should_stop=lambda: stop.requested and not signalled_before,
                     labels_topic=c.out_topic("labels"))
        skipped = [b.to_dict() for b in c.skipped] + [b.to_dict() for b in an.gt_bad]
        summary = rp.summarize(c.records, skipped=skipped, image_skipped=len(c.skipped),
                               gt_skipped=len(an.gt_bad), node_counters=c.node_counters)
        report = {"complete": not stopped, "incomplete_reason": stopped,
                  "input": {"bag": str(in_path), "image_topic": c.topic.name, "gt_topic": c.gt_topic,
                            "image_messages": c.topic.count, "camera": c.name},
                  "output": {"bag": str(out_bag), "topics": [c.out_topic(k) for k, _ in OUTPUTS]},
                  "mode": {"max": bool(args.max), "rate": None if args.max else rate},
                  "transport": dds_transport, **summary, "timeouts": c.timeouts, "unmatched_outputs": 0,
                  "metrics": an.metrics, "node_params": values, "model": model,
                  "classes": rp.class_table(names, cfg.palette), "video_codec": an.video_codec,
                  "contact_sheet_columns": an.contact_sheet_columns, "machine": rp.machine_info(),
                  "warnings": cam_warnings + an.warnings,
                  "files": {"output_bag": "../bag", "video": an.video, "contact_sheet": an.contact_sheet,
                            "node_log": "../node.log", "node_params": "../node_params.yaml"}}
        rp.write_report(cam_dir, report, c.records)
        rows[c.name] = _row(summary, an.metrics, c)
        if an.confusion is not None:
            if confusion is None:
                from dcfm_ros.data.metrics import ConfusionMatrix

                confusion = ConfusionMatrix(len(names), ignore_index=IGNORE_INDEX)
            confusion.merge(an.confusion)
            for n in MVC_LENGTHS:
                mvc_runs[n] += (an.mvc_runs or {}).get(n, [])
        all_records += c.records
    overall = rp.summarize(all_records)
    metrics = None
    if confusion is not None:
        s = confusion.summary(names)
        metrics = {"frames": sum((r["metric_frames"] or 0) for r in rows.values()), "miou": s["mIoU"],
                   "wiou": s["wIoU"], "pixel_acc": s["pixel_acc"], "per_class_iou": s["per_class_IoU"],
                   **{f"mvc{n}": (sum(v) / len(v) if v else None) for n, v in mvc_runs.items()}}
    fps = [r["throughput_fps"] for r in rows.values() if r["throughput_fps"]]
    result = {
        "complete": not stopped, "incomplete_reason": stopped,
        "input": {"bag": str(in_path),
                  "cameras": {c.name: {"image_topic": c.topic.name, "gt_topic": c.gt_topic} for c in cams}},
        "mode": {"max": bool(args.max), "rate": None if args.max else rate}, "transport": dds_transport,
        "cameras": rows,
        "overall": {"frames_in": overall["frames_in"], "frames_out": overall["frames_out"],
                    "frames_dropped": overall["frames_dropped"],
                    "throughput_fps": overall["throughput_fps"],
                    "per_camera_fps_min": min(fps) if fps else None,
                    "per_camera_fps_max": max(fps) if fps else None,
                    "latency_ms": overall["latency_ms"]["all"], "keyframe_ratio": overall["keyframe_ratio"],
                    "metrics": metrics},
        "node_params": values, "model": model, "machine": rp.machine_info(), "warnings": warnings,
        "files": {"output_bag": "bag", "node_log": "node.log", "node_params": "node_params.yaml",
                  "cameras": {c.name: f"{c.name}/report.md" for c in cams}},
    }
    result = rp._json_safe(result)
    with rp.atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(render_markdown(result))
    with rp.atomic_path(out_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _row(summary: dict[str, Any], metrics: dict[str, Any] | None, cam: Camera) -> dict[str, Any]:
    lat = summary["latency_ms"]["all"]
    return {"image_topic": cam.topic.name, "gt_topic": cam.gt_topic, "frames_in": summary["frames_in"],
            "frames_out": summary["frames_out"], "frames_dropped": summary["frames_dropped"],
            "frames_skipped": summary["frames_skipped"], "throughput_fps": summary["throughput_fps"],
            "latency_ms": lat, "keyframe_ratio": summary["keyframe_ratio"],
            "node_counters": cam.node_counters, "timeouts": cam.timeouts,
            "miou": metrics["miou"] if metrics else None, "mvc8": metrics["mvc8"] if metrics else None,
            "metric_frames": metrics["frames"] if metrics else None,
            "report": f"{cam.name}/report.md"}


def _fmt(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# dcfm-bag-eval: several cameras, one node", ""]
    if not report["complete"]:
        lines += [f"**INCOMPLETE**: {report['incomplete_reason']}", ""]
    mode = "--max" if report["mode"]["max"] else f"rate {report['mode']['rate']}"
    lines += [f"Bag `{report['input']['bag']}`, {mode}, transport {report['transport']}.", "",
              "| camera | topic | in | out | dropped | fps | latency p50 / p95 / p99 ms | keyframe ratio "
              "| mIoU | mVC_8 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in report["cameras"].items():
        lat = r["latency_ms"]
        lines.append(f"| [{name}]({r['report']}) | `{r['image_topic']}` | {r['frames_in']} | "
                     f"{r['frames_out']} | {r['frames_dropped']} | {_fmt(r['throughput_fps'], 2)} | "
                     f"{_fmt(lat['p50'])} / "
                     f"{_fmt(lat['p95'])} / {_fmt(lat.get('p99'))} | {_fmt(r['keyframe_ratio'], 3)} | "
                     f"{_fmt(r['miou'], 4)} | {_fmt(r['mvc8'], 4)} |")
    o = report["overall"]
    m = o["metrics"] or {}
    lat = o["latency_ms"]
    lines.append(f"| **overall** | | {o['frames_in']} | {o['frames_out']} | {o['frames_dropped']} | "
                 f"{_fmt(o['throughput_fps'], 2)} | {_fmt(lat['p50'])} / {_fmt(lat['p95'])} / "
                 f"{_fmt(lat.get('p99'))} | {_fmt(o['keyframe_ratio'], 3)} | {_fmt(m.get('miou'), 4)} | "
                 f"{_fmt(m.get('mvc8'), 4)} |")
    lines += ["", f"Per camera fps min / max: {_fmt(o['per_camera_fps_min'], 2)} / "
              f"{_fmt(o['per_camera_fps_max'], 2)}. Overall metrics: one confusion matrix over every "
              "camera's frames with ground truth; mVC is the mean over every camera's runs.", ""]
    lines += [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def play_cameras(bag: BagReader, cams: list[Camera], node: NodeProcess, writer: BagWriter, *, domain_id: int,
                 max_mode: bool, rate: float, frame_timeout: float, startup_timeout: float,
                 should_stop: Callable[[], bool]) -> tuple[str | None, dict[str, list[str]]]:
    """Publish every camera's messages (log-time order) and record each camera's outputs. Returns (why
    playback stopped early or None, each camera's class map)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from dcfm_ros.evaluation.bag_eval.playback import _ros_time
    from dcfm_ros.msg import SegmentationClasses, SegmentationInfo

    ros_types = {bagio.IMAGE: Image, bagio.COMPRESSED_IMAGE: CompressedImage,
                 bagio.SEGMENTATION_INFO: SegmentationInfo, bagio.SEGMENTATION_CLASSES: SegmentationClasses}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    session = RosSession("dcfm_bag_eval", domain_id)
    ros_node, executor = session.node, session.executor
    recs = {c.name: _Recorder() for c in cams}
    by_topic = {c.topic.name: c for c in cams}
    stopped: str | None = None
    classes: dict[str, list[str]] = {}
    try:
        pubs = {c.name: ros_node.create_publisher(ros_types[c.topic.msgtype], c.topic.name, reliable)
                for c in cams}
        clock_pub = ros_node.create_publisher(Clock, "/clock", 10)
        subs = []
        for c in cams:
            for key, otype in OUTPUTS:
                topic = c.out_topic(key)
                subs.append(ros_node.create_subscription(
                    ros_types[otype], topic, recs[c.name].callback(key, topic),
                    latched if key == "classes" else reliable, raw=True))
                writer.add_topic(topic, otype)

        def spin_until(done: Callable[[], bool], timeout: float, doing: str) -> bool:
            deadline = time.perf_counter() + timeout
            while not done():
                node.check(doing)
                if time.perf_counter() > deadline or should_stop():
                    return False
                executor.spin_once(timeout_sec=0.005)
            return True

        def discovered() -> bool:
            return (all(p.get_subscription_count() > 0 for p in pubs.values())
                    and clock_pub.get_subscription_count() > 0
                    and all(s.get_publisher_count() > 0 for s in subs)
                    and all(r.classes is not None for r in recs.values()))

        if not spin_until(discovered, startup_timeout, "starting up"):
            if should_stop():
                return "during the node's start-up, before any frame was sent", classes
            raise NodeFailedError(f"dcfm_node did not come up within {startup_timeout:.0f} s; the end of its "
                                  f"log ({node.log_path}):\n{node.tail()}")
        deadline = time.perf_counter() + 0.3
        while time.perf_counter() < deadline:
            executor.spin_once(timeout_sec=0.01)
        for c in cams:
            raw_classes = recs[c.name].classes
            writer.write(c.out_topic("classes"), bag.start_ns, raw_classes)
            classes[c.name] = list(bagio.deserialize(raw_classes, bagio.SEGMENTATION_CLASSES).names)

        by_stamp: dict[str, dict[int, FrameRecord]] = {c.name: {} for c in cams}
        in_flight: dict[str, FrameRecord | None] = dict.fromkeys(by_stamp)
        t0 = time.perf_counter()
        first_log: int | None = None
        last_log = bag.start_ns

        def back(cam: Camera, r: FrameRecord) -> bool:
            rec = recs[cam.name]
            return r.stamp_ns in rec.labels_at and r.stamp_ns in rec.info_at

        def drain() -> None:
            for c in cams:
                rec = recs[c.name]
                while rec.inbox:
                    key, topic, _t, data = rec.inbox.popleft()
                    try:
                        r = by_stamp[c.name].get(bagio.cdr_header_stamp(data))
                    except bagio.DecodeError:
                        r = None
                    writer.write(topic, r.log_ns if r is not None else last_log, data)
                    if r is not None and key == "info":
                        c.node_counters = _fill_info(r, data)

        def mark(c: Camera, r: FrameRecord) -> None:
            t = recs[c.name].labels_at.get(r.stamp_ns)
            if t is not None and r.status != "ok":
                r.status = "ok"
                r.latency_ms = (t - t0 - (r.sent_s or 0.0)) * 1000.0

        for raw in bag.raw([c.topic.name for c in cams]):
            if should_stop():
                stopped = f"after {sum(len(c.records) for c in cams)} frames sent"
                break
            cam = by_topic[raw.topic]
            item = bagio.check_image(raw)
            if isinstance(item, BadMessage):
                cam.skipped.append(item)
                continue
            if item.stamp_ns in by_stamp[cam.name]:
                cam.skipped.append(BadMessage(raw.topic, raw.index, raw.log_ns,
                                              f"duplicate header stamp {item.stamp_ns} ns", item.stamp_ns))
                continue
            if cam.camera is None:
                cam.camera = item.camera_size
            if first_log is None:
                first_log, t0 = raw.log_ns, time.perf_counter()
            if max_mode:
                prev = in_flight[cam.name]
                if prev is not None:
                    wait = frame_timeout if len(cam.records) > 1 else max(frame_timeout, startup_timeout)
                    ok = spin_until(lambda p=prev, c=cam: back(c, p), wait, "processing frames")
                    cam.timeouts += not ok and not should_stop()
                    mark(cam, prev)
            else:
                target = t0 + (raw.log_ns - first_log) / 1e9 / rate
                while (now := time.perf_counter()) < target and not should_stop():
                    node.check("playing the bag")
                    executor.spin_once(timeout_sec=min(0.005, target - now))
            drain()
            r = FrameRecord(index=len(cam.records), stamp_ns=item.stamp_ns, log_ns=raw.log_ns)
            cam.records.append(r)
            by_stamp[cam.name][r.stamp_ns] = r
            in_flight[cam.name] = r
            last_log = max(last_log, raw.log_ns)
            clock_pub.publish(Clock(clock=_ros_time(last_log)))
            r.sent_s = time.perf_counter() - t0
            pubs[cam.name].publish(raw.data)
            executor.spin_once(timeout_sec=0)

        def all_back() -> bool:
            return all(back(c, r) for c in cams for r in c.records)

        quiet = min(frame_timeout, 10.0)
        last = time.perf_counter()
        seen = 0
        while not all_back() and time.perf_counter() - last < quiet and not should_stop():
            executor.spin_once(timeout_sec=0.01)
            now_seen = sum(len(r.labels_at) for r in recs.values())
            if now_seen != seen:
                seen, last = now_seen, time.perf_counter()
        for _ in range(10):  # late info messages
            executor.spin_once(timeout_sec=0.005)
        for c in cams:
            for r in c.records:
                mark(c, r)
        drain()
    finally:
        session.close()
    return stopped, classes
