"""The Fast DDS profile for large outputs (dcfm_node's labels and viewer images at vehicle camera sizes).

Fast DDS's shared-memory segment is 0.5 MB by default: a 1920x1080 label image (2 MB) does not fit, so
between two processes on one host it goes as 64 kB UDP fragments and takes ~34 ms; with the shipped
profile (a 16 MB segment) ~3.4 ms (docs/fast-path.md, "Large outputs between processes"). Only the
publisher needs it. It has to be in the environment before rclpy creates its context, so it is not a
node parameter: the launch file's `large_messages` and dcfm-bag-eval's `--transport LARGE_SHM` set it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

LARGE_MESSAGES_PROFILE = Path(__file__).with_name("large_messages.xml")
PROFILE_VARIABLE = "FASTDDS_DEFAULT_PROFILES_FILE"


def large_messages_environment() -> dict[str, str]:
    """The variables that give a process the large-messages profile."""
    return {PROFILE_VARIABLE: str(LARGE_MESSAGES_PROFILE)}


# Fast DDS's own shared-memory segment: a sample larger than this goes between processes as UDP
# fragments whatever the builtin transports
DEFAULT_SEGMENT_BYTES = 512 * 1024


def needs_large_messages(labels_hw: tuple[int, int], environ: Mapping[str, str]) -> bool:
    """A camera's label image does not fit Fast DDS's default segment and the environment names no
    profile of its own."""
    return labels_hw[0] * labels_hw[1] > DEFAULT_SEGMENT_BYTES and not environ.get(PROFILE_VARIABLE)


def large_output_hint(labels_hw: tuple[int, int], environ: Mapping[str, str]) -> str | None:
    """What the node tells the user where `needs_large_messages`; None when there is nothing to say."""
    if not needs_large_messages(labels_hw, environ):
        return None
    h, w = labels_hw
    return (f"labels of {w}x{h} ({h * w / 1e6:.1f} MB) do not fit Fast DDS's default 0.5 MB shared-memory "
            f"segment: other processes on this host get them as UDP fragments (~34 ms at 1920x1080 "
            f"instead of ~3); launch with large_messages:=true or set {PROFILE_VARIABLE}="
            f"{LARGE_MESSAGES_PROFILE}")
