"""Playback: publish the bag's frames to dcfm_node (with /clock) and record what it publishes.

--max: frame i+1 is sent when the labels and info of frame i came back (matched by header stamp) or
after --frame-timeout (counted as dropped). --rate R: recorded timing scaled by R, with the node's own
drop policy. Outputs go into the output bag at the input frame's record time.

Recorded colour/overlay images (~0.5 MB each) are received by a node of their own, spun by a thread
of its own (`_ViewerRecorder`), which appends them to a spool file; they are copied into the output
bag after playback. So recording them costs the main executor, which times the labels, nothing but
its share of the GIL (issue 21: recording them on the main executor raised the reported p99 3-7x).
"""

from __future__ import annotations

import contextlib
import math
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.errors import NodeFailedError
from dcfm_ros.evaluation.bag_eval.node_process import NodeProcess
from dcfm_ros.evaluation.bag_eval.ros_session import RosSession
from dcfm_ros.evaluation.bagio import BadMessage, BagReader, BagWriter
from dcfm_ros.evaluation.report import FrameRecord

OUT_TOPICS = {
    "labels": ("/segmentation/labels", bagio.IMAGE),
    "info": ("/segmentation/info", bagio.SEGMENTATION_INFO),
    "classes": ("/segmentation/classes", bagio.SEGMENTATION_CLASSES),
    "color": ("/segmentation/color", bagio.IMAGE),
    "overlay": ("/segmentation/overlay", bagio.IMAGE),
}


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
    stopped: str | None = None  # why playback ended before the slice's end (a signal), else None
    camera: tuple[int, int] | None = None  # (H, W) of the first frame sent


@dataclass(frozen=True)
class FrameSlice:
    """Which frames to play: from `start_s` seconds after the bag's start (record time), at most
    `max_frames` frames sent (None = to the end)."""

    start_s: float = 0.0
    max_frames: int | None = None

    @property
    def whole(self) -> bool:
        return self.start_s == 0.0 and self.max_frames is None


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


