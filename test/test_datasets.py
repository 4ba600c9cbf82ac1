"""Dataset loaders pair the right frames, map labels, and augment both frames with one geometry."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from train_fixtures import H, W, make_camvid, make_cityscapes, make_vspw, scene, write_grey, write_rgb

from dcfm_ros.data.datasets import (
    LabeledFrames,
    PairDataset,
    dataset_spec,
    is_dense,
    pair_samples,
    video_frames,
)
from dcfm_ros.data.datasets.pairs import PairSample, read_label
from dcfm_ros.data.transforms import ColorJitter, PairAugment


@pytest.fixture()
def camvid(tmp_path: Path) -> Path:
    return make_camvid(tmp_path / "camvid", train={"0001TP": ["006720", "006690", "006750"],
                                                   "0006R0": ["f930", "f1000"], "Solo": ["00001"]})


def test_camvid_pairs_are_temporal_neighbours_in_the_same_sequence(camvid: Path):
    pairs = {p.name: p for p in pair_samples("camvid", camvid, "train")}
    nb = {k: sorted(n.stem for n in p.neighbours) for k, p in pairs.items()}
    # sorted by frame number, not by file name ("f1000" after "f930")
    assert nb["0001TP_006690"] == ["0001TP_006720"]
    assert nb["0001TP_006720"] == ["0001TP_006690", "0001TP_006750"]
    assert nb["0001TP_006750"] == ["0001TP_006720"]
    assert nb["0006R0_f930"] == ["0006R0_f1000"] and nb["0006R0_f1000"] == ["0006R0_f930"]
    assert nb["Solo_00001"] == ["Solo_00001"]  # a one-frame sequence pairs with itself
    seqs = video_frames("camvid", camvid, "train")
    assert [f.name for f in seqs["0006R0"]] == ["0006R0_f930", "0006R0_f1000"]


def test_camvid_dataset_draws_both_neighbours_and_returns_tensors(camvid: Path):
    spec = dataset_spec("camvid")
    ds = PairDataset(pair_samples("camvid", camvid, "train"), spec.lut, None)
    idx = next(i for i, s in enumerate(ds.samples) if s.name == "0001TP_006720")
    torch.manual_seed(0)
    seen = {ds[idx]["neighbour_name"] for _ in range(30)}
    assert seen == {"0001TP_006690", "0001TP_006750"}
    item = ds[idx]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
    assert item["neighbour"].shape == (3, H, W)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    # void (11) became 255; classes kept
    assert set(item["label"].unique().tolist()) == {0, 1, 3, 8, 255}


def test_camvid_bad_layout_is_reported(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="trainannot"):
        pair_samples("camvid", tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        pair_samples("camvid", tmp_path, "training")


def test_camvid_density(camvid: Path):
    val = video_frames("camvid", camvid, "val")
    assert is_dense("camvid", val["0016E5"])  # every 2nd frame of 30 fps = 15 Hz
    train = video_frames("camvid", camvid, "train")
    assert not is_dense("camvid", train["0001TP"])  # 1 Hz


def _pair_dataset_same_frame(tmp_path: Path, augment: PairAugment) -> PairDataset:
    img, label = scene(3)
    write_rgb(tmp_path / "a.png", img)
    write_rgb(tmp_path / "b.png", img)  # a different file with the same content
    write_grey(tmp_path / "a_label.png", label)
    sample = PairSample("a", tmp_path / "a.png", tmp_path / "a_label.png", (tmp_path / "b.png",))
    return PairDataset([sample], dataset_spec("camvid").lut, augment)


def test_same_geometry_for_both_frames(tmp_path: Path):
    aug = PairAugment(crop_size=(24, 40), scale_range=(0.5, 2.0), rotate_deg=10.0, hflip=True,
                      jitter=ColorJitter(0.0, 0.0, 0.0))
    ds = _pair_dataset_same_frame(tmp_path, aug)
    torch.manual_seed(0)
    outs = [ds[0] for _ in range(12)]
    for o in outs:
        assert o["image"].shape == (3, 24, 40) and o["label"].shape == (24, 40)
        assert torch.equal(o["image"], o["neighbour"])
    # ...and the geometry really is random (otherwise the check above proves nothing).
    assert len({o["image"].numpy().tobytes() for o in outs}) > 6


def test_colour_jitter_is_independent_per_frame(tmp_path: Path):
    aug = PairAugment(crop_size=(H, W), scale_range=(1.0, 1.0), rotate_deg=0.0, hflip=False,
                      jitter=ColorJitter(0.3, 0.3, 0.3))
    ds = _pair_dataset_same_frame(tmp_path, aug)
    torch.manual_seed(0)
    o = ds[0]
    assert not torch.equal(o["image"], o["neighbour"])
    assert torch.equal(o["label"], ds[0]["label"])  # photometric only: geometry untouched


def test_label_stays_aligned_with_image_and_padding_is_ignored(tmp_path: Path):
    # The red channel is 20 * class: after scale/rotate/crop/flip the label must still sit on the
    # pixels of its colour. Interpolation blurs region borders, so the check is on interior pixels
    # (3x3-uniform label), where any misalignment of the warp shows.
    aug = PairAugment(crop_size=(40, 56), scale_range=(0.6, 1.6), rotate_deg=10.0, hflip=True,
                      jitter=ColorJitter(0.0, 0.0, 0.0), fill_rgb=(250, 0, 0))
    ds = _pair_dataset_same_frame(tmp_path, aug)
    torch.manual_seed(1)
    kernel = np.ones((3, 3), np.uint8)
    for _ in range(10):
        o = ds[0]
        red = o["image"][0].numpy().astype(int)
        lab = o["label"].numpy().astype(np.uint8)
        inner = (lab != 255) & (cv2.erode(lab, kernel) == cv2.dilate(lab, kernel))
        assert inner.sum() > 100
        agree = (np.abs(red - 20 * lab.astype(int)) <= 2)[inner].mean()
        assert agree > 0.97, agree
        # padded image pixels (fill red 250, not a class colour) carry the ignore label
        pad = red == 250
        if pad.any():
            assert (lab[pad] == 255).mean() > 0.9


def test_crop_and_flip_alone_keep_exact_alignment(tmp_path: Path):
    aug = PairAugment(crop_size=(20, 30), scale_range=(1.0, 1.0), rotate_deg=0.0, hflip=True,
                      jitter=ColorJitter(0.0, 0.0, 0.0))
    ds = _pair_dataset_same_frame(tmp_path, aug)
    torch.manual_seed(2)
    for _ in range(10):
        o = ds[0]
        red = o["image"][0].numpy().astype(int)
        lab = o["label"].numpy()
        valid = lab != 255
        assert np.array_equal(red[valid], 20 * lab[valid])


def test_eval_frames_resize_image_keep_label(camvid: Path):
    frames = [f for v in video_frames("camvid", camvid, "val").values() for f in v]
    ds = LabeledFrames(frames, dataset_spec("camvid").lut, (16, 24))
    item = ds[0]
    assert item["image"].shape == (3, 16, 24) and item["label"].shape == (H, W)


def test_cityscapes_pairs_snippets_and_train_ids(tmp_path: Path):
    root = make_cityscapes(tmp_path / "cs")
    pairs = pair_samples("cityscapes", root, "train")
    assert len(pairs) == 1
    p = pairs[0]
    assert p.name == "aachen_000000_000019"
    assert p.image.name == "aachen_000000_000019_leftImg8bit.png"
    assert sorted(n.name for n in p.neighbours) == ["aachen_000000_000018_leftImg8bit.png",
                                                    "aachen_000000_000020_leftImg8bit.png"]
    lab = read_label(p.label, dataset_spec("cityscapes").lut)
    assert set(np.unique(lab).tolist()) == {0, 13, 18, 255}  # road, car, bicycle, unlabeled->ignore
    snip = video_frames("cityscapes", root, "train")["aachen_000000_000019"]
    assert [f.name[-2:] for f in snip] == ["17", "18", "19", "20", "21"]
    assert [f.label is not None for f in snip] == [False, False, True, False, False]
    assert not is_dense("cityscapes", snip)
    # A missing neighbour frame is an error, not a silent self-pair.
    seq = root / "leftImg8bit_sequence" / "train" / "aachen"
    for f in (18, 20):
        (seq / f"aachen_000000_{f:06d}_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match="neighbour"):
        pair_samples("cityscapes", root, "train")


def test_vspw_split_list_pairs_and_label_convention(tmp_path: Path):
    root = make_vspw(tmp_path / "vspw")
    val = pair_samples("vspw", root, "val")
    assert sorted(p.name for p in val) == ["3_abc/00000001", "3_abc/00000002", "3_abc/00000003"]
    by = {p.name: sorted(n.stem for n in p.neighbours) for p in val}
    assert by["3_abc/00000002"] == ["00000001", "00000003"]
    assert by["3_abc/00000001"] == ["00000002"]
    # no train.txt -> all videos
    assert len(pair_samples("vspw", root, "train")) == 6
    spec = dataset_spec("vspw")
    assert len(spec.class_names) == 124 and len(spec.palette) == 124
    lab = read_label(val[0].label, spec.lut)
    assert set(np.unique(lab).tolist()) == {0, 123, 255}  # 1 -> 0, 124 -> 123, 0 and 255 -> ignore
    assert is_dense("vspw", video_frames("vspw", root, "val")["3_abc"])
    shutil.rmtree(root / "data" / "3_abc")
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        pair_samples("vspw", root, "val")


def test_palette_png_labels_read_as_class_indices(tmp_path: Path) -> None:
    """VSPW masks are palette PNGs: the stored indices are the classes, not the palette colours."""
    from PIL import Image

    from dcfm_ros.data.datasets.pairs import make_lut, read_label

    ids = np.array([[0, 1, 2], [3, 124, 255]], np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([(i * 37) % 256 for i in range(256 * 3)])
    path = tmp_path / "mask.png"
    im.save(path)
    identity = make_lut({i: i for i in range(256)})
    np.testing.assert_array_equal(read_label(path, identity), ids)
