"""dcfm_node on `backend: onnxruntime`, end to end: the real node as a subprocess, real rclpy and Fast
DDS, the shipped CamVid model on real demo frames; its labels against the in-process eager torch engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Harness, NodeProcess
from test_runtimes import SHIPPED, agreement, demo_frames

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_torch_thread")]

SIZE = (120, 160)  # the shipped model at a reduced input size: real labels, short test
WAIT_S = 120.0


def test_node_on_onnxruntime_gives_the_torch_labels(ros_context: Any, tmp_path: Path) -> None:
    from dcfm_ros.msg import SegmentationInfo
    from sensor_msgs.msg import Image

    from dcfm_ros.engine import FixedInterval, StreamEngine
    from dcfm_ros.model import load_checkpoint

    frames = demo_frames(6, step=8)
    proc = NodeProcess({"model": str(SHIPPED), "backend": "onnxruntime", "device": "cpu",
                        "input_size": list(SIZE), "drop_policy": "none", "qos.reliability": "reliable",
                        "qos.depth": 50, "keyframe.policy": "fixed", "keyframe.interval": 2,
                        # exact labels, as torch's (auto would make them at 120x160: the camera has 9x
                        # its pixels)
                        "labels_at": "camera"}, tmp_path, "ort",
                       ros_args=("-r", "__ns:=/ort"))
    h = Harness(ros_context, "tester_ort")
    h.watch = proc
    try:
        labels_box = h.subscribe("/ort/segmentation/labels", Image)
        info_box = h.subscribe("/ort/segmentation/info", SegmentationInfo)
        pub = h.publisher("/ort/image", Image)
        h.wait_discovery((pub,), timeout=WAIT_S)
        for i, rgb in enumerate(frames):
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
            msg.data = rgb.tobytes()
            msg.header.stamp.sec, msg.header.frame_id = i + 1, "camera"
            pub.publish(msg)
        h.spin_until(lambda: len(labels_box) >= len(frames) and len(info_box) >= len(frames), WAIT_S,
                     "labels of every frame")
        assert "onnxruntime" in proc.output()
    finally:
        proc.stop()
        h.close()
    by_stamp = {m.header.stamp.sec: m for m in labels_box}
    got = [np.frombuffer(bytes(by_stamp[i + 1].data), np.uint8).reshape(frames[i].shape[:2])
           for i in range(len(frames))]
    model, _ = load_checkpoint(SHIPPED)
    ref_engine = StreamEngine(model, FixedInterval(2), input_size=SIZE, backend="torch")
    ref = [ref_engine.process(f) for f in frames]
    infos = {m.header.stamp.sec: m for m in info_box}
    assert [infos[i + 1].is_keyframe for i in range(len(frames))] == [r.is_keyframe for r in ref]
    assert agreement([r.labels for r in ref], got) >= 0.999
