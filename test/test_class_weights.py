"""Median frequency class weights, the weighted cross-entropy, and how training uses both."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_train import _tiny_config
from train_fixtures import make_camvid, write_grey

from dcfm_ros.data.datasets.camvid import CAMVID_LUT
from dcfm_ros.training.class_weights import class_pixel_counts, median_frequency_weights
from dcfm_ros.training.config import ConfigError, load_config
from dcfm_ros.training.losses import segmentation_ce
from dcfm_ros.training.train import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_counts_and_median_frequency_by_hand(tmp_path: Path):
    # Two 2x4 labels (8 pixels each). 11 is CamVid void: counted nowhere.
    a = np.array([[0, 0, 0, 0], [1, 1, 2, 11]], np.uint8)   # class 0: 4, class 1: 2, class 2: 1
    b = np.array([[0, 0, 1, 1], [1, 1, 1, 11]], np.uint8)   # class 0: 2, class 1: 5
    write_grey(tmp_path / "a.png", a)
    write_grey(tmp_path / "b.png", b)
    counts, image_pixels = class_pixel_counts([tmp_path / "a.png", tmp_path / "b.png"], CAMVID_LUT, 4)
    assert counts.tolist() == [6, 7, 1, 0]
    assert image_pixels.tolist() == [16, 16, 8, 0]  # class 2 only in image a; class 3 nowhere
    w = median_frequency_weights(counts, image_pixels)
    freq = np.array([6 / 16, 7 / 16, 1 / 8])  # median 6/16
    assert np.allclose(w[:3], (6 / 16) / freq)
    assert w[3] == 0.0  # never seen: no weight, and it did not move the median
    assert w[2] > w[0] > w[1]  # the rarest class weighs most


def test_power_softens_median_frequency_weights():
    counts, image_pixels = np.array([6, 7, 1, 0]), np.array([16, 16, 8, 0])
    full = median_frequency_weights(counts, image_pixels)
    root = median_frequency_weights(counts, image_pixels, power=0.5)
    assert np.allclose(root, np.sqrt(full))
    assert root[3] == 0.0
    assert full[2] / full[1] > root[2] / root[1] > 1.0  # still rarest-first, but a smaller spread
    with pytest.raises(ValueError, match="power must be > 0"):
        median_frequency_weights(counts, image_pixels, power=0.0)


def test_median_frequency_needs_some_labeled_pixel():
    with pytest.raises(ValueError, match="no labeled pixel"):
        median_frequency_weights(np.zeros(3), np.zeros(3))


def test_weighted_ce_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 1, 3)
    target = torch.tensor([[[0, 2, 255]]])
    weight = torch.tensor([1.0, 5.0, 3.0])
    logp = logits.log_softmax(1)
    expected = -(1.0 * logp[0, 0, 0, 0] + 3.0 * logp[0, 2, 0, 1]) / (1.0 + 3.0)
    assert torch.allclose(segmentation_ce(logits, target, weight=weight), expected, atol=1e-6)
    # Without weights it is the plain mean over the two valid pixels.
    plain = -(logp[0, 0, 0, 0] + logp[0, 2, 0, 1]) / 2
    assert torch.allclose(segmentation_ce(logits, target), plain, atol=1e-6)


def test_config_validates_class_weights(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    path = _tiny_config(tmp_path, root)
    with pytest.raises(ConfigError, match="class_weights"):
        load_config(path, ["loss.class_weights=inverse"])
    with pytest.raises(ConfigError, match="class_weights"):
        load_config(path, ["loss.class_weights=[1, -1]"])
    with pytest.raises(ConfigError, match="class_weight_power must be > 0"):
        load_config(path, ["loss.class_weight_power=0"])
    with pytest.raises(ConfigError, match="class_weight_power: a number"):
        load_config(path, ["loss.class_weight_power=soft"])
    cfg = load_config(path, ["loss.class_weights=[1, 2]"])
    with pytest.raises(ConfigError, match="2 weights for 11 classes"):
        Trainer(cfg, tmp_path / "run", progress=False)


def test_trainer_uses_median_frequency_weights_of_its_training_labels(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    cfg = load_config(_tiny_config(tmp_path, root),
                      ["loss.class_weights=median_frequency", "loss.class_weight_power=0.5",
                       "dataset.val_split=null", "train.iterations=1"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    labels = sorted((root / "trainannot").glob("*.png"))
    expected = median_frequency_weights(*class_pixel_counts(labels, CAMVID_LUT, 11), power=0.5)
    assert torch.allclose(trainer.class_weight, torch.tensor(expected, dtype=torch.float32))
    assert trainer.class_weight[8] > trainer.class_weight[3]  # the fixture's car is rarer than road
    trainer.run()
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"]
    assert written["class_weights"] == "median_frequency"
    assert np.allclose(written["class_weights_used"], expected, atol=1e-5)


def test_cpu_bf16_autocast_runs_convolutions_in_bf16(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    path = _tiny_config(tmp_path, root)
    on = Trainer(load_config(path, ["train.cpu_bf16=true", "dataset.val_split=null"]), tmp_path / "a",
                 progress=False)
    off = Trainer(load_config(path, ["train.cpu_bf16=false", "dataset.val_split=null"]), tmp_path / "b",
                  progress=False)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    with on._autocast():
        assert conv(x).dtype == torch.bfloat16
    with off._autocast():
        assert conv(x).dtype == torch.float32
    on.run()  # a whole (tiny) run under bf16 autocast writes a loadable fp32 model
    assert (tmp_path / "a" / "model.safetensors").is_file()
