"""A plain viewer process for `dcfm-bag-eval --viewer`: subscribes to the node's viewer topics,
deserializes every message (as rviz2 or image_view would) and counts messages and bytes per topic.

    python -m dcfm_ros.evaluation.bag_eval.viewer --out FILE --ready FILE TOPIC=TYPE [TOPIC=TYPE ...]

TYPE is `image` (sensor_msgs/Image) or `compressed` (sensor_msgs/CompressedImage). Subscriptions are
reliable, keep last 10 (rviz2's defaults are reliable, depth 5). The --ready file is written once
every subscription has matched a publisher; on SIGINT/SIGTERM the counts go to --out as JSON
({topic: {"messages": n, "bytes": serialized bytes}}; written to a temporary file and renamed).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

VIEWER_DEPTH = 10
TYPES = ("image", "compressed")


def parse_topic(text: str) -> tuple[str, str]:
    topic, sep, kind = text.rpartition("=")
    if not sep or kind not in TYPES or not topic:
        raise argparse.ArgumentTypeError(f"expected TOPIC=TYPE with TYPE one of {', '.join(TYPES)}; "
                                         f"got {text!r}")
    return topic, kind


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dcfm-bag-eval viewer", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("topics", type=parse_topic, nargs="+")
    args = p.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image

    msg_types = {"image": Image, "compressed": CompressedImage}
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("dcfm_bag_eval_viewer")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    counts: dict[str, dict[str, int]] = {t: {"messages": 0, "bytes": 0} for t, _ in args.topics}
    qos = QoSProfile(depth=VIEWER_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    subs = []
    for topic, kind in args.topics:
        msg_type = msg_types[kind]

        def cb(data: bytes, topic: str = topic, msg_type: type = msg_type) -> None:
            deserialize_message(data, msg_type)  # what a real viewer pays for
            counts[topic]["messages"] += 1
            counts[topic]["bytes"] += len(data)

        subs.append(node.create_subscription(msg_types[kind], topic, cb, qos, raw=True))
    ready = False
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)
            if not ready and all(s.get_publisher_count() > 0 for s in subs):
                ready = True
                _write_json(args.ready, {"ready": True})
    finally:
        _write_json(args.out, counts)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
