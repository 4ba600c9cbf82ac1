"""The shipped Fast DDS profile for large outputs (dcfm_ros.dds): Fast DDS really loads it (a process
with it in its environment gets a 16 MB shared-memory segment instead of the 0.5 MB default), and
dcfm-bag-eval's --transport LARGE_SHM gives it to itself and the node instead of a builtin set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcfm_ros.dds.profiles import (
    LARGE_MESSAGES_PROFILE,
    PROFILE_VARIABLE,
    large_messages_environment,
    large_output_hint,
)
from dcfm_ros.evaluation.bag_eval.node_process import choose_transport, ros_environment

SHM = Path("/dev/shm")

# The child makes one participant and prints the sizes of the segment files it created.
CHILD = """
import os, sys
before = set(os.listdir("/dev/shm"))
import rclpy
rclpy.init()
node = rclpy.create_node("dcfm_profile_probe")
new = [f for f in set(os.listdir("/dev/shm")) - before if not f.endswith("_el") and "port" not in f]
print(" ".join(str(os.path.getsize(os.path.join("/dev/shm", f))) for f in new))
node.destroy_node()
rclpy.shutdown()
"""


def _segment_sizes(env: dict[str, str]) -> list[int]:
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [int(v) for v in out.stdout.split()]


@pytest.mark.ros
@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm: Fast DDS shared memory is Linux-only here")
def test_fast_dds_loads_the_large_messages_profile() -> None:
    base = {k: v for k, v in os.environ.items() if k not in ("FASTDDS_BUILTIN_TRANSPORTS", PROFILE_VARIABLE)}
    base["ROS_DOMAIN_ID"] = str(1 + (os.getpid() + 23) % 101)
    default = _segment_sizes(base)
    large = _segment_sizes({**base, **large_messages_environment()})
    assert default and max(default) < 1 << 20  # Fast DDS's own 0.5 MB segment
    assert large and max(large) >= 16 << 20  # the profile's 16 MB one


def test_bag_eval_large_shm_sets_the_profile_for_the_run_and_restores_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTDDS_BUILTIN_TRANSPORTS", "UDPv4")
    monkeypatch.delenv(PROFILE_VARIABLE, raising=False)
    assert choose_transport("large_shm") == "LARGE_SHM"
    with ros_environment(7, "LARGE_SHM") as env:
        assert env[PROFILE_VARIABLE] == str(LARGE_MESSAGES_PROFILE) and LARGE_MESSAGES_PROFILE.is_file()
        assert "FASTDDS_BUILTIN_TRANSPORTS" not in env and "FASTDDS_BUILTIN_TRANSPORTS" not in os.environ
    assert os.environ["FASTDDS_BUILTIN_TRANSPORTS"] == "UDPv4" and PROFILE_VARIABLE not in os.environ
    with ros_environment(7, "UDPv4") as env:  # the builtin sets leave a user's own profile alone
        assert env["FASTDDS_BUILTIN_TRANSPORTS"] == "UDPv4" and PROFILE_VARIABLE not in env


def test_the_node_hints_at_the_profile_for_labels_too_large_for_the_default_segment() -> None:
    hint = large_output_hint((1080, 1920), {})
    assert hint is not None and "1920x1080" in hint and "large_messages:=true" in hint
    assert str(LARGE_MESSAGES_PROFILE) in hint
    assert large_output_hint((360, 480), {}) is None  # 169 kB: fits
    assert large_output_hint((1080, 1920), {PROFILE_VARIABLE: "/etc/mine.xml"}) is None  # a profile is set
