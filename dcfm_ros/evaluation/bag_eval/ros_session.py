"""dcfm-bag-eval's own ROS participants (the player, the viewer recorder): one rclpy context, node and
single-threaded executor each, made and torn down in one place."""

from __future__ import annotations

from typing import Any


class RosSession:
    """A private rclpy context on `domain_id` with one node `name` on its own executor. No rclpy
    signal handlers: dcfm-bag-eval's own (stopping.py) decide what a signal does. close() once."""

    def __init__(self, name: str, domain_id: int) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions

        self._ctx = Context()
        rclpy.init(context=self._ctx, domain_id=domain_id, signal_handler_options=SignalHandlerOptions.NO)
        self.node: Any = rclpy.create_node(name, context=self._ctx)
        self.executor: Any = SingleThreadedExecutor(context=self._ctx)
        self.executor.add_node(self.node)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self._ctx)
