"""dcfm-make-bag and the bag helpers: bags round-trip frames, stamps and labels; bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from train_fixtures import make_cityscapes, make_vspw

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bagio import BadMessage, BagError, BagReader, BagWriter, Frame
from dcfm_ros.evaluation.make_bag import DEFAULT_START_S
from dcfm_ros.tools.make_bag import main

REPO = Path(__file__).resolve().parents[1]
DEMO_BAG = REPO / "demo" / "camvid_val_0016E5"
H, W = 48, 64


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(n)]


def _labels(n: int, seed: int = 1, void: int = 255) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        lab = rng.integers(0, 5, (H, W), dtype=np.uint8)
        lab[:4] = void
        out.append(lab)
    return out


def _write_folder(folder: Path, images: list[np.ndarray], labels: list[np.ndarray] | None = None,
                  names: list[str] | None = None) -> tuple[Path, Path | None]:
    img_dir = folder / "images"
    img_dir.mkdir(parents=True)
    lab_dir = None
    names = names or [f"frame{i}" for i in range(len(images))]
    for name, img in zip(names, images, strict=True):
        cv2.imwrite(str(img_dir / f"{name}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if labels is not None:
        lab_dir = folder / "labels"
        lab_dir.mkdir()
        for name, lab in zip(names, labels, strict=True):
            cv2.imwrite(str(lab_dir / f"{name}.png"), lab)
    return img_dir, lab_dir


def _read_all(bag: Path, image_topic: str, label_topic: str | None = "/camera/labels"):
    with BagReader(bag) as reader:
        topics = reader.topics
        frames = list(reader.frames(image_topic))
        labels = list(reader.frames(label_topic, "labels")) if label_topic in topics else []
    return topics, frames, labels


def test_raw_bag_round_trips_frames_stamps_and_labels(tmp_path: Path) -> None:
    # names sort naturally (frame2 before frame10), as a numbered image folder expects
    names = ["frame1", "frame2", "frame10", "frame11", "frame20"]
    images, labels = _frames(5), _labels(5)
    img_dir, lab_dir = _write_folder(tmp_path, images, labels, names)
    out = tmp_path / "bag"
    assert main([str(out), "--images", str(img_dir), "--labels", str(lab_dir), "--rate", "7.5"]) == 0

    topics, frames, labs = _read_all(out, "/camera/image")
    assert {t: i.msgtype for t, i in topics.items()} == {"/camera/image": bagio.IMAGE,
                                                         "/camera/labels": bagio.IMAGE}
    assert all(isinstance(f, Frame) for f in frames + labs)
    start = round(DEFAULT_START_S * 1e9)
    expected_stamps = [start + round(i * 1e9 / 7.5) for i in range(5)]
    assert [f.stamp_ns for f in frames] == expected_stamps
    assert [f.log_ns for f in frames] == expected_stamps
    assert [f.stamp_ns for f in labs] == expected_stamps
    for f, img in zip(frames, images, strict=True):
        np.testing.assert_array_equal(f.image, img)  # raw rgb8: bit exact
    for f, lab in zip(labs, labels, strict=True):
        assert f.image.dtype == np.uint8
        np.testing.assert_array_equal(f.image, lab)

    # header details and the type hashes the bag declares (rclpy computes the same, see test_bag_eval)
    with BagReader(out) as reader:
        raw = next(reader.raw(["/camera/image"]))
        msg = bagio.deserialize(raw.data, raw.msgtype)
        assert (msg.encoding, msg.header.frame_id, msg.step) == ("rgb8", "camera", W * 3)
        meta = json.loads(reader.custom_data["dcfm_ros.make_bag"])
        assert meta["frames"] == 5 and meta["rate_hz"] == 7.5
    text = (out / "metadata.yaml").read_text()
    assert bagio.type_hash(bagio.IMAGE) in text


def test_compressed_sqlite_bag_round_trips(tmp_path: Path) -> None:
    images = [cv2.GaussianBlur(f, (7, 7), 3) for f in _frames(3)]  # smooth: JPEG stays close
    img_dir, _ = _write_folder(tmp_path, images)
    out = tmp_path / "bag"
    assert main([str(out), "--images", str(img_dir), "--rate", "10", "--compressed", "--jpeg-quality", "95",
                 "--storage", "sqlite3", "--image-topic", "/cam/front", "--frame-id", "front",
                 "--start-time", "100.5"]) == 0
    assert list(out.glob("*.db3"))
    topics, frames, _labs = _read_all(out, "/cam/front/compressed", None)
    assert set(topics) == {"/cam/front/compressed"}  # no labels given: no label topic
    assert topics["/cam/front/compressed"].msgtype == bagio.COMPRESSED_IMAGE
    assert [f.stamp_ns for f in frames] == [100_500_000_000, 100_600_000_000, 100_700_000_000]
    for f, img in zip(frames, images, strict=True):
        assert f.image.shape == img.shape
        assert np.abs(f.image.astype(int) - img).mean() < 3.0
    with BagReader(out) as reader:
        raw = next(reader.raw(["/cam/front/compressed"]))
        msg = bagio.deserialize(raw.data, raw.msgtype)
        assert msg.header.frame_id == "front" and "jpeg" in msg.format


def _fake_camvid(root: Path, n: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    images, labels = _frames(n, 3), []
    rng = np.random.default_rng(4)
    for i, img in enumerate(images):
        lab = rng.integers(0, 12, (H, W), dtype=np.uint8)  # 11 = void in CamVid
        labels.append(lab)
        name = f"0016E5_{8001 + 2 * i:05d}.png"  # reverse write order must not matter
        cv2.imwrite(str(root / "val" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "valannot" / name), lab)
    # a second sequence, to check selection
    cv2.imwrite(str(root / "val" / "0001TP_00001.png"), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(root / "valannot" / "0001TP_00001.png"), labels[0])
    return images, labels


def test_camvid_sequence_maps_void_to_255(tmp_path: Path) -> None:
    _images, labels = _fake_camvid(tmp_path / "camvid")
    out = tmp_path / "bag"
    rc = main([str(out), "--camvid", str(tmp_path / "camvid"), "--split", "val", "--sequence", "0016E5",
               "--compressed", "--max-frames", "3"])
    assert rc == 0
    _topics, frames, labs = _read_all(out, "/camera/image/compressed")
    assert len(frames) == 3 and len(labs) == 3
    # default rate of the CamVid val clip is 15 Hz
    assert frames[1].stamp_ns - frames[0].stamp_ns == round(1e9 / 15)
    for f, lab in zip(labs, labels[:3], strict=True):
        expected = np.where(lab == 11, 255, lab).astype(np.uint8)
        np.testing.assert_array_equal(f.image, expected)
        assert f.stamp_ns in {g.stamp_ns for g in frames}


def test_camvid_needs_sequence_when_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_camvid(tmp_path / "camvid")
    assert main([str(tmp_path / "bag"), "--camvid", str(tmp_path / "camvid")]) == 2
    err = capsys.readouterr().err
    assert "--sequence" in err and "0016E5" in err and "0001TP" in err
    assert not (tmp_path / "bag").exists()
    assert main([str(tmp_path / "bag"), "--camvid", str(tmp_path / "camvid"), "--sequence", "nope"]) == 2
    assert "no sequence 'nope'" in capsys.readouterr().err


def _custom(bag: Path) -> dict:
    with BagReader(bag) as reader:
        return json.loads(reader.custom_data["dcfm_ros.make_bag"])


def test_vspw_sequence_uses_training_readers_and_class_names(tmp_path: Path) -> None:
    root = make_vspw(tmp_path / "vspw")
    names = {f"thing {v}": v for v in range(1, 125)}
    names["wall"], names["sky"] = 1, 124
    del names["thing 1"], names["thing 124"]
    (root / "label_num_dic_final.json").write_text(json.dumps(names))
    out = tmp_path / "bag"
    # val.txt lists one video: no --sequence needed; VSPW has no fixed frame rate
    assert main([str(out), "--vspw", str(root), "--split", "val", "--rate", "15"]) == 0
    _topics, frames, labs = _read_all(out, "/camera/image")
    assert len(frames) == len(labs) == 3
    video = root / "data" / "3_abc"
    for i, (f, lab) in enumerate(zip(frames, labs, strict=True)):
        # the JPEG decoded by the same reader as training: bit exact in a raw rgb8 bag
        jpg = cv2.cvtColor(cv2.imread(str(video / "origin" / f"{i + 1:08d}.jpg")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(f.image, jpg)
        assert lab.stamp_ns == f.stamp_ns
        # mask 1..124 -> train ids 0..123; 0 (others) and 255 (void) -> ignore 255
        raw = cv2.imread(str(video / "mask" / f"{i + 1:08d}.png"), cv2.IMREAD_UNCHANGED)
        expected = np.where((raw >= 1) & (raw <= 124), raw.astype(int) - 1, 255).astype(np.uint8)
        np.testing.assert_array_equal(lab.image, expected)
    assert set(np.unique(labs[0].image).tolist()) == {0, 123, 255}
    meta = _custom(out)
    assert meta["type"] == "vspw" and meta["dataset"] == "vspw" and meta["label_topic"] == "/camera/labels"
    # the dataset's own names (what dcfm-train and dcfm-evaluate use), not class_1..class_124
    assert len(meta["class_names"]) == 124
    assert meta["class_names"][0] == "wall" and meta["class_names"][123] == "sky"
    assert meta["class_names"][1] == "thing 2"


def test_cityscapes_snippet_labels_only_the_annotated_frame(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cityscapes", split="val")
    out = tmp_path / "bag"
    assert main([str(out), "--cityscapes", str(root), "--split", "val"]) == 0
    _topics, frames, labs = _read_all(out, "/camera/image")
    seq_dir = root / "leftImg8bit_sequence" / "val" / "aachen"
    assert len(frames) == 5 and len(labs) == 1  # frames 17..21 of the snippet, GT for the 20th (19)
    for f, n in zip(frames, range(17, 22), strict=True):
        png = cv2.cvtColor(cv2.imread(str(seq_dir / f"aachen_000000_{n:06d}_leftImg8bit.png")),
                           cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(f.image, png)
    assert frames[1].stamp_ns - frames[0].stamp_ns == round(1e9 / 17)  # Cityscapes default rate
    assert labs[0].stamp_ns == frames[2].stamp_ns
    raw = cv2.imread(str(root / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"),
                     cv2.IMREAD_UNCHANGED)
    # labelIds -> trainIds: road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, unlabeled 0 -> ignore
    expected = np.select([raw == 7, raw == 26, raw == 33], [0, 13, 18], 255).astype(np.uint8)
    np.testing.assert_array_equal(labs[0].image, expected)
    assert set(np.unique(expected).tolist()) == {0, 13, 18, 255}
    meta = _custom(out)
    assert meta["dataset"] == "cityscapes" and len(meta["class_names"]) == 19
    assert meta["class_names"][13] == "car" and meta["labeled"] == 1


def test_video_source_rate_resize_and_range(tmp_path: Path) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (W, H))
    assert writer.isOpened()
    for i in range(8):
        writer.write(np.full((H, W, 3), 20 * i, np.uint8))
    writer.release()
    out = tmp_path / "bag"
    assert main([str(out), "--video", str(video), "--start-frame", "2", "--max-frames", "4",
                 "--resize", "32x24"]) == 0
    _, frames, labs = _read_all(out, "/camera/image")
    assert len(frames) == 4 and not labs
    assert frames[0].image.shape == (24, 32, 3)
    assert frames[1].stamp_ns - frames[0].stamp_ns == round(1e9 / 12)  # the video's own rate
    # frames 2..5 of the video: grey levels 40, 60, 80, 100 (MJPG is near-lossless on flat images)
    assert [round(float(f.image.mean()) / 20) for f in frames] == [2, 3, 4, 5]


def test_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img_dir, _ = _write_folder(tmp_path, _frames(2))
    out = tmp_path / "bag"
    assert main([str(out), "--images", str(tmp_path / "missing"), "--rate", "5"]) == 2
    assert "image folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an image folder has no rate of its own
        main([str(out), "--images", str(img_dir)])
    assert "--rate" in capsys.readouterr().err
    assert main([str(out), "--images", str(img_dir), "--rate", "0"]) == 2
    assert "rate" in capsys.readouterr().err
    assert main([str(out), "--video", str(tmp_path / "nope.mp4")]) == 2
    assert "video file not found" in capsys.readouterr().err
    assert main([str(out), "--images", str(img_dir), "--rate", "5"]) == 0
    assert main([str(out), "--images", str(img_dir), "--rate", "5"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main([str(out), "--images", str(img_dir), "--rate", "5", "--overwrite"]) == 0


def test_reader_reports_corrupt_and_duplicate_messages(tmp_path: Path) -> None:
    out = tmp_path / "bag"
    img = _frames(1)[0]
    with BagWriter(out) as w:
        w.add_topic("/cam", bagio.IMAGE)
        w.add_topic("/cam/compressed", bagio.COMPRESSED_IMAGE)
        w.write("/cam", 1, bagio.image_msg(img, 1_000, "c"))
        w.write("/cam", 2, b"\x00\x01\x00\x00\x07")  # truncated CDR
        short = bagio.image_msg(img, 3_000, "c")
        short.data = short.data[:-10]
        w.write("/cam", 3, short)  # shorter than height * step
        w.write("/cam", 4, bagio.image_msg(img, 1_000, "c"))  # duplicate stamp
        bad_jpeg = bagio.compressed_image_msg(img, 5_000, "c")
        bad_jpeg.data = np.frombuffer(b"not a jpeg", np.uint8)
        w.write("/cam/compressed", 5, bad_jpeg)
    with BagReader(out) as r:
        items = list(r.frames("/cam"))
        comp = list(r.frames("/cam/compressed"))
        listing = r"'/nope' is not in bag.*\n.*/cam \[sensor_msgs/msg/Image\] 4 msgs"
        with pytest.raises(BagError, match=listing):
            list(r.frames("/nope"))
    assert isinstance(items[0], Frame)
    bad = [i for i in items if isinstance(i, BadMessage)]
    assert [b.index for b in bad] == [1, 2, 3]
    assert "does not deserialize" in bad[0].reason
    assert "needs" in bad[1].reason and bad[1].stamp_ns == 3_000
    assert "duplicate header stamp" in bad[2].reason
    assert isinstance(comp[0], BadMessage) and "does not decode" in comp[0].reason


def test_padded_rows_and_bgr_are_decoded(tmp_path: Path) -> None:
    img = _frames(1)[0]
    msg = bagio.image_msg(img, 1, "c")
    padded = np.zeros((H, W * 3 + 8), np.uint8)
    padded[:, : W * 3] = cv2.cvtColor(img, cv2.COLOR_RGB2BGR).reshape(H, -1)
    msg.encoding, msg.step, msg.data = "bgr8", W * 3 + 8, padded.reshape(-1)
    np.testing.assert_array_equal(bagio.decode_image(msg), img)


def test_missing_bag_and_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="bag not found"):
        BagReader(tmp_path / "nope")
    with pytest.raises(BagError, match=r"no metadata\.yaml"):
        BagReader(tmp_path)


def test_demo_bag_is_the_camvid_val_clip() -> None:
    assert DEMO_BAG.is_dir(), "demo bag missing: run dcfm-make-bag as in demo/README.md"
    size = sum(p.stat().st_size for p in DEMO_BAG.iterdir())
    assert 1e6 < size < 6.5e6
    with BagReader(DEMO_BAG) as r:
        topics = r.topics
        assert topics["/camera/image/compressed"].count == 101
        assert topics["/camera/labels"].count == 101
        assert topics["/camera/image/compressed"].msgtype == bagio.COMPRESSED_IMAGE
        stamps = [f.stamp_ns for f in r.frames("/camera/image/compressed") if isinstance(f, Frame)]
        labels = [f for f in r.frames("/camera/labels", "labels") if isinstance(f, Frame)]
    assert len(stamps) == 101 and len(labels) == 101
    assert set(np.diff(stamps).tolist()) <= {66_666_666, 66_666_667}  # 15 Hz
    assert [f.stamp_ns for f in labels] == stamps
    assert labels[0].image.shape == (360, 480)
    assert set(np.unique(labels[0].image).tolist()) <= set(range(11)) | {255}


def _first_chunk(data: bytes) -> int:
    """Offset of the first mcap Chunk record (opcode 0x06; records are opcode, uint64 length, content)."""
    pos = 8  # magic
    while pos < len(data):
        length = int.from_bytes(data[pos + 1: pos + 9], "little")
        if data[pos] == 0x06:
            return pos
        pos += 9 + length
    raise AssertionError("no chunk record")


def test_damaged_storage_file_is_an_error(tmp_path: Path) -> None:
    """Damage that the storage layer can see is an error, not a partial or silent read."""
    img_dir, _ = _write_folder(tmp_path, _frames(4))
    out = tmp_path / "bag"
    assert main([str(out), "--images", str(img_dir), "--rate", "5"]) == 0
    (mcap,) = out.glob("*.mcap")
    data = bytearray(mcap.read_bytes())
    crc_at = _first_chunk(data) + 9 + 24  # chunk: start, end, uncompressed size, then the uint32 CRC
    data[crc_at: crc_at + 4] = b"\x01\x02\x03\x04"  # a checksum the data does not have
    mcap.write_bytes(bytes(data))
    with BagReader(out) as r, pytest.raises(BagError, match=r"is damaged.*checksum"):
        list(r.frames("/camera/image"))
    mcap.write_bytes(bytes(data[: len(data) // 3]))  # truncated: refused when opened
    with pytest.raises(BagError, match="cannot open bag"), BagReader(out):
        pass


def test_multi_camera_bag_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three cameras from three sources, each at its own rate and on its own topics: every camera's
    frames, labels and stamps come back as from a single-camera bag, the messages of all cameras are in
    one log-time order, the custom data lists the cameras, and --extract picks one camera."""
    front, front_labels = _frames(5, seed=3), _labels(5, seed=4)
    front_dir, front_lab = _write_folder(tmp_path / "front", front, front_labels)
    left = [cv2.GaussianBlur(f, (7, 7), 3) for f in _frames(4, seed=5)]
    left_dir, _ = _write_folder(tmp_path / "left", left)
    video = tmp_path / "rear.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 6.0, (W, H))
    for i in range(6):
        writer.write(np.full((H, W, 3), 30 * i, np.uint8))
    writer.release()
    out = tmp_path / "bag"
    argv = [str(out), "--rate", "10", "--max-frames", "4",  # defaults for every camera
            "--camera", "front", "--images", str(front_dir), "--labels", str(front_lab),
            "--max-frames", "5",
            "--camera", "left", "--images", str(left_dir), "--rate", "4", "--compressed",
            "--jpeg-quality", "95",
            "--camera", "rear", "--video", str(video), "--rate", "6", "--image-topic", "/rear_cam/image_raw"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3 cameras" in printed and "camera left: 4 frames at 4 Hz" in printed
    start = round(DEFAULT_START_S * 1e9)
    with BagReader(out) as reader:
        assert {t: i.msgtype for t, i in reader.topics.items()} == {
            "/front/image": bagio.IMAGE, "/front/labels": bagio.IMAGE,
            "/left/image/compressed": bagio.COMPRESSED_IMAGE, "/rear_cam/image_raw": bagio.IMAGE}
        log = [(m.log_ns, m.topic) for m in reader.raw(list(reader.topics))]
        meta = json.loads(reader.custom_data["dcfm_ros.make_bag"])
        frames = {t: [f for f in reader.frames(t) if isinstance(f, Frame)]
                  for t in ("/front/image", "/left/image/compressed", "/rear_cam/image_raw")}
        labels = [f for f in reader.frames("/front/labels", "labels") if isinstance(f, Frame)]
        headers = {t: bagio.deserialize(next(reader.raw([t])).data, reader.topics[t].msgtype)
                   .header.frame_id for t in frames}
    assert [n for n, _ in log] == sorted(n for n, _ in log)  # one log-time order across the cameras
    assert headers == {"/front/image": "front", "/left/image/compressed": "left",
                       "/rear_cam/image_raw": "rear"}
    expected = (("/front/image", 10, 5), ("/left/image/compressed", 4, 4), ("/rear_cam/image_raw", 6, 4))
    for topic, rate, n in expected:
        assert [f.stamp_ns for f in frames[topic]] == [start + round(i * 1e9 / rate) for i in range(n)], topic
    for f, img in zip(frames["/front/image"], front, strict=True):
        np.testing.assert_array_equal(f.image, img)
    for f, lab in zip(labels, front_labels, strict=True):
        np.testing.assert_array_equal(f.image, lab)
    assert [f.stamp_ns for f in labels] == [f.stamp_ns for f in frames["/front/image"]]
    for f, img in zip(frames["/left/image/compressed"], left, strict=True):
        assert np.abs(f.image.astype(int) - img).mean() < 3.0
    assert [round(float(f.image.mean()) / 30) for f in frames["/rear_cam/image_raw"]] == [0, 1, 2, 3]
    cams = {c["name"]: c for c in meta["cameras"]}
    assert list(cams) == ["front", "left", "rear"]
    assert (cams["front"]["label_topic"], cams["front"]["labeled"], cams["front"]["rate_hz"]) == (
        "/front/labels", 5, 10.0)
    assert cams["left"]["image_topic"] == "/left/image/compressed" and cams["left"]["label_topic"] is None
    assert cams["rear"]["type"] == "video" and meta["frames"] == 13

    # --extract with --topic: that camera's frames and its labels only
    root = tmp_path / "dataset"
    assert main(["--extract", str(out), str(root), "--topic", "/front/image", "--sequence", "front"]) == 0
    assert len(list((root / "train" / "images" / "front").glob("*.png"))) == 5
    assert len(list((root / "train" / "labels" / "front").glob("*.png"))) == 5
    assert main(["--extract", str(out), str(root)]) == 2  # three cameras: which one?
    assert "3 camera topics" in capsys.readouterr().err
    # a source before the first --camera serves every camera that names none of its own
    out2 = tmp_path / "bag2"
    assert main([str(out2), "--images", str(front_dir), "--rate", "5", "--camera", "a", "--camera", "b",
                 "--start-frame", "2"]) == 0
    with BagReader(out2) as reader:
        assert {t: i.count for t, i in reader.topics.items()} == {"/a/image": 5, "/b/image": 3}


def test_multi_camera_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img_dir, _ = _write_folder(tmp_path, _frames(2))
    out = tmp_path / "bag"
    cases = [
        (["--camera", "a", "--images", str(img_dir), "--rate", "5", "--camera", "a", "--images", str(img_dir),
          "--rate", "5"], "listed twice"),
        (["--camera", "a", "--images", str(img_dir), "--rate", "5", "--camera", "b", "--images", str(img_dir),
          "--rate", "5", "--image-topic", "/a/image"], "topic /a/image is used by a and by b"),
        (["--camera", "a", "--rate", "5"], "camera a: give exactly one source"),
        (["--camera", "a", "--images", str(img_dir)], "camera a: this source has no known frame rate"),
        (["--camera", "a", "--images", str(img_dir), "--rate", "5", "--storage", "sqlite3"],
         "misplaced option(s) --storage"),
        (["--images", str(img_dir), "--camera", "a", "--video", "x.mp4"], "video file not found"),  # its own
        (["--camera", "2a", "--images", str(img_dir), "--rate", "5"], "not a ROS name token"),
    ]
    for args, message in cases:
        assert main([str(out), *args]) == 2, args
        assert message in capsys.readouterr().err, message
        assert not out.exists()
