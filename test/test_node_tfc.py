"""TFC and nonkey_blend through the real node (subprocess, rclpy over Fast DDS): a TFC checkpoint
loads and runs in dcfm_node with its own blend, and a DCFM node with nonkey_blend cosine publishes
exactly what an in-process engine with the same blend computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_CLASSES, TINY_INPUT_SIZE, TINY_PALETTE
from test_node import OUT, NodeUnderTest, raw_msg, texture

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_torch_thread")]

INTERVAL = 3


def pan(n: int) -> list[np.ndarray]:
    base = texture(5, (60, 160))
    return [np.ascontiguousarray(base[:, 6 * i: 6 * i + 80]) for i in range(n)]


@pytest.fixture(scope="module")
def tfc_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random TFC (EfficientNet-Lite0) with the tiny 5-class set at 64x96."""
    import torch

    from dcfm_ros.model import DCFMConfig, save_checkpoint
    from dcfm_ros.model.tfc import build_tfc

    torch.manual_seed(3)
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=len(TINY_CLASSES),
                        class_names=TINY_CLASSES, palette=TINY_PALETTE, input_size=TINY_INPUT_SIZE,
                        head="linear")
    path = tmp_path_factory.mktemp("tfc") / "tfc.safetensors"
    save_checkpoint(path, build_tfc(config))
    return path


def _node(ctx: Any, log_dir: Path, ns: str, checkpoint: Path, blend: str) -> NodeUnderTest:
    from dcfm_ros.msg import SegmentationInfo
    from sensor_msgs.msg import Image

    params = {"drop_policy": "none", "qos.reliability": "reliable", "qos.depth": 50,
              "keyframe.policy": "fixed", "keyframe.interval": INTERVAL, "device": "cpu",
              "nonkey_blend": blend}
    return NodeUnderTest(ctx, log_dir, ns, params, checkpoint,
                         {OUT + "labels": Image, OUT + "info": SegmentationInfo})


def test_tfc_checkpoint_runs_in_the_node_with_its_blend(ros_context: Any, tfc_checkpoint: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    from dcfm_ros.model.tfc import TFC

    node = _node(ros_context, tmp_path_factory.mktemp("node_tfc"), "/tfc", tfc_checkpoint, "auto")
    try:
        assert isinstance(node.ref.model, TFC)
        assert str(node.ref.blend.spec) == "cosine:feature"
        frames = pan(2 * INTERVAL)
        keys = [node.send(raw_msg(f, "rgb8"), f) for f in frames]
        for key in keys:
            node.check_labels(key, (60, 80))  # equal to the in-process engine's, keyframe flags too
        flags = [node.find(OUT + "info", k).is_keyframe for k in keys]
        assert flags == [True, False, False, True, False, False]
        node.proc.check_alive()
    finally:
        node.close()


def test_dcfm_node_with_the_cosine_blend_matches_the_engine(ros_context: Any, tiny_checkpoint: Path,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    from dcfm_ros.engine import FixedInterval, StreamEngine

    node = _node(ros_context, tmp_path_factory.mktemp("node_blend"), "/blend", tiny_checkpoint, "cosine")
    try:
        node.ref = StreamEngine(node.ref.model, FixedInterval(INTERVAL), "cpu", nonkey_blend="cosine")
        plain = StreamEngine(node.ref.model, FixedInterval(INTERVAL), "cpu", nonkey_blend="none")
        frames = pan(INTERVAL)
        keys = [node.send(raw_msg(f, "rgb8"), f) for f in frames]
        for key in keys:
            node.check_labels(key, (60, 80))
        # the blend did something on a non-key frame of this pan (else the test would prove nothing)
        without = [plain.process(f).labels for f in frames]
        assert any(not np.array_equal(node.reference(k).labels, w) for k, w in zip(keys[1:], without[1:],
                                                                                  strict=True))
    finally:
        node.close()
