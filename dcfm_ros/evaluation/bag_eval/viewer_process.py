"""The viewer process of `dcfm-bag-eval --viewer` (bag_eval/viewer.py) as a subprocess of a run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.bag_eval.errors import NodeFailedError


class ViewerProcess:
    """The viewer (bag_eval/viewer.py) as a subprocess in the run's ROS environment."""

    def __init__(self, topics: list[tuple[str, str]], env: Mapping[str, str], out_dir: Path) -> None:
        self.out = out_dir / "viewer_counts.json"
        self.ready = out_dir / "viewer_ready.json"
        for p in (self.out, self.ready):
            p.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "dcfm_ros.evaluation.bag_eval.viewer", "--out", str(self.out),
               "--ready", str(self.ready), *(f"{t}={k}" for t, k in topics)]
        self.log_path = out_dir / "viewer.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self, node: Any, timeout: float, should_stop: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            node.check("waiting for the viewer process")
            if self.proc.poll() is not None:
                raise NodeFailedError(f"the viewer process exited with {self.proc.returncode}: "
                                      f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline or should_stop():
                raise NodeFailedError(f"the viewer process did not match the node's topics within "
                                      f"{timeout:.0f} s ({self.log_path})")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any] | None:
        """Stop it; its counts with bytes per message, or None when it wrote none."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            counts = json.loads(self.out.read_text())
        except (OSError, ValueError):
            return None
        for c in counts.values():
            c["bytes_per_message"] = c["bytes"] / c["messages"] if c["messages"] else None
        return counts
