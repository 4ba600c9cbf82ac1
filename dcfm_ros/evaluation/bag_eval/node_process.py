"""dcfm_node as a subprocess, in a ROS domain of its own (isolated from other runs on the machine)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from dcfm_ros.data.processes import stop_process
from dcfm_ros.dds.profiles import large_messages_environment, needs_large_messages
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError, NodeFailedError

LOG_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_domain_id() -> int:
    # Not the test fixtures' 1 + pid % 101: a test that runs this in-process gets another domain.
    return 1 + (os.getpid() + 50) % 101


# Fast DDS builtin transports (FASTDDS_BUILTIN_TRANSPORTS) --transport can choose, and LARGE_SHM: the
# shipped profile with a 16 MB shared-memory segment (dcfm_ros.dds.profiles; labels of a 1080p camera
# 1.8x the frames/s). UDPv4 is the default for the reasons in README "Evaluation and demo" (transport
# figures): no shared-memory files left in /dev/shm by a killed process, and over a reliable link it
# is as fast here as the others for messages that fit a 64 kB datagram or a few.
TRANSPORTS = ("UDPv4", "DEFAULT", "SHM", "LARGE_DATA", "LARGE_SHM")
DEFAULT_TRANSPORT = "UDPv4"


def large_output_warning(camera: tuple[int, int] | None, transport: str) -> str | None:
    """The report's warning when a camera's labels (camera = (H, W)) do not fit Fast DDS's default
    shared-memory segment and the run had no profile for them; None otherwise."""
    if camera is None or transport == "LARGE_SHM" or not needs_large_messages(camera, os.environ):
        return None
    h, w = camera
    return (f"the camera's {w}x{h} labels ({h * w / 1e6:.1f} MB) do not fit Fast DDS's default 0.5 MB "
            f"shared-memory segment, so they reached this tool as UDP fragments (~30 ms each at "
            f"1920x1080), in the latencies and frames/s above; --transport LARGE_SHM runs the node "
            f"with the shipped large-messages profile, as launch's large_messages:=true does")


def choose_transport(asked: str | None) -> str:
    """--transport if given, else FASTDDS_BUILTIN_TRANSPORTS from the environment, else the default."""
    value = asked if asked is not None else os.environ.get("FASTDDS_BUILTIN_TRANSPORTS", DEFAULT_TRANSPORT)
    for t in TRANSPORTS:
        if value.upper() == t.upper():
            return t
    where = "--transport" if asked is not None else "FASTDDS_BUILTIN_TRANSPORTS"
    raise BagEvalError(f"{where} must be one of {', '.join(TRANSPORTS)}, got {value!r}")


@contextlib.contextmanager
def ros_environment(domain_id: int, transport: str = DEFAULT_TRANSPORT) -> Iterator[dict[str, str]]:
    """Set (and afterwards restore) the variables that isolate this run and choose its transport, for
    this process's rclpy and the node; yields the node's env."""
    wanted: dict[str, str | None] = {"ROS_DOMAIN_ID": str(domain_id),
                                     "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                                     "FASTDDS_BUILTIN_TRANSPORTS": transport}
    if transport == "LARGE_SHM":  # a profile, not a builtin set: the profile's transports only
        wanted.update(large_messages_environment(), FASTDDS_BUILTIN_TRANSPORTS=None)
    saved = {k: os.environ.get(k) for k in wanted}
    for k, v in wanted.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield dict(os.environ, PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send SIGTERM to the node when dcfm-bag-eval dies without the
    chance to stop it (SIGKILL), so no node outlives it (Linux only). prctl is looked up here, in
    the parent: the child only calls it between fork and exec."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def setup() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return setup



class NodeProcess:
    """dcfm_node as a subprocess; stdout+stderr in a log file."""

    def __init__(self, cmd: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(env),
                                     # a session of its own: a Ctrl-C in the terminal reaches only
                                     # dcfm-bag-eval, which then stops the node in order
                                     start_new_session=True, preexec_fn=_parent_death_signal())

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

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT, then SIGKILL after `timeout` s; returns the exit status. Signals that reach
        dcfm-bag-eval meanwhile are handled by stopping.py (only recorded), so the wait is never cut."""
        code = stop_process(self.proc, signal.SIGINT, timeout)
        self._log.close()
        return code

