"""MRCFA and SD-CPC through the real node (subprocess, rclpy over Fast DDS): a checkpoint of either
loads in dcfm_node from the file alone and publishes, frame by frame, what the in-process engine with
its reference ring computes (so the node keeps the ring and runs the real per-frame cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_CLASSES, TINY_INPUT_SIZE, TINY_PALETTE
from test_node import OUT, NodeUnderTest, raw_msg
from test_node_tfc import pan

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module", params=["MRCFA", "SDCPC"])
def peer_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dcfm_ros.model import DCFMConfig, save_checkpoint
    from dcfm_ros.model.mrcfa import build_mrcfa
    from dcfm_ros.model.sdcpc import build_sdcpc

    torch.manual_seed(3)
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=len(TINY_CLASSES),
                        class_names=TINY_CLASSES, palette=TINY_PALETTE, input_size=TINY_INPUT_SIZE,
                        head="linear")
    model = (build_mrcfa if request.param == "MRCFA" else build_sdcpc)(config)
    with torch.no_grad():  # wake the zero-initialised layers, so the references change the output
        for name, p in model.named_parameters():
            if not name.startswith(("enc_lo", "enc_hi")) and p.dim() > 1:
                p.copy_(torch.randn_like(p) * 0.2)
    path = tmp_path_factory.mktemp("peer") / f"{request.param}.safetensors"
    save_checkpoint(path, model)
    return path


def test_peer_checkpoint_runs_in_the_node_with_its_ring(ros_context: Any, peer_checkpoint: Path,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    from dcfm_ros.msg import SegmentationInfo
    from sensor_msgs.msg import Image

    params = {"drop_policy": "none", "qos.reliability": "reliable", "qos.depth": 50, "device": "cpu"}
    node = NodeUnderTest(ros_context, tmp_path_factory.mktemp("node_peer"), "/peer", params, peer_checkpoint,
                         {OUT + "labels": Image, OUT + "info": SegmentationInfo})
    try:
        assert node.ref.model.model_class == peer_checkpoint.stem
        frames = pan(8)  # more than the ring holds (2 references x stride 3)
        keys = [node.send(raw_msg(f, "rgb8"), f) for f in frames]
        for key in keys:
            node.check_labels(key, (60, 80))  # equal to the in-process engine's (ring included)
        assert all(node.find(OUT + "info", k).is_keyframe for k in keys)
        node.proc.check_alive()
    finally:
        node.close()
