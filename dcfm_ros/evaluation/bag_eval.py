"""dcfm-bag-eval: play a rosbag2 through the real dcfm_node over ROS topics, record what it publishes,
and write a report (report.json / report.md, plots, overlay video, contact sheet).

    dcfm-bag-eval BAG [--image-topic T] [--gt-topic T] (--max | --rate R) [--params FILE]
                  [--param NAME=VALUE ...] [--model FILE] [--out DIR]

How it runs:
1. The bag is checked first (topics, types); a missing topic is an error that lists the bag's topics.
2. dcfm_node starts as a subprocess (`python -m dcfm_ros.node.main`) with an effective params file
   (DIR/node_params.yaml = the node's defaults < --params file < --param < what the run needs:
   use_sim_time true, image_transport from the bag's topic type, and with --max drop_policy none
   and reliable input QoS) in its own ROS domain (--domain-id, localhost discovery only), its input
   remapped to the bag's image topic. Its output goes to DIR/node.log; if it exits, the error
   shows the log's tail.
3. Once discovery is complete (both directions, and the latched segmentation/classes received), the
   image messages are published as recorded (the bag's bytes), /clock following the bag's record
   time (the node runs on sim time). --max: frame i+1 is sent when the labels and info of frame i
   came back (matched by header stamp) or after --frame-timeout (counted as dropped): no frame is
   lost to a full queue, and the run is as fast as the node. --rate R: recorded timing scaled by R,
   with the node's own drop policy; whatever comes back is recorded.
4. Outputs (segmentation/labels, info, classes; color/overlay with --record-color/--record-overlay)
   go into DIR/bag with the input frame's record time and the node's header stamps (copied from the
   input), so they line up with the input bag.
5. The report pass reads the input bag and DIR/bag, matches labels to frames and ground truth by
   header stamp, and computes the metrics with dcfm_ros.evaluation.metrics (the same code as
   dcfm-evaluate). Image messages that cannot be decoded are never sent and are listed as skipped;
   unusable ground-truth messages are listed and leave their frame out of the metrics.

Exit status: 0 report written; 2 bad input (bag, topic, params, model); 3 the node failed.
The report keys are documented in dcfm_ros.evaluation.report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bagio import BadMessage, BagError, BagReader, BagWriter, Frame
from dcfm_ros.evaluation.report import FrameRecord

OUT_TOPICS = {
    "labels": ("/segmentation/labels", bagio.IMAGE),
    "info": ("/segmentation/info", bagio.SEGMENTATION_INFO),
    "classes": ("/segmentation/classes", bagio.SEGMENTATION_CLASSES),
    "color": ("/segmentation/color", bagio.IMAGE),
    "overlay": ("/segmentation/overlay", bagio.IMAGE),
}
NODE_INPUT = {bagio.IMAGE: ("raw", "image"), bagio.COMPRESSED_IMAGE: ("compressed", "image/compressed")}
IGNORE_INDEX = 255
MVC_LENGTHS = (8, 16)
CONTACT_FRAMES = 4
LOG_TAIL_LINES = 40


class BagEvalError(Exception):
    """The evaluation cannot run as asked (bad bag, topic, parameter, model); exit status 2."""


class NodeFailedError(BagEvalError):
    """dcfm_node exited or did not come up; the message carries its log tail. Exit status 3."""


# ---------------------------------------------------------------------------------------------------------
# Parameters


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"keyframe": {"interval": 2}} -> {"keyframe.interval": 2} (ROS parameter names)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _applies_to_node(key: str, node_name: str) -> bool:
    last = str(key).rstrip("/").split("/")[-1]
    return last in ("**", "*", node_name)


def read_params_file(path: Path, node_name: str = "dcfm_node") -> dict[str, Any]:
    """The flat parameters a ROS params file gives `node_name` (wildcard sections and its own)."""
    if not path.is_file():
        raise BagEvalError(f"params file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BagEvalError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise BagEvalError(f"params file {path} must map node names to {{ros__parameters: ...}}")
    out: dict[str, Any] = {}
    used = False
    for key, section in doc.items():
        if not _applies_to_node(key, node_name):
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise BagEvalError(f"params file {path}: section {key!r} has no ros__parameters mapping")
        out.update(flatten(section["ros__parameters"]))
        used = True
    if not used:
        raise BagEvalError(f"params file {path} has no section for {node_name} (expected '/**' or "
                           f"'{node_name}'); sections: {', '.join(map(str, doc))}")
    return out


def parse_param(text: str) -> tuple[str, Any]:
    """"NAME=VALUE" (VALUE parsed as YAML, as `-p name:=value` does)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param expects NAME=VALUE, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"--param {name}: value {value!r} is not valid YAML") from exc


