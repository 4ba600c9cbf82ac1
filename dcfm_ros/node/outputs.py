"""One camera's outputs: the robot's topics published at once, the viewer topics handed to a worker.

`CameraOutputs.publish(header, rgb, result, ...)` is the whole per-frame output path of one camera
(a node with several cameras makes one per camera, each with its own topic prefix):
1. segmentation/labels, then segmentation/info, from the calling (inference) thread, as soon as the
   labels exist: nothing a viewer subscribes to comes before them.
2. The viewer topics (color, overlay, their /compressed twins, confidence, masks) are offered to a
   ViewerPublisher: made and published on its worker, latest-only per topic, only for topics with a
   subscriber, at most viewer_rate times a second.

The viewer publishers live on a node of their own in a ROS context of its own (`ViewerParticipant`),
so on a DDS participant of its own with its own sockets: measured, ~1 MB of viewer images per frame
sent through the node's participant made some labels arrive up to 3 s late (the next heartbeat of
the labels writer) though the node had published them on time (docs/viewers.md).

Viewer topic QoS: reliable, keep last 1, volatile. rviz2's Image display subscribes reliable (depth
5) by default and a best-effort writer would not match it; keep last 1 means the writer never holds
a backlog for a slow reader (best-effort readers match as well). Compressed topics are named and
formatted as image_transport's compressed plugin does (`<topic>/compressed`, format
"rgb8; jpeg compressed bgr8"), so image_transport subscribers (rviz2 with the compressed transport,
image_view, rqt_image_view) decode them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import rclpy
from rclpy.context import Context
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image

from dcfm_ros.msg import SegmentationInfo
from dcfm_ros.node import convert
from dcfm_ros.node.params import StartupError, mask_topic_suffix
from dcfm_ros.node.viewer_publisher import (
    ViewerFrame,
    ViewerPublisher,
    ViewerTopic,
    encode_jpeg,
    encode_png,
)

if TYPE_CHECKING:
    from rclpy.node import Node
    from std_msgs.msg import Header

    from dcfm_ros.engine import FrameResult
    from dcfm_ros.node.diagnostics import NodeStats
    from dcfm_ros.node.params import NodeSettings

# The robot's outputs: reliable, keep last 10 (ROS default, as image_pipeline publishers).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
# Viewer outputs (module docstring).
VIEWER_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.VOLATILE)
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"
PNG_FORMAT = "rgb8; png compressed bgr8"


def _image_maker(make: Callable[[ViewerFrame, convert.ImageBuffer], Image]) -> Callable[[ViewerFrame], Image]:
    # One buffer per topic, used by the worker thread only (publish() serialises synchronously).
    buf = convert.ImageBuffer()
    return lambda frame: make(frame, buf)


def _compressed(frame: ViewerFrame, fmt: str, data: bytes) -> CompressedImage:
    msg = CompressedImage(header=frame.header, format=fmt)
    msg.data = data
    return msg


class ViewerParticipant:
    """A node `<name>_viewers` in a context (DDS participant) of its own, with the process's ROS
    arguments (namespace and remappings apply as to the main node). Never spun: it only publishes."""

    def __init__(self, parent: Node, args: list[str] | None) -> None:
        self.context = Context()
        rclpy.init(args=args, context=self.context, domain_id=parent.context.get_domain_id(),
                   signal_handler_options=SignalHandlerOptions.NO)
        try:
            self.node = rclpy.create_node(f"{parent.get_name()}_viewers", context=self.context)
        except BaseException:
            rclpy.try_shutdown(context=self.context)
            raise

    def close(self) -> None:
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class CameraOutputs:
    """The publishers and the per-frame output path of one camera (module docstring). Labels and info
    are published by `node`, the viewer outputs by `viewer_node` (a ViewerParticipant's node)."""

    def __init__(self, node: Node, viewer_node: Node, stats: NodeStats, palette: Any, class_names: list[str],
                 mask_classes: tuple[str, ...], on_error: Callable[[Exception], None],
                 prefix: str = "segmentation") -> None:
        self._node, self._stats, self._palette = node, stats, palette
        self._pub_labels = node.create_publisher(Image, f"{prefix}/labels", OUTPUT_QOS)
        self._pub_info = node.create_publisher(SegmentationInfo, f"{prefix}/info", OUTPUT_QOS)
        self._buf_labels = convert.ImageBuffer()

        def viewer(name: str, msg_type: type, topic: str, make: Callable[[ViewerFrame], Any]) -> ViewerTopic:
            pub = viewer_node.create_publisher(msg_type, f"{prefix}/{topic}", VIEWER_QOS)
            return ViewerTopic(name, pub, make)

        topics = [
            viewer("color", Image, "color",
                   _image_maker(lambda f, buf: convert.rgb_to_msg(f.color, f.header, buf))),
            viewer("color_compressed", CompressedImage, "color/compressed",
                   lambda f: _compressed(f, PNG_FORMAT, encode_png(f.color))),
            viewer("overlay", Image, "overlay",
                   _image_maker(lambda f, buf: convert.rgb_to_msg(f.overlay, f.header, buf))),
            viewer("overlay_compressed", CompressedImage, "overlay/compressed",
                   lambda f: _compressed(f, JPEG_FORMAT, encode_jpeg(f.overlay, f.jpeg_quality))),
            viewer("confidence", Image, "confidence", _image_maker(
                lambda f, buf: None if f.confidence_u8 is None else convert.confidence_to_msg(
                    f.confidence_u8, f.labels.shape[:2], f.header, buf))),
        ]
        for name in mask_classes:
            suffix = mask_topic_suffix(name)
            class_id = class_names.index(name)
            topics.append(viewer(f"mask_{suffix}", Image, f"masks/{suffix}", _image_maker(
                lambda f, buf, c=class_id: convert.mask_to_msg(f.labels, c, f.header, buf))))
        try:
            self.viewers = ViewerPublisher(topics, stats.published, on_error)
        except ValueError as exc:  # a bad DCFM_NODE_VIEWER_DELAY_S
            raise StartupError(str(exc)) from exc

    def start(self) -> None:
        self.viewers.start()

    def stop(self) -> None:
        self.viewers.stop()

    def publish(self, header: Header, rgb: np.ndarray | Callable[[], np.ndarray], result: FrameResult,
                t_received: float, counters: tuple[int, ...], settings: NodeSettings) -> None:
        """One frame's outputs (module docstring); called on the inference thread."""
        published = []
        if self._pub_labels.get_subscription_count() > 0:
            self._pub_labels.publish(convert.labels_to_msg(result.labels, header, self._buf_labels))
            published.append("labels")
        # End to end from the camera stamp; undefined for unstamped images. Plain integers: rclpy's
        # Time refuses the negative stamps a message may carry.
        stamp_ns = int(header.stamp.sec) * 10**9 + int(header.stamp.nanosec)
        now_ns = self._node.get_clock().now().nanoseconds
        e2e = (now_ns - stamp_ns) / 1e6 if stamp_ns else float("nan")
        self._stats.latency((time.perf_counter() - t_received) * 1000.0, e2e)
        if self._pub_info.get_subscription_count() > 0:
            self._pub_info.publish(convert.info_msg(header, result, e2e, *counters))
            published.append("info")
        self._stats.published(published)

        def frame() -> ViewerFrame:
            # Copies: the engine may reuse its output arrays for the next frame; rgb is the input
            # frame's own array (from the message), which nothing writes to, or the callable that
            # decodes it in full (a reduced decode).
            conf = result.confidence.map_u8.copy() if result.confidence is not None else None
            return ViewerFrame(header, rgb, result.labels.copy(), self._palette, settings.overlay_alpha,
                               settings.jpeg_quality, conf)

        self.viewers.offer(frame, settings.viewer_rate)

    def counters(self) -> dict[str, str]:
        return self.viewers.counters()

