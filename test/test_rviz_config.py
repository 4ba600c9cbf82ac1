"""config/dcfm.rviz (rviz2 is not installable here): one enabled display, the compressed overlay (the
cheapest view that shows camera and classes), the camera and colour mask there but disabled, all on
topics the node and the launch file actually use, with a QoS that matches the node's viewer topics."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _launch_default(name: str) -> str:
    tree = ast.parse((ROOT / "launch" / "dcfm.launch.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == name):
            for kw in node.keywords:
                if kw.arg == "default_value":
                    return kw.value.value
    raise AssertionError(f"launch argument {name} not found")


def test_rviz_shows_the_compressed_overlay_and_offers_camera_and_color() -> None:
    from rclpy.qos import ReliabilityPolicy

    from dcfm_ros.node.outputs import VIEWER_QOS

    cfg = yaml.safe_load((ROOT / "config" / "dcfm.rviz").read_text())
    displays = [d for d in cfg["Visualization Manager"]["Displays"]
                if d.get("Class") == "rviz_default_plugins/Image"]
    enabled = {d["Topic"]["Value"] for d in displays if d.get("Enabled", True)}
    assert enabled == {"/segmentation/overlay/compressed"}
    topics = {d["Topic"]["Value"] for d in displays}
    assert topics == {_launch_default("image_topic"), "/segmentation/overlay/compressed",
                      "/segmentation/color/compressed"}
    outputs_src = (ROOT / "dcfm_ros" / "node" / "outputs.py").read_text()
    for topic in ("overlay/compressed", "color/compressed"):
        assert f'"{topic}"' in outputs_src, f"the node no longer publishes segmentation/{topic}"
    # A reliable reader matches the node's reliable viewer writers (and best effort would too).
    assert VIEWER_QOS.reliability == ReliabilityPolicy.RELIABLE
    for d in displays:
        if d["Topic"]["Value"].startswith("/segmentation/"):
            assert d["Topic"]["Reliability Policy"] in ("Reliable", "Best Effort")


MULTI_CAMERAS = ("front", "left", "right")  # the README's and the launch file's example


def test_multi_camera_rviz_shows_each_cameras_overlay() -> None:
    """config/dcfm_multi.rviz: one enabled Image display per camera of the example, on the topic a
    camera of a multi-camera node publishes its JPEG overlay on (<c>/segmentation/overlay/compressed),
    with the reliable QoS of the node's viewer outputs."""
    cfg = yaml.safe_load((ROOT / "config" / "dcfm_multi.rviz").read_text())
    displays = [d for d in cfg["Visualization Manager"]["Displays"]
                if d.get("Class") == "rviz_default_plugins/Image" and d.get("Enabled", True)]
    assert sorted(d["Topic"]["Value"] for d in displays) == sorted(
        f"/{c}/segmentation/overlay/compressed" for c in MULTI_CAMERAS)
    assert {d["Topic"]["Reliability Policy"] for d in displays} == {"Reliable"}
    assert len({d["Name"] for d in displays}) == len(displays)  # rviz keys panels by display name
    assert {f"{c} overlay" for c in MULTI_CAMERAS} <= set(cfg["Window Geometry"])
    assert "cameras:=[front,left,right]" in (ROOT / "config" / "dcfm_multi.rviz").read_text()
    outputs_src = (ROOT / "dcfm_ros" / "node" / "cameras.py").read_text()
    assert 'prefix=f"{name}/segmentation"' in outputs_src, "cameras no longer publish under <c>/segmentation"
