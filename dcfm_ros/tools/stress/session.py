"""One dcfm_node subprocess and a client rclpy node talking to it over a reliable link.

The client publishes frames on <ns>/image (or image/compressed), collects segmentation/labels and
segmentation/info keyed by header stamp, and reads the node's resident memory from /proc. Each
session runs in its own DDS domain on localhost with Fast DDS on UDPv4 (no shared-memory files left
behind when a node is killed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dcfm_ros.data.processes import stop_process

START_TIMEOUT_S = 120.0
NS = "/stress"


def node_command(params: Mapping[str, Any]) -> list[str]:
    exe = Path(sys.executable).parent / "dcfm_node"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "dcfm_ros.node.main"]
    cmd.append("--ros-args")
    for key, value in params.items():
        cmd += ["-p", f"{key}:={json.dumps(value)}"]  # -p values are YAML; JSON is YAML
    return [*cmd, "-r", f"__ns:={NS}"]


def stamp_key(header: Any) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


class NodeSession:
    def __init__(self, params: Mapping[str, Any], log: Path, domain_id: int, compressed: bool = False,
                 env: Mapping[str, str] | None = None, depth: int = 100) -> None:
        ros_env = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                   "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4"}
        os.environ.update(ros_env)  # this process's own rclpy context joins the same domain
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(node_command(params), stdout=self._log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **ros_env, "PYTHONUNBUFFERED": "1",
                                          "RCUTILS_COLORIZED_OUTPUT": "0", **(env or {})})
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        from dcfm_ros.msg import SegmentationInfo

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("dcfm_stress_client", context=self.ctx)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.labels: dict[tuple[int, int], float] = {}  # stamp -> perf_counter when received
        self.infos: dict[tuple[int, int], Any] = {}
        self.last_info: Any = None
        self._subs = [
            self.node.create_subscription(Image, f"{NS}/segmentation/labels", self._on_labels, qos),
            self.node.create_subscription(SegmentationInfo, f"{NS}/segmentation/info", self._on_info, qos),
        ]
        topic, msg_type = ((f"{NS}/image/compressed", CompressedImage) if compressed
                           else (f"{NS}/image", Image))
        self.pub = self.node.create_publisher(msg_type, topic, qos)
        self._last_stamp = (0, 0)

    def _on_labels(self, msg: Any) -> None:
        self.labels[stamp_key(msg.header)] = time.perf_counter()

    def _on_info(self, msg: Any) -> None:
        self.infos[stamp_key(msg.header)] = msg
        self.last_info = msg

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.proc.poll() is not None:
                raise RuntimeError(f"dcfm_node exited ({self.proc.returncode}) while waiting for {what}; "
                                   f"log {self.log}:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}; log {self.log}")
            self.executor.spin_once(timeout_sec=0.02)

    def wait_ready(self, reliable: bool = True) -> None:
        """Discovery both ways, and with `reliable` the node's reader on the image topic reliable
        (qos.reliability auto turns it so once it has seen this client's reliable publisher)."""
        from rclpy.qos import ReliabilityPolicy

        def ready() -> bool:
            subs = self.node.get_subscriptions_info_by_topic(self.pub.topic_name)
            matched = self.pub.get_subscription_count() > 0 and all(
                s.get_publisher_count() > 0 for s in self._subs)
            return (matched and (not reliable or any(s.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                                             for s in subs)))

        self.spin_until(ready, START_TIMEOUT_S, "the node (discovery, reliable reader)")

    def send(self, msg: Any, stamp: tuple[int, int] | None = None) -> tuple[int, int]:
        """Publish with a fresh unique stamp (or the given one); returns the stamp."""
        if stamp is None:
            now = time.time_ns()
            stamp = max((now // 10**9, now % 10**9), (self._last_stamp[0], self._last_stamp[1] + 1))
            if stamp[1] >= 10**9:
                stamp = (stamp[0] + 1, 0)
            self._last_stamp = stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        self.pub.publish(msg)
        return stamp

    def answered(self, key: tuple[int, int], timeout: float = 60.0) -> None:
        self.spin_until(lambda: key in self.labels and key in self.infos, timeout,
                        f"the answer to frame {key}")

    def rss_mb(self) -> float:
        """Resident memory of the node process (VmRSS), MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        stop_process(self.proc, sig, timeout)
        self._log_file.close()
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        return self.proc.returncode


def demo_frames(size: tuple[int, int] | None = None) -> list[Any]:
    """The demo drive's camera frames (demo/camvid_val_0016E5, 101 CamVid frames) as RGB arrays,
    resized to `size` (H, W) when given."""
    import cv2
    import numpy as np
    from rosbags.highlevel import AnyReader

    bag = Path(__file__).resolve().parents[3] / "demo" / "camvid_val_0016E5"
    if not bag.is_dir():
        raise SystemExit(f"dcfm-stress: the demo bag {bag} is not there (a source checkout is needed)")
    frames = []
    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/CompressedImage"]
        for conn, _t, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            rgb = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR_RGB)
            if size is not None:
                rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            frames.append(rgb)
    return frames


def image_msg(rgb: Any, encoding: str = "rgb8") -> Any:
    """sensor_msgs/Image of an (H, W, 3) uint8 RGB array (rgb8 or bgr8)."""
    import array

    import numpy as np
    from sensor_msgs.msg import Image

    h, w = rgb.shape[:2]
    pixels = rgb if encoding == "rgb8" else rgb[..., ::-1]
    msg = Image(height=h, width=w, encoding=encoding, step=w * 3)
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(pixels).tobytes())
    msg.data = data
    msg.header.frame_id = "camera"
    return msg


class StreamsSession:
    """Several camera streams, served either by one dcfm_node with `cameras` (one stream per camera)
    or by one dcfm_node per stream (each in its own namespace): the same client, the same frames, so
    the two set-ups are measured alike. A stream is (input topic, labels topic, info topic)."""

    def __init__(self, params: Mapping[str, Any], log_dir: Path, domain_id: int, streams: int, *,
                 one_node: bool, env: Mapping[str, str] | None = None, depth: int = 100,
                 transport: str = "UDPv4", compressed: bool = False) -> None:
        ros_env = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                   "FASTDDS_BUILTIN_TRANSPORTS": transport}
        os.environ.update(ros_env)
        child_env = {**os.environ, **ros_env, "PYTHONUNBUFFERED": "1", "RCUTILS_COLORIZED_OUTPUT": "0",
                     **(env or {})}
        self.names = [f"cam{i}" for i in range(streams)]
        if one_node:
            runs = [({**params, "cameras": self.names}, NS)]
            self.prefix = {n: f"{NS}/{n}" for n in self.names}
        else:
            runs = [(dict(params), f"{NS}_{n}") for n in self.names]
            self.prefix = {n: f"{NS}_{n}" for n in self.names}
        self.procs: list[subprocess.Popen] = []
        self._logs = []
        self.log_dir = log_dir
        for k, (p, ns) in enumerate(runs):
            cmd = node_command(p)
            cmd[-1] = f"__ns:={ns}"
            log = open(log_dir / f"node{k}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(log)
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env))
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        from dcfm_ros.msg import SegmentationInfo

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("dcfm_stress_client", context=self.ctx)
        in_type, in_topic = (CompressedImage, "image/compressed") if compressed else (Image, "image")
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)
        self.labels: dict[str, dict[tuple[int, int], float]] = {n: {} for n in self.names}
        self.infos: dict[str, dict[tuple[int, int], Any]] = {n: {} for n in self.names}
        self._subs = []
        self.pubs = {}
        for n in self.names:
            pre = self.prefix[n]
            self._subs.append(self.node.create_subscription(
                Image, f"{pre}/segmentation/labels",
                lambda m, n=n: self.labels[n].__setitem__(stamp_key(m.header), time.perf_counter()), qos))
            self._subs.append(self.node.create_subscription(
                SegmentationInfo, f"{pre}/segmentation/info",
                lambda m, n=n: self.infos[n].__setitem__(stamp_key(m.header), m), qos))
            self.pubs[n] = self.node.create_publisher(in_type, f"{pre}/{in_topic}", qos)
        self._last_stamp = (0, 0)

    def spin_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            for k, p in enumerate(self.procs):
                if p.poll() is not None:
                    raise RuntimeError(f"dcfm_node {k} exited ({p.returncode}) while waiting for {what}; log "
                                       f"{self.log_dir / f'node{k}.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}; logs in {self.log_dir}")
            self.executor.spin_once(timeout_sec=0.01)

    def wait_ready(self) -> None:
        from rclpy.qos import ReliabilityPolicy

        def ready() -> bool:
            for pub in self.pubs.values():
                subs = self.node.get_subscriptions_info_by_topic(pub.topic_name)
                if pub.get_subscription_count() == 0 or not any(
                        s.qos_profile.reliability == ReliabilityPolicy.RELIABLE for s in subs):
                    return False
            return all(s.get_publisher_count() > 0 for s in self._subs)

        self.spin_until(ready, START_TIMEOUT_S * max(1, len(self.procs) // 2), "the node(s)")

    def send(self, name: str, msg: Any) -> tuple[int, int]:
        now = time.time_ns()
        stamp = max((now // 10**9, now % 10**9), (self._last_stamp[0], self._last_stamp[1] + 1))
        if stamp[1] >= 10**9:
            stamp = (stamp[0] + 1, 0)
        self._last_stamp = stamp
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        self.pubs[name].publish(msg)
        return stamp

    def rss_mb(self) -> float:
        """Resident memory of every node process together (VmRSS), MiB."""
        total = 0.0
        for p in self.procs:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024.0
        return total

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> list[int]:
        codes = []
        for p, log in zip(self.procs, self._logs, strict=True):
            stop_process(p, sig, timeout)
            log.close()
            codes.append(p.returncode)
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        return codes