def node_defaults() -> dict[str, Any]:
    """The node's declared parameters with their defaults (None = declared without a value)."""
    from dcfm_ros.node.params import PARAMETERS

    return {p.name: p.default for p in PARAMETERS}


def effective_params(params_file: Path | None, overrides: Sequence[tuple[str, Any]], *, max_mode: bool,
                     transport: str) -> dict[str, Any]:
    """Node defaults < params file < --param < what this run needs. Unknown names are an error (the
    node would ignore a typo silently)."""
    values = node_defaults()
    known = set(values) | {"use_sim_time"}
    given = dict(read_params_file(params_file)) if params_file is not None else {}
    given.update(dict(overrides))
    unknown = sorted(set(given) - known)
    if unknown:
        raise BagEvalError(f"unknown node parameter(s) {', '.join(unknown)}; the node has: "
                           f"{', '.join(sorted(known))}")
    values.update(given)
    values["use_sim_time"] = True
    values["image_transport"] = transport
    if max_mode:  # back-pressure needs every frame queued and none lost in transport
        values["drop_policy"] = "none"
        values["qos.reliability"] = "reliable"
    return values


def write_params_file(values: Mapping[str, Any], path: Path) -> None:
    # Unset parameters (None) and empty lists are left out: rcl reads `[]` as "not set" anyway.
    flat = {k: v for k, v in values.items() if v is not None and v != []}
    path.write_text("# written by dcfm-bag-eval: the parameters dcfm_node ran with\n"
                    + yaml.safe_dump({"/**": {"ros__parameters": unflatten(flat)}}, sort_keys=True))


