"""The Fast DDS profile for large outputs (dcfm_node's labels and viewer images at vehicle camera sizes).

Fast DDS's shared-memory segment is 0.5 MB by default: a 1920x1080 label image (2 MB) does not fit, so
between two processes on one host it goes as 64 kB UDP fragments and takes ~34 ms; with the shipped
profile (a 16 MB segment) ~3.4 ms (docs/fast-path.md, "Large outputs between processes"). Only the
publisher needs it. It has to be in the environment before rclpy creates its context, so it is not a
node parameter: the launch file's `large_messages` and dcfm-bag-eval's `--transport LARGE_SHM` set it.
"""

from __future__ import annotations

from pathlib import Path

LARGE_MESSAGES_PROFILE = Path(__file__).with_name("large_messages.xml")
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_messages_environment() -> dict[str, str]:
    """The variables that give a process the large-messages profile."""
    return {PROFILE_VARIABLE: str(LARGE_MESSAGES_PROFILE)}
