"""DCFMNode: the ROS I/O around a StreamEngine. Messages in, engine call, messages out; no model logic.

Threads: the executor thread runs the camera callback (enqueue only, never waits for inference),
parameter services, the 1 Hz diagnostics timer and (qos.reliability auto) the check of the input
publishers' QoS; the inference thread converts, runs the engine and publishes labels and info; the
viewer worker (node/outputs.py, node/viewer_publisher.py) makes and publishes the viewer outputs,
newest frame only, so watching never delays the labels. Topic names are relative,
so namespaces and remapping apply. An engine exception on one frame is logged and counted, the
engine's keyframe cache is reset (the next frame is a keyframe), and the node carries on.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dcfm_ros.dds.profiles import large_output_hint
from dcfm_ros.msg import SegmentationClasses
from dcfm_ros.node import convert, reduced_decode
from dcfm_ros.node.diagnostics import NodeStats, diagnostics_msg
from dcfm_ros.node.faults import engine_call
from dcfm_ros.node.framequeue import FrameQueue
from dcfm_ros.node.inputqos import BEST_EFFORT, input_qos, match_publishers
from dcfm_ros.node.logthrottle import ReasonThrottle
from dcfm_ros.node.outputs import CameraOutputs, ViewerParticipant
from dcfm_ros.node.params import (
    ParameterError,
    StartupError,
    apply_changes,
    build_engine,
    build_multi_engine,
    declare_parameters,
    read_settings,
)

if TYPE_CHECKING:
    from dcfm_ros.engine import KeyframePolicy, StreamEngine
    from dcfm_ros.engine.schedules import KeyframeSchedule
    from dcfm_ros.node.cameras import Cameras

NODE_NAME = "dcfm_node"
DIAGNOSTICS_PERIOD_S = 1.0
LOG_THROTTLE_S = 5.0
# qos.reliability auto: how often the publishers on the input topic are looked at.
QOS_CHECK_PERIOD_S = 0.5
# frame_id as logged (a hostile 10 kB frame_id must not flood the log).
LOG_FRAME_ID_CHARS = 64
# The class map: latched, a subscriber that joins late still gets the last one.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


class DCFMNode(Node):
    """Raises ParameterError / StartupError (after cleaning up) when it cannot start."""

    def __init__(self, viewer_args: list[str] | None = None, **kwargs: Any) -> None:
        """viewer_args: the process's ROS arguments for the viewer participant (None: sys.argv)."""
        super().__init__(NODE_NAME, **kwargs)
        self._viewer_args = sys.argv if viewer_args is None else viewer_args
        self._viewer_participant: ViewerParticipant | None = None
        try:
            declare_parameters(self)
            self._settings = read_settings(self)
            self._cameras: Cameras | None = None
            if self._settings.cameras:  # several cameras, one model: node/cameras.py
                self._setup_cameras()
            else:
                self.engine: StreamEngine = build_engine(self._settings)
                self._setup()
        except BaseException:
            self.destroy_node()
            raise

    def destroy_node(self) -> None:
        super().destroy_node()
        if self._viewer_participant is not None:
            self._viewer_participant.close()
            self._viewer_participant = None

    def _setup_cameras(self) -> None:
        from dcfm_ros.node.cameras import Cameras

        s = self._settings
        self._throttle = ReasonThrottle(LOG_THROTTLE_S)
        self.multi = build_multi_engine(s)
        try:
            single, faults = engine_call(lambda args: args[0].process(*args[1:]))
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        if faults:
            self.get_logger().warning(f"fault injection on: engine calls {faults} will raise")
        self._viewer_participant = ViewerParticipant(self, self._viewer_args)
        # Without fault injection the engine is called directly, so a round can run as one batch.
        process = (lambda engine, image, camera: single((engine, image, camera))) if faults else None
        self._cameras = Cameras(self, self._viewer_participant.node, s, self.multi, LATCHED_QOS,
                                process, self._log_throttled)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        m = self.multi
        self.get_logger().info(
            f"model {s.model_path} ({m.num_classes} classes, input {m.input_size[0]}x{m.input_size[1]}) "
            f"on {m.backend.describe()}, shared by {len(m.cameras)} cameras; keyframe policy {m.policy!r}, "
            f"schedule {s.keyframe.schedule}; drop_policy {s.drop_policy}; camera batching "
            f"{'on' if m.batch else 'off'} ({s.camera_batching}); {self._cameras.describe()}")

    def _setup(self) -> None:
        # Not imported at module level: the engine loads torch, and main imports this module before
        # the parameters are checked (most bad parameters are then reported in a fraction of a second).
        s = self._settings
        engine = self.engine
        self.stats = NodeStats()
        self._policy_lock = threading.Lock()
        self._pending_policy: KeyframePolicy | None = None
        self._pending_schedule: KeyframeSchedule | None = None
        self._last_shape: tuple[int, int] | None = None
        self._stopping = threading.Event()
        self._throttle = ReasonThrottle(LOG_THROTTLE_S)
        try:
            self._process, faults = engine_call(
                lambda image: engine.process(image.rgb, image.camera_size))
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        if faults:
            self.get_logger().warning(f"fault injection on: engine calls {faults} will raise")

        # The per-camera output path: labels and info at once, viewer outputs on their own worker.
        self._viewer_participant = ViewerParticipant(self, self._viewer_args)
        self._outputs = CameraOutputs(self, self._viewer_participant.node, self.stats, engine.palette,
                                      list(engine.class_names), s.mask_classes, self._viewer_failed)
        self._pub_classes = self.create_publisher(SegmentationClasses, "segmentation/classes", LATCHED_QOS)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        header = Header(stamp=self.get_clock().now().to_msg())
        self._pub_classes.publish(convert.classes_msg(engine.class_names, engine.palette, header))

        self._queue: FrameQueue[tuple[Image | CompressedImage, float]] = FrameQueue(
            keep_latest=s.drop_policy == "latest")
        self._to_image = reduced_decode.decoder(s.image_transport,
                                                engine.input_size if s.reduced_decode else None)
        if s.image_transport == "compressed":
            self._in_type, in_topic = CompressedImage, "image/compressed"
        else:
            self._in_type, in_topic = Image, "image"
        self._in_topic = self.resolve_topic_name(in_topic)
        self._reliability, self._qos_why = s.qos_reliability, "set by qos.reliability"
        if s.qos_reliability == "auto":
            self._reliability, self._qos_why = match_publishers(
                self.get_publishers_info_by_topic(self._in_topic))
        self._sub = self._subscribe()
        if s.qos_reliability == "auto":
            self._qos_timer = self.create_timer(QOS_CHECK_PERIOD_S, self._check_input_qos,
                                                clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._warn_if_lossy()

        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        # Steady clock: diagnostics keep coming with use_sim_time while a bag is paused.
        self._diag_timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._worker = threading.Thread(target=self._run, name="dcfm-inference", daemon=True)
        self.get_logger().info(
            f"model {s.model_path} ({engine.num_classes} classes, input {engine.input_size[0]}x"
            f"{engine.input_size[1]}) on {engine.backend.describe()}; labels_at {engine.labels_at}"
            f"{'' if engine.graph_io else ' (exact at the camera size: no graph I/O here)'}; keyframe policy "
            f"{engine.policy!r}, schedule {engine.schedule!r}; subscribed to {self._sub.topic_name} "
            f"({s.image_transport}{self._decode_text()}, "
            f"{self._qos_text()}, depth {s.qos_depth}); drop_policy {s.drop_policy}")

    def _decode_text(self) -> str:
        if self._settings.image_transport != "compressed":
            return ""
        if not self._settings.reduced_decode:
            return ", JPEG decoded in full"
        h, w = self.engine.input_size
        return f", JPEG of >= {2 * h - 1}x{2 * w - 1} (H x W) decoded reduced"

    # -- input subscription ------------------------------------------------------------------------

    def _subscribe(self) -> Any:
        # auto: a best-effort publisher that appears while the reader is reliable does not match;
        # rclpy's default handler would log that as a warning, but the next check switches anyway.
        events = (SubscriptionEventCallbacks(incompatible_qos=lambda _event: None)
                  if self._settings.qos_reliability == "auto" else None)
        return self.create_subscription(self._in_type, self._in_topic, self._on_image,
                                        input_qos(self._reliability, self._settings.qos_depth),
                                        event_callbacks=events)

    def _qos_text(self) -> str:
        mode = self._settings.qos_reliability
        return f"{self._reliability} (auto: {self._qos_why})" if mode == "auto" else self._reliability

    def _check_input_qos(self) -> None:
        """qos.reliability auto: match the publishers now on the topic; a new subscription on a change."""
        reliability, why = match_publishers(self.get_publishers_info_by_topic(self._in_topic))
        if reliability == self._reliability:
            self._qos_why = why
            return
        old = self._reliability
        self._reliability, self._qos_why = reliability, why
        self.destroy_subscription(self._sub)
        self._sub = self._subscribe()
        self.stats.qos_change()
        self.get_logger().info(f"input QoS {old} -> {reliability} on {self._in_topic} ({why})")
        self._warn_if_lossy()

    def _warn_if_lossy(self) -> None:
        if self._reliability == BEST_EFFORT and self._settings.drop_policy == "none":
            self.get_logger().warning(
                f"drop_policy none with a best-effort input ({self._qos_text()}): the node processes "
                f"every frame it receives, but the transport may still lose frames (large images "
                f"especially); a reliable publisher avoids that")

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._cameras is not None:
            self._cameras.start()
            return
        self._outputs.start()
        self._worker.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop the worker (after the frame in progress) and wait for it; False when it is still in
        that frame after `timeout` s (then it is abandoned: a daemon thread that publishes nothing)."""
        if self._cameras is not None:
            if not self._cameras.stop(timeout):
                self.get_logger().warning(f"inference thread still in a frame after {timeout} s: abandoned")
                return False
            return True
        self._stopping.set()
        self._queue.close()
        if self._worker.is_alive():
            self._worker.join(timeout)
            if self._worker.is_alive():
                self.get_logger().warning(f"inference thread still in a frame after {timeout} s: abandoned")
                self._outputs.stop()
                return False
        self._outputs.stop()
        self.engine.close()  # a background schedule's worker
        return True

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
        if new.keyframe.policy_fields() != self._settings.keyframe.policy_fields():
            policy = new.keyframe.make_policy()
            if self._cameras is not None:
                self._cameras.set_policy(policy)  # every camera, before the worker's next round
            else:
                with self._policy_lock:
                    self._pending_policy = policy  # the worker swaps it in before its next frame
            self.get_logger().info(f"keyframe policy is now {policy!r}")
        if (new.keyframe.schedule, new.keyframe.spread) != (self._settings.keyframe.schedule,
                                                            self._settings.keyframe.spread):
            if self._cameras is not None:
                self._cameras.set_schedule(new.keyframe.make_schedule)  # one instance per camera
                self.get_logger().info(f"keyframe schedule is now {new.keyframe.schedule} on every camera")
                self._settings = new
                return
            schedule = new.keyframe.make_schedule()
            with self._policy_lock:
                self._pending_schedule = schedule
            self.get_logger().info(f"keyframe schedule is now {schedule!r}")
        self._settings = new

    def _publish_diagnostics(self) -> None:
        s = self._settings
        if self._cameras is not None:
            m = self.multi
            self._cameras.publish_diagnostics(s, {
                "device": str(m.device), "precision": m.backend.precision, "backend": m.backend.name,
                "keyframe_policy": repr(m.policy), "drop_policy": s.drop_policy,
                "image_transport": s.image_transport, "cameras": ",".join(m.cameras),
                "input_size": f"{m.input_size[0]}x{m.input_size[1]}", "model": str(s.model_path)})
            return
        totals, window = self.stats.take_window()
        static = {
            "device": str(self.engine.device),
            "precision": self.engine.precision,
            "backend": self.engine.backend.name,
            "keyframe_policy": repr(self.engine.policy),
            "keyframe_schedule": repr(self.engine.schedule),
            "drop_policy": s.drop_policy,
            "image_transport": s.image_transport,
            "input_qos": self._qos_text(),
            "input_size": f"{self.engine.input_size[0]}x{self.engine.input_size[1]}",
            "model": str(s.model_path),
            "viewer_rate": f"{s.viewer_rate:g}",
            **self._outputs.counters(),
        }
        self._pub_diag.publish(diagnostics_msg(
            self.get_clock().now().to_msg(), f"{self.get_fully_qualified_name()}: segmentation",
            str(self.engine.device),
            totals, window, static, len(self._queue), s.confidence_warn_below, s.confidence_window))

    # -- worker thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._handle(*item)
            except Exception as exc:
                if self._stopping.is_set() or not self.context.ok():
                    return  # shutting down: publishers may already be gone
                n = self.stats.error()
                self._log_throttled("error", f"output {type(exc).__name__}",
                                    f"frame failed ({n} so far): {type(exc).__name__}: {exc}")

    def _log_throttled(self, level: str, reason: str, text: str) -> None:
        held = self._throttle.admit(reason)
        if held is None:
            return
        if held:
            text += f" [{held} more of these in the last {LOG_THROTTLE_S:g} s not logged]"
        # rclpy fixes a severity per call site, so each level gets its own line.
        if level == "error":
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    def _handle(self, msg: Image | CompressedImage, t_received: float) -> None:
        try:
            image = self._to_image(msg)
        except convert.BadInputError as exc:
            n = self.stats.bad_input()
            frame_id = msg.header.frame_id
            if len(frame_id) > LOG_FRAME_ID_CHARS:
                frame_id = f"{frame_id[:LOG_FRAME_ID_CHARS]}... ({len(frame_id)} chars)"
            self._log_throttled("warning", exc.reason,
                                f"bad input on {self._in_topic} (frame_id '{frame_id}', {n} so far): {exc}")
            return
        with self._policy_lock:
            policy, self._pending_policy = self._pending_policy, None
            schedule, self._pending_schedule = self._pending_schedule, None
        if policy is not None:
            self.engine.policy = policy
        if schedule is not None:
            self.engine.schedule = schedule
        shape = image.camera
        if shape != self._last_shape and (hint := large_output_hint(shape, os.environ)):
            self.get_logger().info(hint, once=True)
        if self._last_shape is not None and shape != self._last_shape:
            self.stats.resolution_change()
            self.get_logger().warning(f"input resolution changed from {self._last_shape[1]}x"
                                      f"{self._last_shape[0]} to {shape[1]}x{shape[0]}; this frame is a "
                                      f"keyframe", throttle_duration_sec=LOG_THROTTLE_S)
        self._last_shape = shape

        try:
            result = self._process(image)
        except Exception as exc:  # out of memory, a kernel error, ...: this frame only
            self._engine_failed(exc)
            return
        confidence = result.confidence.mean if result.confidence is not None else float("nan")
        counters = self.stats.processed(result.is_keyframe, result.timings_ms.get("total", 0.0),
                                        confidence, self._settings.confidence_window)
        # a reduced decode's camera-size pixels are decoded by the viewer worker, if a viewer needs them
        self._outputs.publish(msg.header, image.full, result, t_received, counters, self._settings)

    def _viewer_failed(self, exc: Exception) -> None:
        # From the viewer worker: a viewer message that could not be made or published.
        n = self.stats.error()
        self._log_throttled("error", f"viewer {type(exc).__name__}",
                            f"viewer output failed ({n} so far): {type(exc).__name__}: {exc}")

    def _engine_failed(self, exc: Exception) -> None:
        # The engine commits its state only after a frame went through, but after e.g. an out of
        # memory the cached common feature is not trusted either: start over from a keyframe.
        self.engine.reset()
        if "cuda" in str(self.engine.device):
            import torch

            torch.cuda.empty_cache()
        n = self.stats.engine_error()
        self._log_throttled("error", f"engine {type(exc).__name__}",
                            f"engine failed on a frame ({n} so far), frame skipped, next frame is a "
                            f"keyframe: {type(exc).__name__}: {exc}")
