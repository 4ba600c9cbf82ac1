"""The layer rule: nothing below the node imports rclpy (model, engine, training, offline evaluation)."""

from __future__ import annotations

import subprocess
import sys

import pytest

BELOW_NODE = [
    "dcfm_ros.model",
    "dcfm_ros.engine",
    "dcfm_ros.tools.bench",
    "dcfm_ros.training",
    "dcfm_ros.training.train",
    "dcfm_ros.data.metrics",
    "dcfm_ros.evaluation.evaluate",
]


@pytest.mark.parametrize("module", BELOW_NODE)
def test_module_does_not_import_rclpy(module: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        "bad = sorted(m for m in sys.modules if m == 'rclpy' or m.startswith('rclpy.')); "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{module} pulled in rclpy: {proc.stdout.strip()} {proc.stderr[-500:]}"
