"""`dcfm_node` entry point: start the node, spin, shut down cleanly on SIGINT/SIGTERM.

Exit status: 0 after a normal shutdown, 1 when the node cannot start (bad parameter, missing or bad
model file, unknown mask class, unusable device); the reason is logged at FATAL level.

Signals are handled here, not by rclpy: `ros2 launch` forwards Ctrl-C as a second SIGINT, and with
rclpy's handler a signal that lands during shutdown raises KeyboardInterrupt wherever the main
thread happens to be (thread join, destroy_node). Here the first SIGINT/SIGTERM only asks for a stop
and every later one is absorbed (noted once in the log). Python runs signal handlers between
bytecodes only, so the executor spins in short slices (SPIN_SLICE_S) to notice the request.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from dcfm_ros.node.params import ParameterError, StartupError

SPIN_SLICE_S = 0.1
# How long the inference thread may take to finish the frame it is in before it is abandoned.
WORKER_STOP_TIMEOUT_S = 10.0


class StopRequest:
    """SIGINT/SIGTERM handler: the first one sets the event, later ones are absorbed."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signals = 0

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def ignore_from_now(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 2:  # logging from a signal handler is safe in Python (main thread)
            rclpy.logging.get_logger("dcfm_node").info(
                f"{signal.Signals(signum).name} while shutting down: ignored, already stopping")
        self.event.set()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    stop.install()
    logger = rclpy.logging.get_logger("dcfm_node")
    node = None
    executor = None
    abandoned = False
    try:
        from dcfm_ros.node.node import DCFMNode  # imports torch: after init so --ros-args errors are quick

        try:
            node = DCFMNode(viewer_args=args)
        except (ParameterError, StartupError) as exc:
            logger.fatal(f"dcfm_node cannot start: {exc}")
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        node.start()
        while not stop.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
    except ExternalShutdownException:
        pass
    finally:
        if node is not None:
            abandoned = not node.stop(WORKER_STOP_TIMEOUT_S)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        # Interpreter shutdown (torch, DDS threads) takes a while and puts Python-level signal
        # handlers back to the default, which a late SIGINT would die of (exit -2); ignored signals
        # stay ignored through it.
        stop.ignore_from_now()
    if abandoned:
        # The inference thread is still inside the engine: leave without waiting for it (an
        # interpreter shutdown under a running torch kernel is not safe).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
