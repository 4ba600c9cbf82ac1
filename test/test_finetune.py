"""Fine-tuning: `model.init_from` the shipped model with the user's 3-class folder dataset keeps every
matching weight bit for bit, re-initialises the head's class layer, and the result runs in the real
node with the user's class names, palette and masks."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Harness, NodeProcess
from safetensors.torch import load_file
from train_fixtures import FOLDER_CLASSES, FOLDER_PALETTE, make_folder

from dcfm_ros.model import DCFMConfig, build_model, load_checkpoint
from dcfm_ros.model.checkpoint import CheckpointError, init_from_checkpoint
from dcfm_ros.training.config import config_from_dict
from dcfm_ros.training.train import Trainer, init_from_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = init_from_path("shipped")
WAIT_S = 60.0


def _raw(root: Path) -> dict:
    return {"seed": 0, "device": "cpu", "threads": 1,
            "model": {"backbone": "efficientnet-lite0", "pretrained": None, "init_from": "shipped",
                      "input_size": [32, 48]},
            "dataset": {"type": "folder", "root": str(root), "val_split": None, "crop_size": [32, 48]},
            "loss": {"class_weights": None},
            "train": {"iterations": 1, "batch_size": 2, "workers": 0, "save_fp16": False}}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Path]:
    tmp = tmp_path_factory.mktemp("finetune")
    root = make_folder(tmp / "data")
    trainer = Trainer(config_from_dict(_raw(root)), tmp / "run", progress=False)
    return trainer, tmp


def test_init_from_keeps_the_encoder_bit_for_bit_and_reinitialises_the_head(finetuned):
    trainer, _ = finetuned
    shipped = load_file(str(SHIPPED))
    own = trainer.model.state_dict()
    encoder = [k for k in own if k.startswith(("enc_lo.", "enc_hi.", "ffm."))]
    assert encoder and all(torch.equal(own[k], shipped[k].to(own[k].dtype)) for k in encoder)
    report = trainer.init_report
    assert report is not None
    assert set(report.reinitialised) == {"head.cls.weight", "head.cls.bias"}  # 11 -> 3 classes
    assert set(report.loaded) == set(own) - set(report.reinitialised)  # head.conv / head.bn match: loaded
    assert shipped["head.cls.weight"].shape[0] == 11 and own["head.cls.weight"].shape[0] == 3
    # re-initialised = the fresh initialisation of the 3-class model (same seed), not leftovers
    torch.manual_seed(0)
    fresh = build_model(trainer.mcfg, None).state_dict()
    assert torch.equal(own["head.cls.weight"], fresh["head.cls.weight"])
    assert "head.cls" in report.summary() and "re-initialised 2" in report.summary()


def test_init_from_refuses_another_backbone_or_a_bad_file(tmp_path: Path):
    cfg = DCFMConfig("resnet18", 3, FOLDER_CLASSES, FOLDER_PALETTE, (32, 48))
    with pytest.raises(CheckpointError, match="efficientnet-lite0"):
        init_from_checkpoint(build_model(cfg, None), SHIPPED)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(SHIPPED.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors"):
        init_from_checkpoint(build_model(cfg, None), bad)


def test_finetuned_checkpoint_runs_in_the_node_with_the_user_classes(finetuned, ros_context, tmp_path: Path):
    from dcfm_ros.msg import SegmentationClasses
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    trainer, _ = finetuned
    ckpt = trainer.run()
    _, meta = load_checkpoint(ckpt)
    assert meta["config"].class_names == FOLDER_CLASSES and meta["config"].palette == FOLDER_PALETTE

    node = NodeProcess({"model": str(ckpt), "mask_classes": ["robot"]}, tmp_path, "finetuned",
                       ros_args=("-r", "__ns:=/ft"))
    h = Harness(ros_context, "tester_ft")
    h.watch = node
    try:
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        classes = h.subscribe("/ft/segmentation/classes", SegmentationClasses, qos)
        masks = h.subscribe("/ft/segmentation/masks/robot", Image)
        colour = h.subscribe("/ft/segmentation/color", Image)
        pub = h.publisher("/ft/image", Image)
        h.wait_discovery((pub,))
        rgb = np.zeros((32, 48, 3), np.uint8)
        rgb[:, 24:] = 200
        msg = Image(height=32, width=48, encoding="rgb8", step=48 * 3, data=rgb.tobytes())
        msg.header.frame_id = "camera"
        # Send until a frame has its viewer images: the node's viewer participant learns of our
        # subscribers on its own time (discovery runs per direction), and a frame before that has none.
        deadline = time.monotonic() + WAIT_S
        while not (classes and masks and colour):
            assert time.monotonic() < deadline, f"timed out after {WAIT_S} s waiting for the classes, " \
                                                "robot mask and colour image"
            pub.publish(msg)
            with contextlib.suppress(AssertionError):
                h.spin_until(lambda: classes and masks and colour, 2.0, "")
        assert list(classes[0].names) == list(FOLDER_CLASSES)
        got = [(round(c.r * 255), round(c.g * 255), round(c.b * 255)) for c in classes[0].colors]
        assert got == list(FOLDER_PALETTE)
        assert masks[0].encoding == "mono8" and (masks[0].height, masks[0].width) == (32, 48)
        pixels = np.frombuffer(bytes(colour[0].data), np.uint8).reshape(32, -1)[:, :48 * 3].reshape(32, 48, 3)
        assert {tuple(int(v) for v in p) for p in pixels.reshape(-1, 3)} <= set(FOLDER_PALETTE)
    finally:
        h.close()
        assert node.stop() == 0
