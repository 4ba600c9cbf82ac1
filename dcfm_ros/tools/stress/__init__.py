"""Proof under load and faults: benchmark-style scripts that run the real dcfm_node as a subprocess
over real rclpy/Fast DDS and print figures (`dcfm-stress soak|fuzz|faults`). Not tests: the test
suite runs short versions of the same checks (test/test_node_hardening.py)."""
