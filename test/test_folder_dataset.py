"""The folder layout (the user's own recordings) and the start-up label scan of every layout."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from train_fixtures import (
    FOLDER_CLASSES,
    FOLDER_PALETTE,
    H,
    W,
    folder_scene,
    make_camvid,
    make_cityscapes,
    make_folder,
    make_vspw,
    write_grey,
    write_rgb,
)

from dcfm_ros.data.datasets import PairDataset, dataset_spec, is_dense, pair_samples, video_frames
from dcfm_ros.data.datasets.checks import LabelError, check_labels
from dcfm_ros.data.datasets.pairs import read_label
from dcfm_ros.training.config import ConfigError, config_from_dict


def _check(kind: str, root: Path, split: str = "train", **spec_args: object) -> int:
    spec = dataset_spec(kind, root, **spec_args)  # type: ignore[arg-type]
    frames = [f for v in video_frames(kind, root, split).values() for f in v if f.label is not None]
    return check_labels([(f.image, f.label) for f in frames], spec.lut, len(spec.class_names),
                        spec.ignore_values, spec.convention, f"{kind} {split}")


def test_pairs_use_unlabeled_neighbours_at_the_given_offsets(tmp_path: Path):
    root = make_folder(tmp_path / "d", sequences={"run1": 6, "run10": 3, "run2": 1},
                       labeled={"run1": [0, 2, 5], "run10": [1], "run2": [0]})
    listed = pair_samples("folder", root, "train", [-2, -1, 1, 2])
    pairs = {p.name: [n.stem for n in p.neighbours] for p in listed}
    assert pairs == {
        "run1/0000": ["0001", "0002"],
        "run1/0002": ["0000", "0001", "0003", "0004"],  # 1, 3, 4 have no label: neighbours all the same
        "run1/0005": ["0003", "0004"],
        "run2/0000": ["0000"],  # a one-frame sequence pairs with itself
        "run10/0001": ["0000", "0002"],
    }
    default = {p.name: [n.stem for n in p.neighbours] for p in pair_samples("folder", root, "train")}
    assert default["run1/0002"] == ["0001", "0003"]  # default offsets [-1, 1]
    videos = video_frames("folder", root, "train")
    assert list(videos) == ["run1", "run2", "run10"]  # numbers sort as numbers
    assert [f.label is not None for f in videos["run1"]] == [True, False, True, False, False, True]
    assert not is_dense("folder", videos["run1"])
    spec = dataset_spec("folder", root)
    assert spec.class_names == FOLDER_CLASSES and spec.palette == FOLDER_PALETTE
    ds = PairDataset(pair_samples("folder", root, "train", [-2, -1, 1, 2]), spec.lut, None)
    torch.manual_seed(0)
    i = next(k for k, s in enumerate(ds.samples) if s.name == "run1/0002")
    assert {ds[i]["neighbour_name"] for _ in range(40)} == {"0000", "0001", "0003", "0004"}
    _, want = folder_scene(0)
    assert set(ds[i]["label"].unique().tolist()) <= {0, 1, 2, 255} and set(np.unique(want)) == {0, 1, 2, 255}


def test_frame_names_sort_numerically(tmp_path: Path):
    root = make_folder(tmp_path / "d", sequences={"s": 1}, labeled={"s": [0]})
    seq = root / "train" / "images" / "s"
    img, _ = folder_scene(1)
    for name in ("frame2", "frame10", "frame1"):
        write_rgb(seq / f"{name}.jpg", img)
    assert [f.image.name for f in video_frames("folder", root, "train")["s"]] == [
        "0000.png", "frame1.jpg", "frame2.jpg", "frame10.jpg"]


def test_colour_labels_map_through_the_palette(tmp_path: Path):
    grey = make_folder(tmp_path / "grey")
    color = make_folder(tmp_path / "color", color=True)
    g, c = dataset_spec("folder", grey), dataset_spec("folder", color)
    grey_pairs, color_pairs = pair_samples("folder", grey, "train"), pair_samples("folder", color, "train")
    for pg, pc in zip(grey_pairs, color_pairs, strict=True):
        np.testing.assert_array_equal(read_label(pc.label, c.lut), read_label(pg.label, g.lut))
    assert _check("folder", color) == 6
    # an unknown colour is an error naming the file and the pixel
    bad = pair_samples("folder", color, "train")[1].label
    rgb = cv2.cvtColor(cv2.imread(str(bad)), cv2.COLOR_BGR2RGB)
    rgb[5, 7] = (1, 2, 3)
    write_rgb(bad, rgb)
    with pytest.raises(ValueError, match=r"x=7, y=5\).*\(1, 2, 3\)"):
        read_label(bad, c.lut)
    with pytest.raises(LabelError, match=re.escape(str(bad))):
        _check("folder", color)


def test_each_bad_case_is_an_error_naming_the_file(tmp_path: Path):
    root = make_folder(tmp_path / "d")
    shutil.rmtree(root / "train" / "labels")
    with pytest.raises(FileNotFoundError, match=r"train/labels"):
        pair_samples("folder", root, "train")

    root = make_folder(tmp_path / "size")
    label = root / "train" / "labels" / "run2" / "0002.png"
    write_grey(label, np.zeros((H + 2, W), np.uint8))
    with pytest.raises(LabelError, match=rf"{re.escape(str(label))}: size 48x34 differs from its frame "
                                         r".*0002\.png \(48x32\)"):
        _check("folder", root)

    root = make_folder(tmp_path / "range")
    label = root / "train" / "labels" / "run1" / "0004.png"
    lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    lab[0, :3] = 3  # classes are 0..2 and 255
    lab[1, :3] = 9
    write_grey(label, lab)
    with pytest.raises(LabelError, match=rf"1 of 6 label files .*{re.escape(str(label))}: values \[3, 9\]"):
        _check("folder", root)

    root = make_folder(tmp_path / "orphan")
    write_grey(root / "train" / "labels" / "run1" / "0099.png", np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"0099\.png"):
        pair_samples("folder", root, "train")

    (root / "classes.yaml").write_text(yaml.safe_dump({"names": ["a", "b"], "ignore_index": 1}))
    with pytest.raises(ValueError, match=r"classes\.yaml: ignore_index"):
        dataset_spec("folder", root)
    (root / "classes.yaml").unlink()
    with pytest.raises(FileNotFoundError, match=r"classes\.yaml"):
        dataset_spec("folder", root)


def test_start_up_scan_refuses_values_before_any_step(tmp_path: Path):
    from dcfm_ros.training.train import Trainer

    root = make_folder(tmp_path / "d", sequences={"run1": 4})
    label = root / "train" / "labels" / "run1" / "0002.png"
    lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    lab[:2] = 5
    write_grey(label, lab)
    raw = {"model": {"backbone": "efficientnet-lite0", "input_size": [32, 48]},
           "dataset": {"type": "folder", "root": str(root), "val_split": None, "crop_size": [32, 48]},
           "train": {"batch_size": 1, "workers": 0}, "device": "cpu"}
    with pytest.raises(ConfigError, match=rf"{re.escape(str(label))}: values \[5\]"):
        Trainer(config_from_dict(raw), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match=r"classes\.yaml"):
        config_from_dict({**raw, "dataset": {**raw["dataset"], "class_names": ["x"]}})


def test_vspw_zero_based_masks_are_refused_with_their_own_values(tmp_path: Path):
    """The issue's case: own 0-based masks (0 background .. 6) in the VSPW layout with 6 names."""
    root = tmp_path / "vspw"
    names = ["background", "person", "bike", "car", "dog", "tree"]
    for i in range(2):
        img, _ = folder_scene(i)
        write_rgb(root / "data" / "v" / "origin" / f"{i:08d}.jpg", img)
        mask = np.zeros((H, W), np.uint8)
        mask[: H // 2] = 1
        mask[-4:] = 7 if i == 1 else 6
        write_grey(root / "data" / "v" / "mask" / f"{i:08d}.png", mask)
    with pytest.raises(ValueError, match="zero_label"):  # no more silent 1-based reading of own names
        dataset_spec("vspw", root, class_names=names)
    # 1-based (VSPW's own convention): 0 is "others" (ignored), 1..6 classes: 7 is out, said as 7
    with pytest.raises(LabelError, match=r"00000001\.png: values \[7\]"):
        _check("vspw", root, class_names=names, zero_label="others")
    # 0-based: 0..5 are the classes: 6 and 7 are out
    with pytest.raises(LabelError, match=r"2 of 2 .*00000000\.png: values \[6\].*"
                                         r"00000001\.png: values \[7\]"):
        _check("vspw", root, class_names=names, zero_label="class")
    spec = dataset_spec("vspw", root, class_names=names, zero_label="class")
    lab = read_label(root / "data" / "v" / "mask" / "00000000.png", spec.lut)
    assert (lab[0, 0], lab[H // 2, 0]) == (1, 0)  # 0-based: person is person, background is class 0
    others = read_label(root / "data" / "v" / "mask" / "00000000.png",
                        dataset_spec("vspw", root, names, "others").lut)
    assert (others[0, 0], others[H // 2, 0]) == (0, 255)  # VSPW's reading: 1 is names[0], 0 ignored
    with pytest.raises(ConfigError, match="zero_label"):
        config_from_dict({"model": {"backbone": "mit-b0", "input_size": [8, 8]},
                          "dataset": {"type": "vspw", "root": "x", "zero_label": "first"}})


def test_every_layout_scans_clean_fixtures_and_names_bad_values(tmp_path: Path):
    camvid = make_camvid(tmp_path / "camvid")
    assert _check("camvid", camvid) == 5
    cs = make_cityscapes(tmp_path / "cs")
    assert _check("cityscapes", cs) == 1
    vspw = make_vspw(tmp_path / "vspw")
    assert _check("vspw", vspw, split="val") == 3  # VSPW itself: 0 others, 1..124, 255 void
    bad = camvid / "trainannot" / "0001TP_006690.png"
    lab = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 12  # CamVid has 0..10 and void 11
    write_grey(bad, lab)
    with pytest.raises(LabelError, match=rf"{re.escape(str(bad))}: values \[12\]"):
        _check("camvid", camvid)
    gt = next((cs / "gtFine").rglob("*_labelIds.png"))
    lab = cv2.imread(str(gt), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 40
    write_grey(gt, lab)
    with pytest.raises(LabelError, match=r"values \[40\]"):
        _check("cityscapes", cs)
    mask = vspw / "data" / "3_abc" / "mask" / "00000002.png"
    lab = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 125
    write_grey(mask, lab)
    with pytest.raises(LabelError, match=r"00000002\.png: values \[125\]"):
        _check("vspw", vspw, split="val")


def test_the_example_fine_tuning_config_loads():
    from dcfm_ros.training.config import load_config

    repo = Path(__file__).resolve().parents[1]
    cfg = load_config(repo / "config" / "train" / "folder_efficientnet_lite0.yaml", ["dataset.root=/data/x"])
    assert cfg.dataset.type == "folder" and cfg.dataset.neighbour_offsets == [-2, -1, 1, 2]
    assert cfg.model.init_from == "shipped" and cfg.train.batch_scope == "global"
    assert (cfg.loss.lambda_b, cfg.loss.lambda_c) == (0.4, 10.0)
