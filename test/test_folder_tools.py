"""The folder layout through the tools: dcfm-make-bag --folder and --extract (a round trip that keeps
every pixel), and dcfm-evaluate --dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from train_fixtures import FOLDER_CLASSES, FOLDER_PALETTE, make_folder

from dcfm_ros.data.datasets import pair_samples
from dcfm_ros.evaluation.bagio import BagReader
from dcfm_ros.model import DCFMConfig, build_model, save_checkpoint
from dcfm_ros.tools import evaluate, make_bag

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_make_bag_folder_and_extract_round_trip(tmp_path: Path, capsys):
    root = make_folder(tmp_path / "data", sequences={"run1": 6, "run2": 3})
    bag = tmp_path / "bag"
    assert make_bag.main([str(bag), "--folder", str(root), "--split", "train", "--sequence", "run1",
                          "--rate", "10"]) == 0
    with BagReader(bag) as r:
        meta = json.loads(r.custom_data["dcfm_ros.make_bag"])
        assert meta["class_names"] == list(FOLDER_CLASSES) and meta["labeled"] == 3 and meta["frames"] == 6
    out = tmp_path / "seeded"
    assert make_bag.main(["--extract", str(bag), str(out), "--sequence", "drive"]) == 0
    assert "6 frames" in capsys.readouterr().out
    src = sorted((root / "train" / "images" / "run1").glob("*.png"))
    got = sorted((out / "train" / "images" / "drive").glob("*.png"))
    assert [p.name for p in got] == [f"{i:06d}.png" for i in range(6)]
    for a, b in zip(src, got, strict=True):  # raw rgb8 in the bag: every pixel comes back
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))
    labels = sorted((out / "train" / "labels" / "drive").glob("*.png"))
    assert [p.name for p in labels] == ["000000.png", "000002.png", "000004.png"]
    for i, p in zip((0, 2, 4), labels, strict=True):
        want = cv2.imread(str(root / "train" / "labels" / "run1" / f"{i:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), want)
    classes = yaml.safe_load((out / "classes.yaml").read_text())
    assert classes["names"] == list(FOLDER_CLASSES) and classes["ignore_index"] == 255
    names = [p.name for p in pair_samples("folder", out, "train")]
    assert names == ["drive/000000", "drive/000002", "drive/000004"]
    assert not list(out.rglob(".*tmp*"))  # no temporary file left behind
    # a second extraction into the same sequence is refused rather than mixing two drives
    assert make_bag.main(["--extract", str(bag), str(out), "--sequence", "drive"]) == 2
    assert "not empty" in capsys.readouterr().err
    # --folder has no frame rate of its own
    with pytest.raises(SystemExit):
        make_bag.main([str(tmp_path / "b2"), "--folder", str(root), "--split", "train", "--sequence", "run2"])


def test_evaluate_reads_the_folder_layout(tmp_path: Path, capsys):
    root = make_folder(tmp_path / "data", sequences={"run1": 6, "run2": 3})
    torch.manual_seed(0)
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, build_model(DCFMConfig("efficientnet-lite0", 3, FOLDER_CLASSES, FOLDER_PALETTE,
                                                 (32, 48)), None))
    out = tmp_path / "r.json"
    assert evaluate.main(["--model", str(ckpt), "--dataset", "folder", "--root", str(root), "--split",
                          "train", "--modes", "p", "--policies", "fixed:1,fixed:2", "--json", str(out),
                          "--quiet"]) == 0
    report = json.loads(out.read_text())
    assert report["class_names"] == list(FOLDER_CLASSES)
    assert report["num_frames"] == 9 and report["num_labeled_frames"] == 5  # 3 + 2 labeled of 6 + 3
    assert {r["policy"] for r in report["results"]} == {"fixed:1", "fixed:2"}
    wrong = tmp_path / "five.safetensors"
    save_checkpoint(wrong, build_model(DCFMConfig("efficientnet-lite0", 5, tuple("abcde"),
                                                  (*FOLDER_PALETTE, (1, 1, 1), (2, 2, 2)), (32, 48)), None))
    capsys.readouterr()
    assert evaluate.main(["--model", str(wrong), "--dataset", "folder", "--root", str(root), "--split",
                          "train", "--quiet"]) == 2
    assert "predicts 5 classes but folder has 3" in capsys.readouterr().err