class _ViewerRecorder:
    """Viewer topics recorded on their own context, executor and thread, into a spool file."""

    _HEAD = struct.Struct("<BI")  # topic index, length

    def __init__(self, domain_id: int, topics: list[tuple[str, type]], qos: Any) -> None:
        self.topics = [t for t, _ in topics]
        self.last_at = time.perf_counter()
        self.last_stamp: dict[int, int] = {}  # topic index -> header stamp of its latest message
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in replay()
        self._session = RosSession("dcfm_bag_eval_recorder", domain_id)
        self._executor = self._session.executor
        self.subs = [self._session.node.create_subscription(msg_type, topic, self._callback(i), qos, raw=True)
                     for i, (topic, msg_type) in enumerate(topics)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="dcfm-bag-eval-recorder", daemon=True)
        self._thread.start()

    def _callback(self, index: int) -> Any:
        def cb(data: bytes) -> None:
            self._spool.write(self._HEAD.pack(index, len(data)))
            self._spool.write(data)
            self.last_at = time.perf_counter()
            with contextlib.suppress(bagio.DecodeError):
                self.last_stamp[index] = bagio.cdr_header_stamp(data)

        return cb

    def _spin(self) -> None:
        while not self._stop.is_set():
            self._executor.spin_once(timeout_sec=0.05)

    def has_all(self, stamp: int) -> bool:
        """Every topic's latest message is of frame `stamp` (the node sends each topic's newest frame
        last; frames in between may be skipped by its latest-only viewer slots)."""
        return all(self.last_stamp.get(i) == stamp for i in range(len(self.topics)))

    def matched(self) -> bool:
        return all(s.get_publisher_count() > 0 for s in self.subs)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self._session.close()

    def replay(self) -> Any:
        """(topic, raw bytes) of everything recorded, in arrival order; closes the spool."""
        self._spool.seek(0)
        try:
            while head := self._spool.read(self._HEAD.size):
                index, n = self._HEAD.unpack(head)
                yield self.topics[index], self._spool.read(n)
        finally:
            self._spool.close()


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
         startup_timeout: float, frames: FrameSlice = FrameSlice(),
         should_stop: Callable[[], bool] = lambda: False, progress: bool = True) -> Playback:
    """Publish the bag's image messages to the node and record its outputs (see the module docstring).

    When `should_stop()` turns true, no further frame is sent; frames already sent get a short grace
    to come back, and the Playback says why it stopped (`stopped`)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from dcfm_ros.msg import SegmentationClasses, SegmentationInfo

    ros_types = {bagio.IMAGE: Image, bagio.COMPRESSED_IMAGE: CompressedImage,
                 bagio.SEGMENTATION_INFO: SegmentationInfo, bagio.SEGMENTATION_CLASSES: SegmentationClasses}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

    session = RosSession("dcfm_bag_eval", domain_id)
    ros_node, executor = session.node, session.executor
    rec = _Recorder()
    out = Playback(records=[], skipped=[])
    viewer_rec: _ViewerRecorder | None = None
    try:
        image_pub = ros_node.create_publisher(ros_types[msgtype], image_topic, reliable)
        clock_pub = ros_node.create_publisher(Clock, "/clock", 10)
        subs = {}
        for key in ("labels", "info", "classes"):
            topic, otype = OUT_TOPICS[key]
            subs[key] = ros_node.create_subscription(ros_types[otype], topic, rec.callback(key, topic),
                                                     latched if key == "classes" else reliable, raw=True)
            writer.add_topic(topic, otype)
            out.out_topics.append(topic)
        if record:
            viewer_topics = [(OUT_TOPICS[k][0], ros_types[OUT_TOPICS[k][1]]) for k in record]
            viewer_rec = _ViewerRecorder(domain_id, viewer_topics, reliable)
            for key in record:
                writer.add_topic(*OUT_TOPICS[key])
                out.out_topics.append(OUT_TOPICS[key][0])

        def spin_until(done: Any, timeout: float, doing: str, stoppable: bool = True) -> bool:
            deadline = time.perf_counter() + timeout
            while not done():
                node.check(doing)
                if time.perf_counter() > deadline or (stoppable and should_stop()):
                    return False
                executor.spin_once(timeout_sec=0.005)
            return True

        # Discovery, both ways: the node reads our images and /clock, we read its outputs, and the
        # latched class map has arrived (the node's writers have matched our readers).
        def discovered() -> bool:
            return (image_pub.get_subscription_count() > 0 and clock_pub.get_subscription_count() > 0
                    and all(s.get_publisher_count() > 0 for k, s in subs.items())
                    and (viewer_rec is None or viewer_rec.matched())
                    and rec.classes is not None)

        ok = spin_until(discovered, startup_timeout, "starting up")
        if should_stop():
            out.stopped = "during the node's start-up, before any frame was sent"
            return out
        if not ok:
            missing = [k for k, s in subs.items() if s.get_publisher_count() == 0]
            if image_pub.get_subscription_count() == 0:
                missing.append(f"subscriber of {image_topic}")
            raise NodeFailedError(f"dcfm_node did not come up within {startup_timeout:.0f} s (not matched: "
                                  f"{', '.join(missing) or 'class map not received'}); the end of its log "
                                  f"({node.log_path}):\n{node.tail()}")
        # The node's reader must also have matched our writer; its writers have matched ours already,
        # and DDS matches both directions from the same discovery exchange. A short settle covers it.
        spin_until(lambda: False, 0.3, "starting up", stoppable=False)
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
        total = bag.topics[image_topic].count if frames.whole else None
        slice_start = bag.start_ns + round(frames.start_s * 1e9)
        if progress:
            print("dcfm-bag-eval: the node is ready; playing", file=sys.stderr, flush=True)
        cut = False
        for raw in bag.raw([image_topic], start_ns=slice_start):
            if should_stop():
                cut = True
                break
            if frames.max_frames is not None and len(out.records) >= frames.max_frames:
                break
            item = bagio.check_image(raw)
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
                while (now := time.perf_counter()) < target and not should_stop():
                    node.check("playing the bag")
                    executor.spin_once(timeout_sec=min(0.005, target - now))
                drain()
                if should_stop():
                    cut = True
                    break
            if out.camera is None:
                out.camera = item.camera_size
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
                out.timeouts += not ok and not should_stop()  # a stop is not a timeout
                mark(r)
                drain()
            else:
                for other in out.records[-20:]:
                    mark(other)
            if progress and time.perf_counter() - last_report > 2.0:
                last_report = time.perf_counter()
                done = sum(1 for x in out.records if x.stamp_ns in rec.labels_at)
                print(f"dcfm-bag-eval: {len(out.records)}/{total or '?'} frames sent, {done} back",
                      file=sys.stderr)
        if cut:  # a signal after the last frame was sent cuts nothing: the grace below covers it
            of = f" (of {total})" if total is not None else ""
            out.stopped = f"after {len(out.records)} frames sent{of}"

        if not max_mode or should_stop():  # the node may still be working through its queue
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
            # Nothing back yet: the first frame may still be building its graphs on a busy machine,
            # so only --frame-timeout ends the wait.
            quiet = min(frame_timeout, max(3.0, 3 * slowest)) if rec.labels_at else frame_timeout
            # After a stop request the grace is bounded: the user asked to stop.
            grace_end = time.perf_counter() + (quiet if should_stop() else math.inf)
            while (not all_back() and not node_idle() and time.perf_counter() - rec.last_output < quiet
                   and time.perf_counter() < grace_end):
                spin_until(all_back, 0.1, "finishing the queue", stoppable=False)
            for r in out.records:
                mark(r)
        spin_until(lambda: False, 0.05, "finishing", stoppable=False)  # late info messages
        for r in out.records:
            mark(r)
        drain()
        if viewer_rec is not None:
            # Viewer outputs come after the labels, from the node's viewer worker: wait for the last
            # frame's, or a quiet second.
            last = out.records[-1].stamp_ns if out.records else None
            while (last is not None and not viewer_rec.has_all(last) and not should_stop()
                   and time.perf_counter() - viewer_rec.last_at < 1.0):
                time.sleep(0.02)
            viewer_rec.stop()
            for topic, data in viewer_rec.replay():
                try:
                    r = by_stamp.get(bagio.cdr_header_stamp(data))
                except bagio.DecodeError:
                    r = None
                out.unmatched_outputs += r is None
                writer.write(topic, r.log_ns if r is not None else last_clock, data)
            viewer_rec = None
    finally:
        if viewer_rec is not None:
            viewer_rec.stop()
        session.close()
    return out


def _ros_time(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

