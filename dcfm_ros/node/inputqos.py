"""The image subscription's QoS, and for qos.reliability 'auto' the choice rosbag2 makes when it records.

auto: reliable when every publisher on the topic offers reliable, best effort as soon as one offers
best effort (a reliable reader does not match a best-effort writer at all). With no publisher yet,
reliable: the first reliable publisher then loses nothing, and a best-effort one is seen at the next
check and matched by a new subscription. Why not always best effort: large images travel as many
fragments, a best-effort reader loses the whole frame when one fragment is lost, and between two
processes here that lost most 640x480 frames; reliable resends the fragment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABLE = "reliable"
BEST_EFFORT = "best_effort"


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """Keep last `depth`, volatile, with the given reliability ('reliable' or 'best_effort')."""
    policy = ReliabilityPolicy.RELIABLE if reliability == RELIABLE else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(depth=depth, reliability=policy, history=HistoryPolicy.KEEP_LAST,
                      durability=DurabilityPolicy.VOLATILE)


def match_publishers(publishers: Sequence[Any]) -> tuple[str, str]:
    """(reliability, why) for auto mode from `node.get_publishers_info_by_topic(topic)`'s entries."""
    if not publishers:
        return RELIABLE, "no publisher yet"
    best_effort = [p for p in publishers if p.qos_profile.reliability != ReliabilityPolicy.RELIABLE]
    if not best_effort:
        return RELIABLE, f"{len(publishers)} publisher(s), all reliable"
    names = ", ".join(sorted({_name(p) for p in best_effort}))
    return BEST_EFFORT, f"{len(best_effort)} of {len(publishers)} publisher(s) best effort ({names})"


def _name(info: Any) -> str:
    ns = info.node_namespace.rstrip("/")
    return f"{ns}/{info.node_name}"
