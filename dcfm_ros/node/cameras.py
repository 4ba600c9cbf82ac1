"""The ROS I/O of a node with the parameter `cameras`: one model and backend, one stream per camera.

For each camera <c>: a subscription on <c>/image (or <c>/image/compressed) whose reliability follows
its own publishers (qos.reliability auto, per topic), outputs under <c>/segmentation/... with that
camera's headers and resolution, <c>/segmentation/classes latched, its own counters (received,
processed, dropped, bad inputs, engine errors) in its SegmentationInfo and its own status in the node's
/diagnostics array. The camera callbacks only hand the message to dcfm_ros.engine.multistream (never
wait); one worker thread takes a round (the newest frame of each camera with drop_policy latest,
cameras in rotation), converts, runs the engine and publishes. A bad image or an engine error on one
camera is that camera's count and never holds the others back.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dcfm_ros.dds.profiles import large_output_hint
from dcfm_ros.msg import SegmentationClasses
from dcfm_ros.node import convert, reduced_decode
from dcfm_ros.node.diagnostics import NodeStats, diagnostics_msg
from dcfm_ros.node.inputqos import input_qos, match_publishers
from dcfm_ros.node.outputs import CameraOutputs
from dcfm_ros.node.params import NodeSettings

if TYPE_CHECKING:
    from rclpy.node import Node
    from rclpy.qos import QoSProfile

    from dcfm_ros.engine import FrameResult, StreamEngine
    from dcfm_ros.engine.multistream import MultiStreamEngine, Outcome, Pending

QOS_CHECK_PERIOD_S = 0.5
TAKE_TIMEOUT_S = 0.5  # the worker looks at the stop flag this often while no camera sends


class CameraIO:
    """One camera's subscription, publishers, buffers and counters on the node."""

    def __init__(self, node: Node, viewer_node: Node, name: str, settings: NodeSettings, engine: StreamEngine,
                 on_image: Any, latched_qos: QoSProfile, on_viewer_error: Any) -> None:
        self.node, self.name, self.engine = node, name, engine
        self.stats = NodeStats()
        self.last_shape: tuple[int, int] | None = None
        s = settings
        compressed = s.image_transport == "compressed"
        self.to_image = reduced_decode.decoder(s.image_transport,
                                               engine.input_size if s.reduced_decode else None)
        self.in_type = CompressedImage if compressed else Image
        in_topic = "image/compressed" if compressed else "image"
        self.in_topic = node.resolve_topic_name(f"{name}/{in_topic}")
        self._on_image = on_image
        self._qos_mode, self._depth = s.qos_reliability, s.qos_depth
        self.reliability, self.qos_why = s.qos_reliability, "set by qos.reliability"
        if s.qos_reliability == "auto":
            self.reliability, self.qos_why = match_publishers(
                node.get_publishers_info_by_topic(self.in_topic))
        self.sub = self._subscribe()

        # The per-camera output path of node/outputs.py: labels and info at once on the node, the
        # viewer outputs on the viewer participant's worker, all under <c>/segmentation/.
        self.outputs = CameraOutputs(node, viewer_node, self.stats, engine.palette, list(engine.class_names),
                                     s.mask_classes, on_viewer_error, prefix=f"{name}/segmentation")
        self.pub_classes = node.create_publisher(SegmentationClasses, f"{name}/segmentation/classes",
                                                 latched_qos)
        header = Header(stamp=node.get_clock().now().to_msg(), frame_id=name)
        self.pub_classes.publish(convert.classes_msg(engine.class_names, engine.palette, header))

    def _subscribe(self) -> Any:
        events = (SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)
                  if self._qos_mode == "auto" else None)
        return self.node.create_subscription(self.in_type, self.in_topic,
                                             lambda msg: self._on_image(self, msg),
                                             input_qos(self.reliability, self._depth), event_callbacks=events)

    def qos_text(self) -> str:
        return f"{self.reliability} (auto: {self.qos_why})" if self._qos_mode == "auto" else self.reliability

    def check_input_qos(self) -> None:
        """qos.reliability auto, per camera topic: a new subscription when its publishers changed."""
        reliability, why = match_publishers(self.node.get_publishers_info_by_topic(self.in_topic))
        self.qos_why = why
        if reliability == self.reliability:
            return
        old, self.reliability = self.reliability, reliability
        self.node.destroy_subscription(self.sub)
        self.sub = self._subscribe()
        self.stats.qos_change()
        self.node.get_logger().info(f"input QoS {old} -> {reliability} on {self.in_topic} ({why})")

    def publish(self, msg: Image | CompressedImage, rgb: np.ndarray | Callable[[], np.ndarray],
                result: FrameResult, t_received: float, settings: NodeSettings) -> None:
        """This camera's outputs of one frame (node/outputs.py: only those somebody subscribes to)."""
        confidence = result.confidence.mean if result.confidence is not None else float("nan")
        counters = self.stats.processed(result.is_keyframe, result.timings_ms.get("total", 0.0), confidence,
                                        settings.confidence_window)
        self.outputs.publish(msg.header, rgb, result, t_received, counters, settings)


