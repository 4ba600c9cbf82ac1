"""dcfm_node as a subprocess, in a ROS domain of its own (isolated from other runs on the machine)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from dcfm_ros.evaluation.bag_eval.errors import NodeFailedError

LOG_TAIL_LINES = 40


def default_domain_id() -> int:
    # Not the test fixtures' 1 + pid % 101: a test that runs this in-process gets another domain.
    return 1 + (os.getpid() + 50) % 101


@contextlib.contextmanager
def ros_environment(domain_id: int) -> Iterator[dict[str, str]]:
    """Set (and afterwards restore) the variables that isolate this run; yields the node's env."""
    wanted = {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    # UDPv4 only: no shared-memory files left behind in /dev/shm if a process is killed.
    wanted.setdefault("FASTDDS_BUILTIN_TRANSPORTS", os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4"))
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class NodeProcess:
    """dcfm_node as a subprocess; stdout+stderr in a log file."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(env))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) if text else "(no output)"

    def check(self, doing: str) -> None:
        if not self.alive():
            raise NodeFailedError(f"dcfm_node exited with status {self.proc.returncode} while {doing}; the "
                                  f"end of its log ({self.log_path}):\n{self.tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

