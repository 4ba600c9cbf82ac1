"""config/dcfm.rviz (rviz2 is not installable here): it must show the camera image, the overlay and
the coloured mask, on the topics the node and the launch file actually use."""

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


def test_rviz_shows_camera_overlay_and_color() -> None:
    cfg = yaml.safe_load((ROOT / "config" / "dcfm.rviz").read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    images = {d["Topic"]["Value"] for d in displays
              if d.get("Class") == "rviz_default_plugins/Image" and d.get("Enabled", True)}
    assert images == {_launch_default("image_topic"), "/segmentation/overlay", "/segmentation/color"}
    node_src = (ROOT / "dcfm_ros" / "node" / "node.py").read_text()
    for topic in ("segmentation/overlay", "segmentation/color"):
        assert f'"{topic}"' in node_src, f"the node no longer publishes {topic}"


MULTI_CAMERAS = ("front", "left", "right")  # the README's and the launch file's example


def test_multi_camera_rviz_shows_each_cameras_overlay() -> None:
    """config/dcfm_multi.rviz: one enabled Image display per camera of the example, on the topic a
    camera of a multi-camera node publishes its overlay on (<c>/segmentation/overlay), with the
    reliable QoS the node's outputs use."""
    cfg = yaml.safe_load((ROOT / "config" / "dcfm_multi.rviz").read_text())
    displays = [d for d in cfg["Visualization Manager"]["Displays"]
                if d.get("Class") == "rviz_default_plugins/Image" and d.get("Enabled", True)]
    assert sorted(d["Topic"]["Value"] for d in displays) == sorted(
        f"/{c}/segmentation/overlay" for c in MULTI_CAMERAS)
    assert {d["Topic"]["Reliability Policy"] for d in displays} == {"Reliable"}
    assert len({d["Name"] for d in displays}) == len(displays)  # rviz keys panels by display name
    assert {f"{c} overlay" for c in MULTI_CAMERAS} <= set(cfg["Window Geometry"])
    assert "cameras:=[front,left,right]" in (ROOT / "config" / "dcfm_multi.rviz").read_text()