class Cameras:
    """Every camera of the node, the shared MultiStreamEngine and the worker thread."""

    def __init__(self, node: Node, viewer_node: Node, settings: NodeSettings, engine: MultiStreamEngine,
                 latched_qos: QoSProfile, process: Any, log_throttled: Any) -> None:
        self.node, self.engine, self.settings = node, engine, settings
        self._process = process  # None: the engine itself; else with fault injection (node/faults.py)
        self._log = log_throttled
        self._stopping = threading.Event()
        self._pending_lock = threading.Lock()
        self._pending_policy: Any = None
        self._pending_schedule: Any = None
        self.io = {name: CameraIO(node, viewer_node, name, settings, engine.engine(name), self._on_image,
                                  latched_qos, self._viewer_failed(name)) for name in engine.cameras}
        self._pub_diag = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if settings.qos_reliability == "auto":
            self._qos_timer = node.create_timer(QOS_CHECK_PERIOD_S, self._check_input_qos,
                                                clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._worker = threading.Thread(target=self._run, name="dcfm-inference", daemon=True)

    def describe(self) -> str:
        return "; ".join(f"{c.name}: {c.sub.topic_name} ({c.qos_text()})" for c in self.io.values())

    # -- executor thread ---------------------------------------------------------------------------

    def _on_image(self, cam: CameraIO, msg: Image | CompressedImage) -> None:
        # The conversion waits for the worker; the engine's slot holds the message until then.
        cam.stats.received(self.engine.submit(cam.name, None, (msg, time.perf_counter())))

    def _viewer_failed(self, name: str) -> Any:
        def failed(exc: Exception) -> None:  # from the viewer worker
            n = self.io[name].stats.error()
            self._log("error", f"{name} viewer {type(exc).__name__}",
                      f"viewer output of {name} failed ({n} so far): {type(exc).__name__}: {exc}")

        return failed

    def _check_input_qos(self) -> None:
        for cam in self.io.values():
            cam.check_input_qos()

    def set_policy(self, policy: Any) -> None:
        with self._pending_lock:
            self._pending_policy = policy

    def set_schedule(self, factory: Any) -> None:
        with self._pending_lock:
            self._pending_schedule = factory

    def publish_diagnostics(self, settings: NodeSettings, static: dict[str, str]) -> None:
        self.settings = settings
        statuses = []
        fqn = self.node.get_fully_qualified_name()
        for cam in self.io.values():
            totals, window = cam.stats.take_window()
            values = dict(static, camera=cam.name, input_topic=cam.in_topic, input_qos=cam.qos_text(),
                          keyframe_schedule=repr(cam.engine.schedule), **cam.outputs.counters())
            msg = diagnostics_msg(self.node.get_clock().now().to_msg(), f"{fqn}: {cam.name} segmentation",
                                  str(self.engine.device), totals, window, values,
                                  self.engine.waiting(cam.name), settings.confidence_warn_below,
                                  settings.confidence_window)
            statuses.extend(msg.status)
        self._pub_diag.publish(DiagnosticArray(header=Header(stamp=self.node.get_clock().now().to_msg()),
                                               status=statuses))

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        for cam in self.io.values():
            cam.outputs.start()
        self._worker.start()

    def stop(self, timeout: float) -> bool:
        self._stopping.set()
        self.engine.close()  # wakes the worker's take(); stops each camera's schedule worker
        if self._worker.is_alive():
            self._worker.join(timeout)
        for cam in self.io.values():
            cam.outputs.stop()
        return not self._worker.is_alive()

    # -- worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            frames = self.engine.take(TAKE_TIMEOUT_S)
            if not frames:
                continue
            try:
                self._round(frames)
            except Exception as exc:
                if self._stopping.is_set() or not self.node.context.ok():
                    return  # shutting down: publishers may already be gone
                self._log("error", f"output {type(exc).__name__}",
                          f"frame round failed: {type(exc).__name__}: {exc}")

    def _apply_pending(self) -> None:
        with self._pending_lock:
            policy, self._pending_policy = self._pending_policy, None
            schedule, self._pending_schedule = self._pending_schedule, None
        if policy is not None:
            self.engine.policy = policy
        if schedule is not None:
            self.engine.set_schedule(schedule)

    def _round(self, frames: list[Pending]) -> None:
        self._apply_pending()
        ready: list[Pending] = []
        images: dict[tuple[str, int], Callable[[], np.ndarray]] = {}
        for p in frames:
            cam = self.io[p.camera]
            msg, _t = p.tag
            try:
                image = cam.to_image(msg)
            except convert.BadInputError as exc:
                n = cam.stats.bad_input()
                self._log("warning", f"{cam.name} {exc.reason}",
                          f"bad input on {cam.in_topic} ({n} so far): {exc}")
                continue
            if image.camera != cam.last_shape and (hint := large_output_hint(image.camera, os.environ)):
                cam.node.get_logger().info(hint, once=True)
            if cam.last_shape is not None and image.camera != cam.last_shape:
                cam.stats.resolution_change()
            cam.last_shape = image.camera
            ready.append(dataclasses.replace(p, image=image.rgb, camera_size=image.camera_size))
            # the viewer outputs get the camera-size pixels (a reduced decode's: decoded on demand)
            images[(p.camera, p.seq)] = image.full
        for outcome in self.engine.run_each(ready, self._process):  # published as each is done
            self._publish(outcome, images[(outcome.camera, outcome.seq)])

    def _publish(self, outcome: Outcome, rgb: Callable[[], np.ndarray]) -> None:
        cam = self.io[outcome.camera]
        msg, t_received = outcome.tag
        if outcome.error is not None:
            exc = outcome.error
            if isinstance(exc, ValueError):  # refused by the engine before any state was touched
                n = cam.stats.bad_input()
                self._log("warning", f"{cam.name} engine refused",
                          f"bad input on {cam.in_topic} ({n} so far): {exc}")
            else:
                if "cuda" in str(self.engine.device):  # as the single-camera node after a failed frame
                    import torch

                    torch.cuda.empty_cache()
                n = cam.stats.engine_error()
                self._log("error", f"{cam.name} engine {type(exc).__name__}",
                          f"engine failed on a frame of {cam.name} ({n} so far), frame skipped, that "
                          f"camera's next frame is a keyframe: {type(exc).__name__}: {exc}")
            return
        cam.publish(msg, rgb, outcome.result, t_received, self.settings)