def model_info(values: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(report entry, DCFMConfig) of the checkpoint the node will load; BagEvalError if unusable."""
    from dcfm_ros.model import CheckpointError, read_checkpoint_meta
    from dcfm_ros.node.params import default_model_path

    model = str(values.get("model") or "").strip()
    path = Path(model) if model else default_model_path()
    if not path.is_file():
        what = "the packaged default model" if not model else "model file"
        raise BagEvalError(f"{what} {path} not found (node parameter 'model'; set it with --model FILE)")
    try:
        meta = read_checkpoint_meta(path)
    except CheckpointError as exc:
        raise BagEvalError(f"cannot use the model: {exc}") from exc
    cfg = meta["config"]
    return ({"path": str(path), "backbone": cfg.backbone, "num_classes": cfg.num_classes,
             "input_size": list(cfg.input_size), "class_names": list(cfg.class_names),
             "extra": meta.get("extra", {})}, cfg)


# ---------------------------------------------------------------------------------------------------------
# The node process and ROS isolation


def default_domain_id() -> int:
    # Not the test fixtures' 1 + pid % 101: a test that runs this in-process gets another domain.
    return 1 + (os.getpid() + 50) % 101


@contextlib.contextmanager
def ros_environment(domain_id: int) -> Iterator[dict[str, str]]:
    """Set (and afterwards restore) the variables that isolate this run; yields the node's env."""
    wanted = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    # UDPv4 only: no shared-memory files left behind in /dev/shm if a process is killed.
    wanted.setdefault("FASTDDS_BUILTIN_TRANSPORTS", os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4"))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NodeProcess:
    """dcfm_node as a subprocess; stdout+stderr in a log file."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(env))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) if text else "(no output)"

    def check(self, doing: str) -> None:
        if not self.alive():
            raise NodeFailedError(f"dcfm_node exited with status {self.proc.returncode} while {doing}; the "
                                  f"end of its log ({self.log_path}):\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


# ---------------------------------------------------------------------------------------------------------
# Playback


@dataclass
class Playback:
    records: list[FrameRecord]
    skipped: list[BadMessage]
    classes: list[str] | None = None
    node_counters: dict[str, int] | None = None
    timeouts: int = 0
    unmatched_outputs: int = 0
    warnings: list[str] = field(default_factory=list)
    out_topics: list[str] = field(default_factory=list)


class _Recorder:
    """Collects the node's outputs (raw CDR bytes) in subscription callbacks; written out by `drain`."""

    def __init__(self) -> None:
        self.inbox: deque[tuple[str, str, float, bytes]] = deque()
        self.labels_at: dict[int, float] = {}
        self.info_at: dict[int, bytes] = {}
        self.classes: bytes | None = None
        self.last_output = time.perf_counter()

    def callback(self, key: str, topic: str) -> Any:
        def cb(data: bytes) -> None:
            t = time.perf_counter()
            self.last_output = t
            data = bytes(data)
            if key == "classes":
                self.classes = data
                return
            self.inbox.append((key, topic, t, data))
            try:
                stamp = bagio.cdr_header_stamp(data)
            except bagio.DecodeError:
                return
            if key == "labels":
                self.labels_at.setdefault(stamp, t)
            elif key == "info":
                self.info_at.setdefault(stamp, data)

        return cb


def _fill_info(rec: FrameRecord, data: bytes) -> dict[str, int]:
    msg = bagio.deserialize(data, bagio.SEGMENTATION_INFO)
    rec.is_keyframe = bool(msg.is_keyframe)
    rec.frames_since_keyframe = int(msg.frames_since_keyframe)
    rec.motion_score = float(msg.motion_score)
    rec.engine_ms = float(msg.engine_latency_ms)
    rec.enc_lo_ms, rec.enc_hi_ms = float(msg.enc_lo_ms), float(msg.enc_hi_ms)
    rec.ffm_ms, rec.head_ms = float(msg.ffm_ms), float(msg.head_ms)
    rec.common_age, rec.deep_pass_in_flight = int(msg.common_age), bool(msg.deep_pass_in_flight)
    return {"frames_received": int(msg.frames_received), "frames_processed": int(msg.frames_processed),
            "frames_dropped": int(msg.frames_dropped), "bad_inputs": int(msg.bad_inputs)}


def play(bag: BagReader, image_topic: str, msgtype: str, node: NodeProcess, writer: BagWriter, *,
         domain_id: int, max_mode: bool, rate: float, record: Sequence[str], frame_timeout: float,
         startup_timeout: float, progress: bool = True) -> Playback:
    """Publish the bag's image messages to the node and record its outputs (see the module docstring)."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from dcfm_ros.msg import SegmentationClasses, SegmentationInfo

    ros_types = {bagio.IMAGE: Image, bagio.COMPRESSED_IMAGE: CompressedImage,
                 bagio.SEGMENTATION_INFO: SegmentationInfo, bagio.SEGMENTATION_CLASSES: SegmentationClasses}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    ros_node = rclpy.create_node("dcfm_bag_eval", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(ros_node)
    rec = _Recorder()
    out = Playback(records=[], skipped=[])
    try:
        image_pub = ros_node.create_publisher(ros_types[msgtype], image_topic, reliable)
        clock_pub = ros_node.create_publisher(Clock, "/clock", 10)
        subs = {}
        for key in ("labels", "info", "classes", *record):
            topic, otype = OUT_TOPICS[key]
            subs[key] = ros_node.create_subscription(ros_types[otype], topic, rec.callback(key, topic),
                                                     latched if key == "classes" else reliable, raw=True)
            writer.add_topic(topic, otype)
            out.out_topics.append(topic)

        def spin_until(done: Any, timeout: float, doing: str) -> bool:
            deadline = time.perf_counter() + timeout
            while not done():
                node.check(doing)
                if time.perf_counter() > deadline:
                    return False
                executor.spin_once(timeout_sec=0.005)
            return True

        # Discovery, both ways: the node reads our images and /clock, we read its outputs, and the
        # latched class map has arrived (the node's writers have matched our readers).
        def discovered() -> bool:
            return (image_pub.get_subscription_count() > 0 and clock_pub.get_subscription_count() > 0
                    and all(s.get_publisher_count() > 0 for k, s in subs.items())
                    and rec.classes is not None)

        if not spin_until(discovered, startup_timeout, "starting up"):
            missing = [k for k, s in subs.items() if s.get_publisher_count() == 0]
            if image_pub.get_subscription_count() == 0:
                missing.append(f"subscriber of {image_topic}")
            raise NodeFailedError(f"dcfm_node did not come up within {startup_timeout:.0f} s (not matched: "
                                  f"{', '.join(missing) or 'class map not received'}); the end of its log "
                                  f"({node.log_path}):\n{node.tail()}")
        # The node's reader must also have matched our writer; its writers have matched ours already,
        # and DDS matches both directions from the same discovery exchange. A short settle covers it.
        spin_until(lambda: False, 0.3, "starting up")
        for key, (topic, otype) in OUT_TOPICS.items():
            if key in subs:
                for info in ros_node.get_publishers_info_by_topic(topic):
                    ours = bagio.type_hash(otype)
                    if str(info.topic_type_hash) not in (ours, "INVALID"):
                        out.warnings.append(f"type hash of {topic} differs: rclpy {info.topic_type_hash}, "
                                            f"bag {ours}")

        start_log = bag.start_ns
        if rec.classes is not None:
            writer.write(OUT_TOPICS["classes"][0], start_log, rec.classes)
            out.classes = list(bagio.deserialize(rec.classes, bagio.SEGMENTATION_CLASSES).names)

        by_stamp: dict[int, FrameRecord] = {}
        last_clock = start_log

        def drain() -> None:
            while rec.inbox:
                key, topic, _t, data = rec.inbox.popleft()
                try:
                    stamp = bagio.cdr_header_stamp(data)
                except bagio.DecodeError:
                    out.unmatched_outputs += 1
                    continue
                r = by_stamp.get(stamp)
                if r is None:
                    out.unmatched_outputs += 1
                    writer.write(topic, last_clock, data)
                    continue
                writer.write(topic, r.log_ns, data)
                if key == "info":
                    out.node_counters = _fill_info(r, data)

        def mark(r: FrameRecord) -> None:
            t = rec.labels_at.get(r.stamp_ns)
            if t is not None and r.status != "ok":
                r.status = "ok"
                r.latency_ms = (t - t0 - (r.sent_s or 0.0)) * 1000.0

        t0 = time.perf_counter()
        first_log: int | None = None
        last_report = t0
        total = bag.topics[image_topic].count
        for raw in bag.raw([image_topic]):
            item = bagio.decode_raw(raw, "image")
            if isinstance(item, BadMessage):
                out.skipped.append(item)
                continue
            if item.stamp_ns in by_stamp:
                out.skipped.append(BadMessage(raw.topic, raw.index, raw.log_ns,
                                              f"duplicate header stamp {item.stamp_ns} ns", item.stamp_ns))
                continue
            if first_log is None:
                first_log = raw.log_ns
                t0 = time.perf_counter()
            if not max_mode:  # recorded timing, scaled
                target = t0 + (raw.log_ns - first_log) / 1e9 / rate
                while (now := time.perf_counter()) < target:
                    node.check("playing the bag")
                    executor.spin_once(timeout_sec=min(0.005, target - now))
                drain()
            r = FrameRecord(index=len(out.records), stamp_ns=item.stamp_ns, log_ns=raw.log_ns)
            out.records.append(r)
            by_stamp[r.stamp_ns] = r
            last_clock = raw.log_ns
            clock_pub.publish(Clock(clock=_ros_time(raw.log_ns)))
            r.sent_s = time.perf_counter() - t0
            image_pub.publish(raw.data)
            if max_mode:
                wait = frame_timeout if len(out.records) > 1 else max(frame_timeout, startup_timeout)
                ok = spin_until(lambda s=r.stamp_ns: s in rec.labels_at and s in rec.info_at, wait,
                                "processing frames")
                out.timeouts += not ok
                mark(r)
                drain()
            else:
                for other in out.records[-20:]:
                    mark(other)
            if progress and time.perf_counter() - last_report > 2.0:
                last_report = time.perf_counter()
                done = sum(1 for x in out.records if x.stamp_ns in rec.labels_at)
                print(f"dcfm-bag-eval: {len(out.records)}/{total} frames sent, {done} back", file=sys.stderr)

        if not max_mode:  # the node may still be working through its queue
            def all_back() -> bool:
                return all(r.stamp_ns in rec.labels_at and r.stamp_ns in rec.info_at for r in out.records)

            def node_idle() -> bool:
                # The node's last counters: everything sent arrived and was processed or dropped.
                drain()
                c = out.node_counters
                return c is not None and c["frames_received"] >= len(out.records) and (
                    c["frames_processed"] + c["frames_dropped"] + c["bad_inputs"] >= c["frames_received"])

            # Otherwise (e.g. a frame lost in best-effort transport) stop after a quiet spell several
            # times longer than the slowest frame so far.
            slowest = max((t - t0 - (by_stamp[s].sent_s or 0.0) for s, t in rec.labels_at.items()
                           if s in by_stamp), default=1.0)
            quiet = min(frame_timeout, max(3.0, 3 * slowest))
            while not all_back() and not node_idle() and time.perf_counter() - rec.last_output < quiet:
                spin_until(all_back, 0.1, "finishing the queue")
            for r in out.records:
                mark(r)
        spin_until(lambda: False, 0.05, "finishing")  # late info messages
        for r in out.records:
            mark(r)
        drain()
    finally:
        executor.shutdown()
        ros_node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    return out


def _ros_time(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# ---------------------------------------------------------------------------------------------------------
# Analysis: match by stamp, metrics, pictures


class StampLookup:
    """One topic's decoded items by header stamp, read lazily in log order. Items met before they are
    asked for are buffered; `known` (stamps present on the topic) stops a search for an absent stamp
    without reading to the end."""

    def __init__(self, items: Iterator[Frame | BadMessage], known: set[int]) -> None:
        self._items = items
        self.known = known
        self._buf: dict[int, Frame | BadMessage] = {}
        self.bad: list[BadMessage] = []

    def _take(self, item: Frame | BadMessage) -> None:
        if isinstance(item, BadMessage):
            self.bad.append(item)
        if item.stamp_ns is not None and item.stamp_ns not in self._buf:
            self._buf[item.stamp_ns] = item

    def get(self, stamp: int) -> Frame | BadMessage | None:
        if stamp in self._buf:
            return self._buf.pop(stamp)
        if stamp not in self.known:
            return None
        for item in self._items:
            if isinstance(item, Frame) and item.stamp_ns == stamp:
                return item
            self._take(item)
            if stamp in self._buf:
                return self._buf.pop(stamp)
        return None

    def finish(self) -> list[BadMessage]:
        """Read the rest (to list every bad message) and return all bad messages seen."""
        for item in self._items:
            if isinstance(item, BadMessage):
                self.bad.append(item)
        return self.bad


def topic_stamps(bag: BagReader, topic: str) -> set[int]:
    stamps = set()
    for raw in bag.raw([topic]):
        with contextlib.suppress(bagio.DecodeError):
            stamps.add(bagio.cdr_header_stamp(raw.data))
    return stamps


class _VC:
    """mVC_l streaming over runs of consecutive frames with labels and GT, with metrics.video_consistency
    on each window (so the numbers are those of mean_video_consistency over the runs)."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = tuple(lengths)
        self.window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(lengths))
        self.ratios: dict[int, list[float]] = {n: [] for n in lengths}
        self.runs: dict[int, list[float]] = {n: [] for n in lengths}
        self.run_count = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        from dcfm_ros.evaluation.metrics import video_consistency

        if self.window and self.window[-1][0].shape != gt.shape:
            self.end()
        self.window.append((gt, pred))
        for n in self.lengths:
            if len(self.window) >= n:
                win = list(self.window)[-n:]
                v = video_consistency([w[0] for w in win], [w[1] for w in win], n, IGNORE_INDEX)
                if v is not None:
                    self.ratios[n].append(v)

    def end(self) -> None:
        if self.window:
            self.run_count += 1
        for n in self.lengths:
            if self.ratios[n]:
                self.runs[n].append(float(np.mean(self.ratios[n])))
            self.ratios[n] = []
        self.window.clear()

    def result(self, n: int) -> float | None:
        self.end()
        return float(np.mean(self.runs[n])) if self.runs[n] else None


@dataclass
class Analysis:
    metrics: dict[str, Any] | None
    gt_bad: list[BadMessage]
    video: str | None
    contact_sheet: str | None
    warnings: list[str]


def analyze(in_bag: Path, out_bag: Path, records: Sequence[FrameRecord], *, image_topic: str,
            gt_topic: str | None, class_names: Sequence[str], palette: Sequence[Sequence[int]],
            out_dir: Path, video: bool = True, contact_frames: int = CONTACT_FRAMES) -> Analysis:
    """Match labels and GT to frames by stamp; metrics, overlay video and contact sheet (streaming)."""
    from dcfm_ros.evaluation import report as rp
    from dcfm_ros.evaluation.metrics import ConfusionMatrix

    warnings: list[str] = []
    cm = ConfusionMatrix(len(class_names), ignore_index=IGNORE_INDEX)
    vc = _VC(MVC_LENGTHS)
    gt_bad: list[BadMessage] = []
    metric_frames = 0
    ok = [r for r in records if r.status == "ok"]
    with BagReader(in_bag) as src, BagReader(out_bag) as dst:
        images = StampLookup(src.frames(image_topic), {r.stamp_ns for r in records})
        gts = StampLookup(src.frames(gt_topic, "labels"), topic_stamps(src, gt_topic)) if gt_topic else None
        labels_topic = OUT_TOPICS["labels"][0]
        preds = StampLookup(dst.frames(labels_topic, "labels"), {r.stamp_ns for r in ok})
        # contact sheet: frames with labels, preferably with ground truth
        candidates = ([r for r in ok if r.stamp_ns in gts.known] if gts is not None else []) or ok
        sheet_stamps = {candidates[i].stamp_ns for i in rp.pick_frames(len(candidates), contact_frames)}
        sheet_rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
        fps = _rate(records)
        sink = rp.VideoSink(out_dir / rp.FILES["video"], fps) if video and records else None
        try:
            for r in records:
                img = images.get(r.stamp_ns)
                if not isinstance(img, Frame):
                    raise BagEvalError(f"frame {r.index} (stamp {r.stamp_ns}) is no longer readable in "
                                       f"{in_bag}")
                pred_item = preds.get(r.stamp_ns) if r.status == "ok" else None
                pred = pred_item.image if isinstance(pred_item, Frame) else None
                if r.status == "ok" and pred is None:
                    reason = (pred_item.reason if isinstance(pred_item, BadMessage)
                              else "not in the output bag")
                    warnings.append(f"labels of frame {r.index} unusable: {reason}")
                if pred is not None and pred.shape != img.image.shape[:2]:
                    warnings.append(f"labels of frame {r.index} are {_size(pred)}, the image "
                                    f"{_size(img.image)}: left out of the metrics")
                    pred = None
                gt = None
                if gts is not None:
                    g = gts.get(r.stamp_ns)
                    if isinstance(g, BadMessage):
                        gt_bad.append(g)
                    elif isinstance(g, Frame):
                        if g.image.shape != img.image.shape[:2]:
                            reason = f"ground truth is {_size(g.image)}, the image {_size(img.image)}"
                            gt_bad.append(BadMessage(g.topic, g.index, g.log_ns, reason, g.stamp_ns))
                        else:
                            gt = g.image
                            r.has_gt = True
                if gt is not None and pred is not None:
                    try:
                        cm.update(pred, gt)
                    except ValueError as exc:
                        raise BagEvalError(f"ground truth of frame {r.index} on {gt_topic} (stamp "
                                           f"{r.stamp_ns}) does not fit the model's {len(class_names)} "
                                           f"classes: {exc}") from exc
                    vc.add(gt, pred)
                    metric_frames += 1
                else:
                    vc.end()  # a gap: windows never span a frame without labels or GT
                if sink is not None:
                    text = (f"#{r.index} {'KEY ' if r.is_keyframe else ''}{r.latency_ms or 0:.0f} ms"
                            if pred is not None else f"#{r.index} no output")
                    sink.write(rp.overlay_frame(img.image, pred, palette, 0.5, text))
                if r.stamp_ns in sheet_stamps:
                    cells = [("camera", img.image),
                             ("overlay", rp.overlay_frame(img.image, pred, palette, 0.5))]
                    if gt is not None:
                        cells.append(("ground truth", rp.colorize(gt, palette)))
                    elif pred is not None:
                        cells.append(("labels", rp.colorize(pred, palette)))
                    sheet_rows.append((f"#{r.index}", cells))
            if gts is not None:
                seen = {(b.index, b.reason) for b in gt_bad}
                gt_bad += [b for b in gts.finish() if (b.index, b.reason) not in seen]
        finally:
            if sink is not None:
                sink.close()
    sheet = None
    if sheet_rows:
        rp.contact_sheet(sheet_rows, out_dir / rp.FILES["contact_sheet"])
        sheet = rp.FILES["contact_sheet"]
    metrics = None
    if gt_topic is not None:
        summary = cm.summary(class_names)
        metrics = {"frames": metric_frames, "ignore_index": IGNORE_INDEX, "miou": summary["mIoU"],
                   "wiou": summary["wIoU"], "pixel_acc": summary["pixel_acc"],
                   "per_class_iou": summary["per_class_IoU"], "mvc8": vc.result(8), "mvc16": vc.result(16),
                   "mvc_runs": vc.run_count}
        if metric_frames == 0:
            warnings.append(f"no frame has both labels and ground truth on {gt_topic}: metrics are empty")
    return Analysis(metrics, gt_bad, rp.FILES["video"] if sink is not None and sink.frames else None, sheet,
                    warnings)


def label_classes_warning(custom_data: Mapping[str, str], gt_topic: str | None,
                          class_names: Sequence[str]) -> str | None:
    """A warning when the bag says (dcfm-make-bag's custom data) that `gt_topic` holds the train ids
    of a class list other than the model's: the ids would then be compared with a different meaning
    and the metrics be numbers about nothing. None when they agree or the bag does not say."""
    text = custom_data.get("dcfm_ros.make_bag")
    if gt_topic is None or not text:
        return None
    try:
        made = json.loads(text)
    except json.JSONDecodeError:
        return None
    names = made.get("class_names") if isinstance(made, dict) else None
    if not isinstance(names, list) or made.get("label_topic") != gt_topic:
        return None
    if [str(n) for n in names] == list(class_names):
        return None
    def short(seq: Sequence[object]) -> str:
        return ", ".join(map(str, list(seq)[:5])) + (", ..." if len(seq) > 5 else "")

    return (f"the labels on {gt_topic} are {made.get('dataset', 'dataset')} train ids of {len(names)} "
            f"classes ({short(names)}), the model has {len(class_names)} ({short(class_names)}): the "
            "metrics compare different class maps")


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def _rate(records: Sequence[FrameRecord]) -> float:
    if len(records) < 2:
        return 15.0
    span = (records[-1].log_ns - records[0].log_ns) / 1e9
    return (len(records) - 1) / span if span > 0 else 15.0


# ---------------------------------------------------------------------------------------------------------
# Command line


def _single_channel(bag: BagReader, topic: bagio.TopicInfo) -> bool:
    if topic.msgtype != bagio.IMAGE:
        return False
    for raw in bag.raw([topic.name]):
        try:
            return str(bagio.deserialize(raw.data, raw.msgtype).encoding) in bagio.SINGLE_CHANNEL
        except bagio.DecodeError:
            continue
    return False


def choose_image_topic(bag: BagReader, asked: str | None, gt_topic: str | None) -> bagio.TopicInfo:
    if asked is not None:
        return bag.require_topic(asked, bagio.IMAGE_TYPES, "image")
    cands = [t for t in bag.image_topics() if t.name != gt_topic]
    if len(cands) > 1:  # label, mask and depth images are single-channel: not the camera
        cands = [t for t in cands if not _single_channel(bag, t)]
    if len(cands) != 1:
        raise BagEvalError(f"{'no' if not cands else 'several'} image topics in {bag.path}; choose one with "
                           f"--image-topic. Topics:\n{bagio.format_topics(bag.topics.values())}")
    return cands[0]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-bag-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="input rosbag2 directory (or a .mcap/.db3 file)")
    p.add_argument("--image-topic", help="camera topic (Image or CompressedImage); default: the bag's only "
                   "image topic")
    p.add_argument("--gt-topic", help="ground-truth label topic (mono8 train ids, 255 = void)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--max", action="store_true", help="as fast as the node keeps up, no frame lost "
                       "(back-pressure; drop_policy none)")
    speed.add_argument("--rate", type=float, help="recorded timing scaled by this factor (default 1.0)")
    p.add_argument("--params", type=Path, help="node params file (e.g. config/dcfm.yaml); default: the "
                   "node's defaults")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="override one node parameter (repeatable), e.g. keyframe.interval=3")
    p.add_argument("--model", help="checkpoint file (shortcut for --param model=FILE)")
    p.add_argument("--out", type=Path, help="output folder (default: out/bag_eval/<bag name>)")
    p.add_argument("--overwrite", action="store_true", help="replace the output bag and report in --out")
    p.add_argument("--record-color", action="store_true", help="also record segmentation/color")
    p.add_argument("--record-overlay", action="store_true", help="also record segmentation/overlay")
    p.add_argument("--no-video", action="store_true", help="skip the overlay video")
    p.add_argument("--frame-timeout", type=float, default=30.0,
                   help="seconds to wait for one frame's output before counting it dropped (default 30)")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the node to start (default 180)")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID of the run (default: one per process)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def output_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    bag = Path(args.bag)
    return Path("out") / "bag_eval" / (bag.stem if bag.is_file() else bag.name)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything main() does, raising BagEvalError / BagError; returns the report."""
    from dcfm_ros.evaluation import report as rp

    rate = 1.0 if args.rate is None else float(args.rate)
    if not args.max and not (math.isfinite(rate) and rate > 0):
        raise BagEvalError(f"--rate must be a positive factor, got {args.rate}")
    if args.frame_timeout <= 0 or args.startup_timeout <= 0:
        raise BagEvalError("timeouts must be positive")
    domain_id = default_domain_id() if args.domain_id is None else args.domain_id
    if not 0 <= domain_id <= 232:
        raise BagEvalError(f"--domain-id must be in 0..232, got {domain_id}")

    in_path = bagio.resolve_bag(args.bag)
    with BagReader(in_path) as bag:
        info = choose_image_topic(bag, args.image_topic, args.gt_topic)
        if args.gt_topic is not None:
            bag.require_topic(args.gt_topic, bagio.IMAGE_TYPES, "ground-truth")
        image_count = info.count
        custom_data = bag.custom_data
    transport, node_input = NODE_INPUT[info.msgtype]

    overrides = list(args.param) + ([("model", args.model)] if args.model else [])
    values = effective_params(args.params, overrides, max_mode=args.max, transport=transport)
    model, cfg = model_info(values)

    out_dir = output_dir(args)
    out_bag = out_dir / "bag"
    if out_bag.exists():
        if not args.overwrite:
            raise BagEvalError(f"{out_bag} exists already (use --overwrite or another --out)")
        shutil.rmtree(out_bag)
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path = out_dir / "node_params.yaml"
    write_params_file(values, params_path)
    record = [k for k, flag in (("color", args.record_color), ("overlay", args.record_overlay)) if flag]

    cmd = [sys.executable, "-m", "dcfm_ros.node.main", "--ros-args", "--params-file", str(params_path),
           "-r", f"{node_input}:={info.name}"]
    say = (lambda *_: None) if args.quiet else (lambda text: print(f"dcfm-bag-eval: {text}", file=sys.stderr))
    say(f"playing {in_path} ({info.name}, {image_count} frames, "
        f"{'--max' if args.max else f'--rate {rate:g}'}) through dcfm_node (ROS domain {domain_id}, log "
        f"{out_dir / 'node.log'})")
    with ros_environment(domain_id) as env:
        node = NodeProcess(cmd, env, out_dir / "node.log")
        try:
            with BagReader(in_path) as bag, BagWriter(out_bag) as writer:
                writer.set_custom_data("dcfm_ros.bag_eval", json.dumps({"input": str(in_path),
                                                                       "image_topic": info.name}))
                pb = play(bag, info.name, info.msgtype, node, writer, domain_id=domain_id, max_mode=args.max,
                          rate=rate, record=record, frame_timeout=args.frame_timeout,
                          startup_timeout=args.startup_timeout, progress=not args.quiet)
        finally:
            code = node.stop()
        if code not in (0, -signal.SIGINT):
            pb.warnings.append(f"dcfm_node exited with status {code} after the run (see node.log)")

    say("playback done; computing the report")
    names = list(cfg.class_names)
    mismatch = label_classes_warning(custom_data, args.gt_topic, names)
    if mismatch is not None:
        pb.warnings.append(mismatch)
    if pb.classes is not None and pb.classes != names:
        pb.warnings.append(f"the node's class map {pb.classes} differs from the checkpoint's {names}")
    an = analyze(in_path, out_bag, pb.records, image_topic=info.name, gt_topic=args.gt_topic,
                 class_names=names, palette=cfg.palette, out_dir=out_dir, video=not args.no_video)
    skipped = [b.to_dict() for b in pb.skipped] + [b.to_dict() for b in an.gt_bad]
    summary = rp.summarize(pb.records, skipped=skipped, image_skipped=len(pb.skipped),
                           gt_skipped=len(an.gt_bad), node_counters=pb.node_counters)
    report = {
        "input": {"bag": str(in_path), "image_topic": info.name, "gt_topic": args.gt_topic,
                  "image_messages": image_count},
        "output": {"bag": str(out_bag), "topics": pb.out_topics},
        "mode": {"max": bool(args.max), "rate": None if args.max else rate},
        **summary,
        "timeouts": pb.timeouts,
        "unmatched_outputs": pb.unmatched_outputs,
        "metrics": an.metrics,
        "node_params": values,
        "model": model,
        "machine": rp.machine_info(),
        "warnings": pb.warnings + an.warnings,
        "files": {"output_bag": "bag", "video": an.video, "contact_sheet": an.contact_sheet,
                  "node_log": "node.log", "node_params": "node_params.yaml"},
    }
    return rp.write_report(out_dir, report, pb.records)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except NodeFailedError as exc:
        print(f"dcfm-bag-eval: error: {exc}", file=sys.stderr)
        return 3
    except (BagEvalError, BagError) as exc:
        print(f"dcfm-bag-eval: error: {exc}", file=sys.stderr)
        return 2
    out_dir = output_dir(args)
    lat = report["latency_ms"]["all"]
    def num(v: float | None, digits: int) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    print(f"frames in {report['frames_in']}, out {report['frames_out']}, dropped {report['frames_dropped']}, "
          f"skipped {report['frames_skipped']}; {num(report['throughput_fps'], 2)} fps; latency p50 "
          f"{num(lat['p50'], 1)} ms, p95 {num(lat['p95'], 1)} ms; keyframe ratio "
          f"{num(report['keyframe_ratio'], 3)}")
    m = report.get("metrics")
    if m is not None:
        def f4(v: float | None) -> str:
            return num(v, 4)

        print(f"mIoU {f4(m['miou'])}, wIoU {f4(m['wiou'])}, mVC_8 {f4(m['mvc8'])}, mVC_16 {f4(m['mvc16'])} "
              f"over {m['frames']} frames")
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    files = report["files"]
    print(f"report:  {out_dir / 'report.md'}  ({out_dir / 'report.json'})")
    print("plots:   " + "  ".join(str(out_dir / files[k]) for k in ("latency_plot", "latency_hist",
                                                                      "class_iou_plot") if files.get(k)))
    if files.get("video"):
        print(f"video:   {out_dir / files['video']}")
    if files.get("contact_sheet"):
        print(f"frames:  {out_dir / files['contact_sheet']}")
    print(f"outputs: {out_dir / 'bag'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
