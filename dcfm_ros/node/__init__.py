"""dcfm_ros.node: the ROS 2 node (rclpy). Thin layer over dcfm_ros.engine: messages in, engine, messages out.

Modules: params (declarations, validation, engine construction), convert (message <-> numpy),
framequeue (callback -> worker hand-over), diagnostics (counters, /diagnostics), node (DCFMNode),
main (`dcfm_node` entry point), bench (`dcfm-bench-node`).
"""
