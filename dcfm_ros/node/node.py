"""DCFMNode: the ROS I/O around a StreamEngine. Messages in, engine call, messages out; no model logic.

Threads: the executor thread runs the camera callback (enqueue only, never waits for inference),
parameter services and the 1 Hz diagnostics timer; one worker thread converts, runs the engine and
publishes. Topic names are relative, so namespaces and remapping apply.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dcfm_ros.msg import SegmentationClasses, SegmentationInfo
from dcfm_ros.node import convert
from dcfm_ros.node.diagnostics import NodeStats, diagnostics_msg
from dcfm_ros.node.framequeue import FrameQueue
from dcfm_ros.node.params import (
    NodeSettings,
    ParameterError,
    apply_changes,
    build_engine,
    declare_parameters,
    mask_topic_suffix,
    read_settings,
)

if TYPE_CHECKING:
    from dcfm_ros.engine import KeyframePolicy, StreamEngine

NODE_NAME = "dcfm_node"
DIAGNOSTICS_PERIOD_S = 1.0
LOG_THROTTLE_S = 5.0
# Outputs: reliable, keep last 10 (ROS default, as image_pipeline publishers).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
# The class map: latched, a subscriber that joins late still gets the last one.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def input_qos(settings: NodeSettings) -> QoSProfile:
    """Sensor-data QoS by default (best effort, keep last qos.depth); reliable on request."""
    reliability = (ReliabilityPolicy.RELIABLE if settings.qos_reliability == "reliable"
                   else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(depth=settings.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE)


class DCFMNode(Node):
    """Raises ParameterError / StartupError (after cleaning up) when it cannot start."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        try:
            declare_parameters(self)
            self._settings = read_settings(self)
            self.engine: StreamEngine = build_engine(self._settings)
            self._setup()
        except BaseException:
            self.destroy_node()
            raise

    def _setup(self) -> None:
        # Not imported at module level: the engine loads torch, and main imports this module before
        # the parameters are checked (most bad parameters are then reported in a fraction of a second).
        from dcfm_ros.engine import colorize, overlay

        self._colorize, self._overlay = colorize, overlay
        s = self._settings
        engine = self.engine
        self.stats = NodeStats()
        self._policy_lock = threading.Lock()
        self._pending_policy: KeyframePolicy | None = None
        self._last_shape: tuple[int, int] | None = None
        self._stopping = threading.Event()

        self._pub_labels = self.create_publisher(Image, "segmentation/labels", OUTPUT_QOS)
        self._pub_color = self.create_publisher(Image, "segmentation/color", OUTPUT_QOS)
        self._pub_overlay = self.create_publisher(Image, "segmentation/overlay", OUTPUT_QOS)
        self._pub_info = self.create_publisher(SegmentationInfo, "segmentation/info", OUTPUT_QOS)
        self._pub_classes = self.create_publisher(SegmentationClasses, "segmentation/classes", LATCHED_QOS)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._masks = []  # (class id, topic suffix, publisher, buffer)
        for name in s.mask_classes:
            suffix = mask_topic_suffix(name)
            pub = self.create_publisher(Image, f"segmentation/masks/{suffix}", OUTPUT_QOS)
            self._masks.append((engine.class_names.index(name), suffix, pub, convert.ImageBuffer()))
        self._buf_labels, self._buf_color, self._buf_overlay = (convert.ImageBuffer() for _ in range(3))

        header = Header(stamp=self.get_clock().now().to_msg())
        self._pub_classes.publish(convert.classes_msg(engine.class_names, engine.palette, header))

        self._queue: FrameQueue[tuple[Image | CompressedImage, float]] = FrameQueue(
            keep_latest=s.drop_policy == "latest")
        if s.image_transport == "compressed":
            self._to_rgb = convert.compressed_to_rgb
            self._sub = self.create_subscription(CompressedImage, "image/compressed", self._on_image,
                                                 input_qos(s))
        else:
            self._to_rgb = convert.image_to_rgb
            self._sub = self.create_subscription(Image, "image", self._on_image, input_qos(s))

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # Steady clock: diagnostics keep coming with use_sim_time while a bag is paused.
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._worker = threading.Thread(target=self._run, name="dcfm-inference", daemon=True)
        self.get_logger().info(
            f"model {s.model_path} ({engine.num_classes} classes, input {engine.input_size[0]}x"
            f"{engine.input_size[1]}) on {engine.backend.describe()}; keyframe policy "
            f"{engine.policy!r}; subscribed to {self._sub.topic_name} ({s.image_transport}, "
            f"{s.qos_reliability}, depth {s.qos_depth}); drop_policy {s.drop_policy}")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (after the frame in progress) and wait for it."""
        self._stopping.set()
        self._queue.close()
        if self._worker.is_alive():
            self._worker.join(timeout)
            if self._worker.is_alive():
                self.get_logger().error(f"inference thread did not stop within {timeout} s")

    # -- executor thread ---------------------------------------------------------------------------

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats.received(self._queue.put((msg, time.perf_counter())))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        try:
            apply_changes(self._settings, params)
        except ParameterError as exc:
            self.get_logger().warning(f"parameter change rejected: {exc}")
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        new = apply_changes(self._settings, params)  # validated a moment ago by _on_set_parameters
        if new.keyframe != self._settings.keyframe:
            policy = new.keyframe.make_policy()
            with self._policy_lock:
                self._pending_policy = policy  # the worker swaps it in before its next frame
            self.get_logger().info(f"keyframe policy is now {policy!r}")
        self._settings = new

    def _publish_diagnostics(self) -> None:
        totals, window = self.stats.take_window()
        s = self._settings
        static = {
            "device": str(self.engine.device),
            "precision": self.engine.precision,
            "backend": self.engine.backend.name,
            "keyframe_policy": repr(self.engine.policy),
            "drop_policy": s.drop_policy,
            "image_transport": s.image_transport,
            "input_size": f"{self.engine.input_size[0]}x{self.engine.input_size[1]}",
            "model": str(s.model_path),
        }
        self._pub_diag.publish(diagnostics_msg(
            self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: segmentation",
            str(self.engine.device),
            totals, window, static, len(self._queue)))

    # -- worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._handle(*item)
            except Exception as exc:
                if self._stopping.is_set() or not self.context.ok():
                    return  # shutting down: publishers may already be gone
                n = self.stats.error()
                self.get_logger().error(f"frame failed ({n} so far): {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=LOG_THROTTLE_S)

    def _handle(self, msg: Image | CompressedImage, t_received: float) -> None:
        try:
            rgb = self._to_rgb(msg)
        except convert.BadInputError as exc:
            n = self.stats.bad_input()
            self.get_logger().warning(
                f"bad input on {self._sub.topic_name} (frame_id '{msg.header.frame_id}', {n} so far): {exc}",
                throttle_duration_sec=LOG_THROTTLE_S)
            return
        with self._policy_lock:
            policy, self._pending_policy = self._pending_policy, None
        if policy is not None:
            self.engine.policy = policy
        shape = (int(rgb.shape[0]), int(rgb.shape[1]))
        if self._last_shape is not None and shape != self._last_shape:
            self.stats.resolution_change()
            self.get_logger().warning(f"input resolution changed from {self._last_shape[1]}x"
                                      f"{self._last_shape[0]} to {shape[1]}x{shape[0]}; this frame is a "
                                      f"keyframe", throttle_duration_sec=LOG_THROTTLE_S)
        self._last_shape = shape

        result = self.engine.process(rgb)
        counters = self.stats.processed(result.is_keyframe, result.timings_ms.get("total", 0.0))
        header = msg.header
        labels = result.labels
        published = []
        if self._pub_labels.get_subscription_count() > 0:
            self._pub_labels.publish(convert.labels_to_msg(labels, header, self._buf_labels))
            published.append("labels")
        stamp = Time.from_msg(header.stamp)
        # end to end from the camera stamp; undefined for unstamped images
        e2e = ((self.get_clock().now() - stamp).nanoseconds / 1e6 if stamp.nanoseconds else float("nan"))
        self.stats.latency((time.perf_counter() - t_received) * 1000.0, e2e)
        if self._pub_info.get_subscription_count() > 0:
            self._pub_info.publish(convert.info_msg(header, result, e2e, *counters))
            published.append("info")

        want_color = self._pub_color.get_subscription_count() > 0
        want_overlay = self._pub_overlay.get_subscription_count() > 0
        if want_color or want_overlay:
            color = self._colorize(labels, self.engine.palette)
            if want_color:
                self._pub_color.publish(convert.rgb_to_msg(color, header, self._buf_color))
                published.append("color")
            if want_overlay:
                blended = self._overlay(np.ascontiguousarray(rgb), color, self._settings.overlay_alpha)
                self._pub_overlay.publish(convert.rgb_to_msg(blended, header, self._buf_overlay))
                published.append("overlay")
        for class_id, suffix, pub, buf in self._masks:
            if pub.get_subscription_count() > 0:
                pub.publish(convert.mask_to_msg(labels, class_id, header, buf))
                published.append(f"mask_{suffix}")
        self.stats.published(published)
