"""`dcfm_node` entry point: start the node, spin, shut down cleanly on SIGINT/SIGTERM.

Exit status: 0 after a normal shutdown, 1 when the node cannot start (bad parameter, missing or bad
model file, unknown mask class, unusable device); the reason is logged at FATAL level.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from dcfm_ros.node.params import ParameterError, StartupError


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    rclpy.init(args=args)
    logger = rclpy.logging.get_logger("dcfm_node")
    node = None
    executor = None
    try:
        from dcfm_ros.node.node import DCFMNode  # imports torch: after init so --ros-args errors are quick

        try:
            node = DCFMNode()
        except (ParameterError, StartupError) as exc:
            logger.fatal(f"dcfm_node cannot start: {exc}")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        node.start()
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
