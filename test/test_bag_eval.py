"""dcfm-bag-eval: the real node over ROS loses no frame with --max, the report's metrics equal an offline
run of the same model on the same frames, and bad input gives a clear error or a counted skip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dcfm_ros.data.metrics import ConfusionMatrix, mean_video_consistency
from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.analysis import analyze, label_classes_warning
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError
from dcfm_ros.evaluation.bag_eval.params import effective_params, read_params_file
from dcfm_ros.evaluation.bagio import BagReader, BagWriter, Frame
from dcfm_ros.evaluation.report import FrameRecord, read_frames_csv
from dcfm_ros.tools.bag_eval import main
from dcfm_ros.tools.make_bag import main as make_bag

H, W = 48, 64
N = 10
INTERVAL = 3
CAMVID_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                "Pedestrian", "Bicyclist")


# ---------------------------------------------------------------------------------------------------------
# fixtures: a tiny CamVid-layout clip and a tiny 11-class checkpoint


def _clip(n: int = N, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth moving images (so that predictions have structure) and blocky labels 0..10 + 11 (void)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (W + 2 * n, H),
                      interpolation=cv2.INTER_CUBIC)
    images = [np.ascontiguousarray(base[:, 2 * i: 2 * i + W]) for i in range(n)]
    blocks = rng.integers(0, 12, (6, 8), dtype=np.uint8)
    labels = []
    for i in range(n):
        lab = cv2.resize(np.roll(blocks, i // 4, axis=1), (W, H), interpolation=cv2.INTER_NEAREST)
        labels.append(lab)
    return images, labels


@pytest.fixture(scope="module")
def camvid_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("camvid")
    (root / "val").mkdir()
    (root / "valannot").mkdir()
    images, labels = _clip()
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        name = f"0016E5_{7959 + 2 * i:05d}.png"
        cv2.imwrite(str(root / "val" / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "valannot" / name), lab)
    return root


@pytest.fixture(scope="module")
def camvid_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dcfm_ros.model import CAMVID_PALETTE, DCFMConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=11, class_names=CAMVID_NAMES,
                        palette=CAMVID_PALETTE, input_size=(64, 96))
    path = tmp_path_factory.mktemp("ckpt") / "camvid_tiny.safetensors"
    save_checkpoint(path, build_model(config, pretrained=None))
    return path


def _bag_from_camvid(root: Path, out: Path, *extra: str) -> Path:
    assert make_bag([str(out), "--camvid", str(root), "--split", "val", "--sequence", "0016E5", *extra]) == 0
    return out


def _copy_with(src: Path, dst: Path, extra: list[tuple[str, str, int, bytes]] = (),
               replace: dict[tuple[str, int], bytes] | None = None) -> Path:
    """Copy a bag message by message, adding raw messages (topic, type, log_ns, bytes) and replacing some
    (topic, index within topic) -> bytes: a way to put corrupt messages into an otherwise good bag."""
    replace = replace or {}
    with BagReader(src) as r, BagWriter(dst) as w:
        for t in r.topics.values():
            w.add_topic(t.name, t.msgtype)
        for topic, msgtype, _, _ in extra:
            w.add_topic(topic, msgtype)
        for raw in r.raw(list(r.topics)):
            w.write(raw.topic, raw.log_ns, replace.get((raw.topic, raw.index), raw.data))
        for topic, _, log_ns, data in extra:
            w.write(topic, log_ns, data)
    return dst


def _offline(ckpt: Path, images: list[np.ndarray], interval: int) -> list:
    """The same model in P mode from a fresh start, in this process: what the node must reproduce."""
    from dcfm_ros.engine.settings import PARAMETERS, engine_for, settings_from_values
    from dcfm_ros.model import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    # built as the node builds its engine at its defaults (backend auto, precision auto, labels_at auto)
    settings = settings_from_values({**{p.name: p.default for p in PARAMETERS}, "device": "cpu",
                                     "keyframe.policy": "fixed", "keyframe.interval": interval})
    engine = engine_for(settings, model)
    return [engine.process(img) for img in images]


def _read_topic(bag: Path, topic: str, kind: str = "labels") -> list[Frame]:
    with BagReader(bag) as r:
        items = list(r.frames(topic, kind))  # type: ignore[arg-type]
    assert all(isinstance(i, Frame) for i in items)
    return items  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------
# without ROS: parameters, errors before the node starts, the analysis pass


def test_effective_params(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("/**:\n  ros__parameters:\n    keyframe:\n      interval: 4\n    drop_policy: latest\n"
                 "other_node:\n  ros__parameters:\n    keyframe:\n      interval: 9\n")
    assert read_params_file(f) == {"keyframe.interval": 4, "drop_policy": "latest"}
    values = effective_params(f, [("overlay_alpha", 0.2)], max_mode=True, transport="compressed")
    assert values["keyframe.interval"] == 4 and values["overlay_alpha"] == 0.2
    assert values["drop_policy"] == "none" and values["qos.reliability"] == "reliable"  # --max needs these
    assert values["use_sim_time"] is True and values["image_transport"] == "compressed"
    assert effective_params(f, [], max_mode=False, transport="raw")["drop_policy"] == "latest"
    with pytest.raises(BagEvalError, match=r"unknown node parameter.*keyframe\.intervall"):
        effective_params(f, [("keyframe.intervall", 3)], max_mode=False, transport="raw")
    with pytest.raises(BagEvalError, match="params file not found"):
        read_params_file(tmp_path / "nope.yaml")


def test_errors_before_the_node_starts(tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--max-frames", "2")
    out = ["--out", str(tmp_path / "out"), "--model", str(camvid_checkpoint)]
    assert main([str(tmp_path / "missing"), "--max", *out]) == 2
    assert "bag not found" in capsys.readouterr().err
    assert main([str(bag), "--gt-topic", "/nope", "--max", *out]) == 2
    err = capsys.readouterr().err
    assert "ground-truth topic '/nope' is not in bag" in err
    assert "/camera/labels [sensor_msgs/msg/Image]" in err  # the topics that exist are listed
    assert main([str(bag), "--image-topic", "/cam", "--max", *out]) == 2
    assert "image topic '/cam' is not in bag" in capsys.readouterr().err
    assert main([str(bag), "--max", "--param", "keyframe.intervall=3", *out]) == 2
    assert "unknown node parameter(s) keyframe.intervall" in capsys.readouterr().err
    assert main([str(bag), "--max", "--out", str(tmp_path / "out"), "--model",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "model file" in capsys.readouterr().err


def test_label_class_map_of_the_bag_is_checked(tmp_path: Path) -> None:
    """A bag made from a dataset records its class names; evaluating its labels with a model of another
    class map is warned about (the ids would mean different classes)."""
    from train_fixtures import make_vspw

    bag = tmp_path / "vspw_bag"
    assert make_bag([str(bag), "--vspw", str(make_vspw(tmp_path / "vspw")), "--rate", "15"]) == 0
    with BagReader(bag) as r:
        custom = r.custom_data
    warning = label_classes_warning(custom, "/camera/labels", CAMVID_NAMES)
    assert warning is not None and "vspw train ids of 124 classes" in warning and "model has 11" in warning
    vspw_names = json.loads(custom["dcfm_ros.make_bag"])["class_names"]
    assert label_classes_warning(custom, "/camera/labels", vspw_names) is None
    assert label_classes_warning(custom, "/other/labels", CAMVID_NAMES) is None  # not the topic it made
    assert label_classes_warning({}, "/camera/labels", CAMVID_NAMES) is None  # a bag from elsewhere


def test_analyze_counts_unusable_ground_truth(tmp_path: Path) -> None:
    """Corrupt and mis-sized GT messages are listed and left out; a frame without output breaks the
    mVC run; values outside the model's classes stop with an error naming the frame."""
    n = 24
    images, labels = _clip(n, seed=3)
    labels = [np.where(lab == 11, 255, lab).astype(np.uint8) for lab in labels]
    rng = np.random.default_rng(5)
    preds = [np.where(rng.random((H, W)) < 0.8, np.where(lab == 255, 0, lab), 3).astype(np.uint8)
             for lab in labels]
    stamps = [1_000_000_000 + i * 66_666_667 for i in range(n)]
    bad_gt, small_gt, dropped = 4, 7, 9
    in_bag, out_bag = tmp_path / "in", tmp_path / "out"
    with BagWriter(in_bag) as w:
        w.add_topic("/cam", bagio.IMAGE)
        w.add_topic("/gt", bagio.IMAGE)
        for i, s in enumerate(stamps):
            w.write("/cam", s, bagio.image_msg(images[i], s, "c"))
            if i == bad_gt:
                w.write("/gt", s + 1, b"\x00\x01\x00\x00" + s.to_bytes(8, "little"))  # header only: truncated
            elif i == small_gt:
                w.write("/gt", s + 1, bagio.label_msg(labels[i][:24], s, "c"))
            else:
                w.write("/gt", s + 1, bagio.label_msg(labels[i], s, "c"))
    with BagWriter(out_bag) as w:
        w.add_topic("/segmentation/labels", bagio.IMAGE)
        for i, s in enumerate(stamps):
            if i != dropped:
                w.write("/segmentation/labels", s, bagio.label_msg(preds[i], s, "c"))
    records = [FrameRecord(index=i, stamp_ns=s, log_ns=s, status="dropped" if i == dropped else "ok",
                           sent_s=0.1 * i, latency_ms=10.0, is_keyframe=i % 2 == 0)
               for i, s in enumerate(stamps)]
    an = analyze(in_bag, out_bag, records, image_topic="/cam", gt_topic="/gt", class_names=CAMVID_NAMES,
                 palette=[(i * 20, 0, 0) for i in range(11)], out_dir=tmp_path)
    assert sorted(b.index for b in an.gt_bad) == [bad_gt, small_gt]
    assert any("does not deserialize" in b.reason for b in an.gt_bad)
    assert any("ground truth is 64x24, the image 64x48" in b.reason for b in an.gt_bad)
    used = [i for i in range(n) if i not in (bad_gt, small_gt, dropped)]
    m = an.metrics
    assert m is not None and m["frames"] == len(used) and m["mvc_runs"] == 4
    cm = ConfusionMatrix(11)
    for i in used:
        cm.update(preds[i], labels[i])
    assert m["miou"] == cm.miou() and m["wiou"] == cm.fwiou()
    runs = [(0, 4), (5, 7), (8, 9), (10, n)]  # the frames between the gaps at 4, 7 and 9
    videos = [([labels[i] for i in range(a, b)], [preds[i] for i in range(a, b)]) for a, b in runs]
    assert m["mvc8"] is not None and m["mvc8"] == mean_video_consistency(videos, 8)
    assert m["mvc16"] is None  # no run of 16 frames
    assert [r.has_gt for r in records] == [i not in (bad_gt, small_gt) for i in range(n)]
    cap = cv2.VideoCapture(str(tmp_path / an.video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    assert cv2.imread(str(tmp_path / an.contact_sheet)) is not None

    # ground truth that does not use the model's class ids: an error, not a number
    with pytest.raises(BagEvalError, match=r"ground truth of frame 0 on /gt .* does not fit the model's 5"):
        analyze(in_bag, out_bag, records, image_topic="/cam", gt_topic="/gt", class_names=CAMVID_NAMES[:5],
                palette=[(0, 0, 0)] * 5, out_dir=tmp_path, video=False)


def _analysis_bags(tmp_path: Path, n: int) -> tuple[Path, Path, list[FrameRecord]]:
    """An input bag (camera + GT) and an output bag (labels for every frame), as a run leaves them."""
    images, labels = _clip(n, seed=7)
    labels = [np.where(lab == 11, 255, lab).astype(np.uint8) for lab in labels]
    stamps = [2_000_000_000 + i * 66_666_667 for i in range(n)]
    in_bag, out_bag = tmp_path / "in", tmp_path / "out"
    with BagWriter(in_bag) as w:
        w.add_topic("/cam", bagio.IMAGE)
        w.add_topic("/gt", bagio.IMAGE)
        for i, st in enumerate(stamps):
            w.write("/cam", st, bagio.image_msg(images[i], st, "c"))
            w.write("/gt", st + 1, bagio.label_msg(labels[i], st, "c"))
    with BagWriter(out_bag) as w:
        w.add_topic("/segmentation/labels", bagio.IMAGE)
        for i, st in enumerate(stamps):
            pred = np.where(labels[i] == 255, 0, labels[i]).astype(np.uint8)
            w.write("/segmentation/labels", st, bagio.label_msg(pred, st, "c"))
    records = [FrameRecord(index=i, stamp_ns=st, log_ns=st, status="ok", sent_s=0.1 * i, latency_ms=10.0,
                           is_keyframe=i % 2 == 0) for i, st in enumerate(stamps)]
    return in_bag, out_bag, records


def test_analyze_truthful_captions_legend_and_stop(tmp_path: Path) -> None:
    """The contact sheet says "ground truth" only with ground truth; the video carries the legend; a stop
    request ends the pass at the current frame, and what was analysed is still written whole."""
    from dcfm_ros.model import CAMVID_PALETTE

    n = 12
    in_bag, out_bag, records = _analysis_bags(tmp_path, n)
    kw = {"image_topic": "/cam", "class_names": CAMVID_NAMES, "palette": CAMVID_PALETTE}
    with_gt = analyze(in_bag, out_bag, records, gt_topic="/gt", out_dir=tmp_path, **kw)
    assert with_gt.contact_sheet_columns == "camera | overlay | ground truth"
    assert with_gt.metrics is not None and with_gt.metrics["frames"] == n and with_gt.metrics["miou"] == 1.0
    assert (with_gt.analysed, with_gt.stopped) == (n, False)
    assert with_gt.video == "overlay.mp4" and with_gt.video_codec == "h264"
    cap = cv2.VideoCapture(str(tmp_path / with_gt.video))
    ok, first = cap.read()
    assert ok and first.shape[1] == W and first.shape[0] > H  # the legend strip below the picture
    legend_part = cv2.cvtColor(first[H:], cv2.COLOR_BGR2RGB).reshape(-1, 3).astype(int)
    road = np.array(CAMVID_PALETTE[CAMVID_NAMES.index("Road")])
    assert (np.abs(legend_part - road).max(axis=1) < 40).sum() > 3  # its swatch, through the codec

    out2 = tmp_path / "no_gt"
    out2.mkdir()
    no_gt = analyze(in_bag, out_bag, records, gt_topic=None, out_dir=out2, video=False, **kw)
    assert no_gt.contact_sheet_columns == "camera | overlay | prediction" and no_gt.metrics is None
    assert no_gt.video is None and not list(out2.glob("overlay*"))

    out3 = tmp_path / "stopped"
    out3.mkdir()
    calls = iter(range(1000))
    stopped = analyze(in_bag, out_bag, records, gt_topic="/gt", out_dir=out3,
                      should_stop=lambda: next(calls) >= 5, **kw)
    assert (stopped.analysed, stopped.stopped) == (5, True)
    assert stopped.metrics is not None and stopped.metrics["frames"] == 5
    cap = cv2.VideoCapture(str(out3 / stopped.video))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 5 and not list(out3.glob(".*partial*"))


# ---------------------------------------------------------------------------------------------------------
# with the real node over ROS


@pytest.mark.ros
def test_type_hashes_match_rclpy(ros_context) -> None:
    import rclpy
    from dcfm_ros.msg import SegmentationClasses, SegmentationInfo
    from sensor_msgs.msg import CompressedImage, Image

    node = rclpy.create_node("hash_check", context=ros_context)
    try:
        for i, (cls, name) in enumerate(((Image, bagio.IMAGE), (CompressedImage, bagio.COMPRESSED_IMAGE),
                                         (SegmentationInfo, bagio.SEGMENTATION_INFO),
                                         (SegmentationClasses, bagio.SEGMENTATION_CLASSES))):
            topic = f"/hash_check_{i}"
            node.create_publisher(cls, topic, 1)
            (info,) = node.get_publishers_info_by_topic(topic)
            assert str(info.topic_type_hash) == bagio.type_hash(name), name
    finally:
        node.destroy_node()


@pytest.mark.ros
def test_max_loses_no_frame_and_metrics_equal_offline(tmp_path: Path, camvid_root: Path,
                                                      camvid_checkpoint: Path) -> None:
    good = _bag_from_camvid(camvid_root, tmp_path / "good")
    with BagReader(good) as r:
        inputs = [f for f in r.frames("/camera/image") if isinstance(f, Frame)]
    # one corrupt camera message between frames 3 and 4: skipped and listed, never sent
    corrupt_log = (inputs[3].log_ns + inputs[4].log_ns) // 2
    bag = _copy_with(good, tmp_path / "bag", extra=[("/camera/image", bagio.IMAGE, corrupt_log,
                                                     b"\x00\x01\x00\x00\x01\x02")])
    out = tmp_path / "eval"
    rc = main([str(bag), "--image-topic", "/camera/image", "--gt-topic", "/camera/labels", "--max",
               "--model", str(camvid_checkpoint), "--param", f"keyframe.interval={INTERVAL}",
               "--param", "keyframe.policy=fixed", "--out", str(out), "-q"])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    report = json.loads((out / "report.json").read_text())
    assert (report["frames_in"], report["frames_out"], report["frames_dropped"]) == (N, N, 0)
    assert report["frames_skipped"] == 1 and report["timeouts"] == 0 and report["unmatched_outputs"] == 0
    assert report["skipped"][0]["index"] == 4 and "does not deserialize" in report["skipped"][0]["reason"]
    assert report["node_counters"] == {"frames_received": N, "frames_processed": N, "frames_dropped": 0,
                                       "bad_inputs": 0}
    assert report["warnings"] == []  # includes: type hashes of the outputs equal rclpy's

    # outputs line up with inputs: same header stamps, recorded at the input's record time
    labels = _read_topic(out / "bag", "/segmentation/labels")
    assert [f.stamp_ns for f in labels] == [f.stamp_ns for f in inputs]
    assert [f.log_ns for f in labels] == [f.log_ns for f in inputs]
    with BagReader(out / "bag") as r:
        assert r.topics["/segmentation/info"].count == N and r.topics["/segmentation/classes"].count == 1

    # the same model offline on the same frames: identical labels, keyframes and metrics
    gts = [f.image for f in _read_topic(bag, "/camera/labels")]
    ref = _offline(camvid_checkpoint, [f.image for f in inputs], INTERVAL)
    for got, want in zip(labels, ref, strict=True):
        np.testing.assert_array_equal(got.image, want.labels)
    keys = [r_.is_keyframe for r_ in read_frames_csv(out / "frames.csv")]
    assert keys == [r.is_keyframe for r in ref] == [i % INTERVAL == 0 for i in range(N)]
    assert [r_.common_age for r_ in read_frames_csv(out / "frames.csv")] == [r.common_age for r in ref]
    assert report["keyframe_ratio"] == pytest.approx(sum(keys) / N)
    cm = ConfusionMatrix(11)
    for r_, g in zip(ref, gts, strict=True):
        cm.update(r_.labels, g)
    summary = cm.summary(CAMVID_NAMES)
    m = report["metrics"]
    assert m["frames"] == N
    assert m["miou"] == pytest.approx(summary["mIoU"], abs=1e-12)
    assert m["wiou"] == pytest.approx(summary["wIoU"], abs=1e-12)
    assert m["per_class_iou"] == pytest.approx(summary["per_class_IoU"], abs=1e-12)
    mvc8 = mean_video_consistency([(gts, [r_.labels for r_ in ref])], 8)
    assert m["mvc8"] == pytest.approx(mvc8, abs=1e-12)
    assert m["mvc16"] is None  # 10 frames: no 16-frame window

    # the report's other parts
    for key in ("all", "key", "nonkey"):
        assert report["latency_ms"][key]["n"] == {"all": N, "key": 4, "nonkey": 6}[key]
        assert report["latency_ms"][key]["p50"] > 0
    assert report["throughput_fps"] > 0
    assert report["node_params"]["drop_policy"] == "none" and report["node_params"]["keyframe.interval"] == 3
    for key in ("latency_plot", "latency_hist", "class_iou_plot", "contact_sheet"):
        assert cv2.imread(str(out / report["files"][key])) is not None, key
    cap = cv2.VideoCapture(str(out / report["files"]["video"]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N
    assert "| 10 | 10 | 0 | 1 |" in (out / "report.md").read_text()


@pytest.mark.ros
def test_rate_mode_compressed_with_params_file(tmp_path: Path, camvid_root: Path,
                                               camvid_checkpoint: Path) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--compressed", "--max-frames", "6")
    params = tmp_path / "params.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    model: {camvid_checkpoint}\n    keyframe:\n"
                      "      interval: 2\n    drop_policy: none\n    qos:\n      reliability: reliable\n")
    out = tmp_path / "eval"
    assert main([str(bag), "--rate", "3", "--params", str(params), "--record-color", "--no-video",
                 "--out", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == {"max": False, "rate": 3.0}
    assert report["input"]["image_topic"] == "/camera/image/compressed"  # found without --image-topic
    assert (report["frames_in"], report["frames_out"]) == (6, 6)
    assert report["metrics"] is None and report["files"]["class_iou_plot"] is None
    assert report["files"]["video"] is None
    assert report["node_params"]["image_transport"] == "compressed"
    assert report["node_params"]["use_sim_time"] is True
    with BagReader(bag) as r:
        in_stamps = [f.stamp_ns for f in r.frames("/camera/image/compressed")]
    color = _read_topic(out / "bag", "/segmentation/color", "image")
    # Viewer outputs are latest-only in the node: a subset of the frames, in order, at their frames'
    # record times, and always the last frame's.
    stamps = [f.stamp_ns for f in color]
    assert stamps == [f.log_ns for f in color] and stamps == sorted(stamps)
    assert set(stamps) <= set(in_stamps) and stamps[-1] == in_stamps[-1]
    assert color[0].image.shape == (H, W, 3)


@pytest.mark.ros
def test_viewer_mode_runs_both_cases_side_by_side(tmp_path: Path, camvid_root: Path,
                                                  camvid_checkpoint: Path) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--compressed", "--max-frames", "4")
    out = tmp_path / "eval"
    assert main([str(bag), "--max", "--model", str(camvid_checkpoint), "--viewer", "compressed",
                 "--no-video", "--out", str(out), "-q"]) == 0
    rows = json.loads((out / "viewers.json").read_text())
    assert [r["run"] for r in rows] == ["no viewer", "compressed"]
    assert all(r["frames"] == 4 for r in rows)
    assert rows[0]["viewer"] is None and rows[0]["fps_ratio"] is None
    assert rows[1]["fps_ratio"] is not None and rows[1]["p99_ratio"] is not None
    topics = rows[1]["viewer"]
    assert set(topics) == {"/segmentation/color/compressed", "/segmentation/overlay/compressed"}
    for counts in topics.values():  # the viewer process received them; the newest frame always comes
        assert counts["messages"] >= 1 and 0 < counts["bytes_per_message"] < H * W * 3
    table = (out / "viewers.md").read_text()
    assert "| no viewer | 4 |" in table and "| compressed | 4 |" in table
    for case in ("no_viewer", "compressed"):
        assert json.loads((out / case / "report.json").read_text())["frames_out"] == 4


@pytest.mark.ros
def test_node_failure_shows_its_log(tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--max-frames", "2")
    rc = main([str(bag), "--max", "--model", str(camvid_checkpoint), "--param", "keyframe.interval=0",
               "--out", str(tmp_path / "eval"), "-q"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "dcfm_node exited with status 1" in err and "keyframe.interval" in err
    assert not (tmp_path / "eval" / "report.json").exists()



@pytest.mark.ros
def test_report_metrics_equal_dcfm_evaluate(tmp_path: Path, camvid_checkpoint: Path, one_torch_thread: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's promise: the report's metrics are the ones `dcfm-evaluate` computes offline on the same
    frames (same checkpoint, P mode, the same fixed keyframe interval). Everything between the dataset
    folder and the numbers differs (bag, ROS transport, node process, stamp matching), so any gap in
    void mapping, resizing, argmax or class bookkeeping shows up here."""
    from train_fixtures import make_camvid

    from dcfm_ros.tools.evaluate import main as evaluate_main

    # one thread in the node too: the in-process run below uses one (same kernels, same bits)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # one densely numbered 15 Hz sequence (frames 2 apart) with a void (11) strip in every label
    frames = [f"{n:05d}" for n in range(7959, 7959 + 2 * N, 2)]
    root = make_camvid(tmp_path / "camvid", train={}, val={"0016E5": frames}, test={})
    bag = _bag_from_camvid(root, tmp_path / "bag")
    out = tmp_path / "eval"
    rc = main([str(bag), "--gt-topic", "/camera/labels", "--max", "--model", str(camvid_checkpoint),
               "--param", "keyframe.policy=fixed", "--param", f"keyframe.interval={INTERVAL}",
               # fp32 as dcfm-evaluate's default (the node's precision auto is bf16 on a bf16 CPU)
               "--param", "device=cpu", "--param", "precision=fp32", "--no-video", "--out", str(out), "-q"])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    report = json.loads((out / "report.json").read_text())
    assert (report["frames_in"], report["frames_out"], report["frames_dropped"]) == (N, N, 0)
    assert report["warnings"] == []  # includes: the bag's CamVid class map is the model's
    m = report["metrics"]
    assert m["frames"] == N and m["mvc_runs"] == 1

    offline = tmp_path / "evaluate.json"
    assert evaluate_main(["--model", str(camvid_checkpoint), "--dataset", "camvid", "--root", str(root),
                          "--split", "val", "--modes", "p", "--policies", f"fixed:{INTERVAL}",
                          "--device", "cpu", "--json", str(offline), "--quiet"]) == 0
    ev = json.loads(offline.read_text())
    assert ev["dense_videos"] == ["0016E5"] and ev["num_frames"] == N
    (row,) = ev["results"]
    assert (row["mode"], row["policy"], row["labeled_frames"]) == ("p", f"fixed:{INTERVAL}", N)
    assert row["keyframe_ratio"] == pytest.approx(report["keyframe_ratio"], abs=1e-12)
    # the label fixture has void pixels and classes the model never predicts: both conventions matter
    gt = _read_topic(bag, "/camera/labels")[0].image
    assert (gt == 255).any()
    assert any(v is None for v in row["per_class_IoU"].values())
    assert m["miou"] == pytest.approx(row["mIoU"], abs=1e-9)
    assert m["wiou"] == pytest.approx(row["wIoU"], abs=1e-9)
    assert m["pixel_acc"] == pytest.approx(row["pixel_acc"], abs=1e-9)
    assert list(m["per_class_iou"]) == list(row["per_class_IoU"]) == list(CAMVID_NAMES)
    for name, want in row["per_class_IoU"].items():
        got = m["per_class_iou"][name]
        assert (got is None) == (want is None), name
        if want is not None:
            assert got == pytest.approx(want, abs=1e-9), name
    assert row["mVC_8"] is not None
    assert m["mvc8"] == pytest.approx(row["mVC_8"], abs=1e-9)
    assert m["mvc16"] is None and row["mVC_16"] is None  # 10 frames: no 16-frame window


@pytest.mark.ros
def test_slice_of_a_bag_and_transport_option(tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag")
    with BagReader(bag) as r:
        start = r.start_ns
        inputs = [f for f in r.frames("/camera/image") if isinstance(f, Frame)]
    offset = (inputs[3].log_ns - start) / 1e9 - 0.001  # just before frame 3
    out = tmp_path / "eval"
    assert main([str(bag), "--gt-topic", "/camera/labels", "--max", "--model", str(camvid_checkpoint),
                 "--start", f"{offset:.6f}", "--max-frames", "4", "--transport", "large_data", "--no-video",
                 "--out", str(out), "-q"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is True and report["transport"] == "LARGE_DATA"
    assert (report["frames_in"], report["frames_out"]) == (4, 4)
    assert report["slice"]["start_s"] == pytest.approx(offset) and report["slice"]["max_frames"] == 4
    assert report["slice"]["first_s"] == pytest.approx((inputs[3].log_ns - start) / 1e9)
    assert report["slice"]["last_s"] == pytest.approx((inputs[6].log_ns - start) / 1e9)
    assert [r.stamp_ns for r in read_frames_csv(out / "frames.csv")] == [f.stamp_ns for f in inputs[3:7]]
    assert report["metrics"]["frames"] == 4 and report["gt_skipped"] == 0
    assert [f.stamp_ns for f in _read_topic(out / "bag", "/segmentation/labels")] == \
        [f.stamp_ns for f in inputs[3:7]]
    assert "at most 4 frames" in (out / "report.md").read_text()

    # a start past the end is an error before the node starts
    assert main([str(bag), "--max", "--model", str(camvid_checkpoint), "--start", "100",
                 "--out", str(tmp_path / "late"), "-q"]) == 2
    assert "--start 100 s: no message on /camera/image" in capsys.readouterr().err
    assert main([str(bag), "--max", "--model", str(camvid_checkpoint), "--max-frames", "0",
                 "--out", str(tmp_path / "late"), "-q"]) == 2
    assert "--max-frames must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# signals: dcfm-bag-eval as a real process, signalled like a terminal or a supervisor would


BAG_EVAL_EXE = Path(sys.executable).parent / "dcfm-bag-eval"


class _Proc:
    """dcfm-bag-eval as a subprocess; its stderr collected by a thread, so a test can wait for a line."""

    def __init__(self, args: list[str]) -> None:
        from conftest import NODE_ENV, ros_env

        # its own process group, so a test can signal the group as a terminal's Ctrl-C does
        self.proc = subprocess.Popen([str(BAG_EVAL_EXE), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ros_env(NODE_ENV),
                                     start_new_session=True)
        self.err: list[str] = []
        self._reader = threading.Thread(target=lambda: self.err.extend(iter(self.proc.stderr.readline, "")),
                                        daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            code = self.proc.poll()
            assert code is None, f"exited ({code}) before {text!r}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{self.stderr}"
            time.sleep(0.05)

    def finish(self, timeout: float = 60.0) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        self.stdout = out
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return "".join(self.err)


def _processes_mentioning(text: str) -> list[int]:
    """pids whose command line contains `text` (the node's command line names DIR/node_params.yaml)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


@pytest.mark.ros
def test_signals_during_playback_stop_cleanly_with_an_incomplete_report(tmp_path: Path, camvid_root: Path,
                                                                      camvid_checkpoint: Path) -> None:
    """SIGINT to the process group (a terminal's Ctrl-C), SIGINT again, then SIGTERM while frames are
    playing: exit 130 without a traceback, no node left, and a report of the frames played, marked
    incomplete, with its output bag whole."""
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag")
    out = tmp_path / "eval"
    # 15 Hz recorded, played at 0.1x: 10 frames take about 6 s, so the signals land mid-playback
    run = _Proc([str(bag), "--gt-topic", "/camera/labels", "--rate", "0.1", "--model", str(camvid_checkpoint),
                 "--out", str(out)])
    run.wait_for("the node is ready; playing", timeout=120)
    node_pids = _processes_mentioning(str(out / "node_params.yaml"))
    assert len(node_pids) == 1
    time.sleep(1.5)
    os.killpg(run.proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group (the node has its own)
    time.sleep(0.05)
    run.proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    run.proc.send_signal(signal.SIGTERM)
    rc = run.finish()
    assert rc == 130, run.stderr
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr
    assert _processes_mentioning(str(out / "node_params.yaml")) == []
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False
    assert report["incomplete_reason"].startswith("playback stopped by SIGINT after ")
    assert 1 <= report["frames_in"] < N and report["frames_out"] == report["frames_in"]
    assert report["metrics"]["frames"] == report["frames_out"]
    assert "**Incomplete run: playback stopped by SIGINT" in (out / "report.md").read_text()
    assert "INCOMPLETE: playback stopped by SIGINT" in run.stdout
    labels = _read_topic(out / "bag", "/segmentation/labels")  # the output bag was closed properly
    assert len(labels) == report["frames_out"]
    assert not list(out.glob(".*partial*"))


@pytest.mark.ros
def test_sigterm_during_node_start_up(tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path) -> None:
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--max-frames", "2")
    out = tmp_path / "eval"
    run = _Proc([str(bag), "--max", "--model", str(camvid_checkpoint), "--out", str(out)])
    deadline = time.monotonic() + 60
    while not _processes_mentioning(str(out / "node_params.yaml")):  # the node is starting
        assert run.proc.poll() is None and time.monotonic() < deadline, run.stderr
        time.sleep(0.02)
    run.proc.send_signal(signal.SIGTERM)
    run.proc.send_signal(signal.SIGTERM)
    rc = run.finish()
    assert rc == 143, run.stderr
    assert "Traceback" not in run.stderr
    assert _processes_mentioning(str(out / "node_params.yaml")) == []
    report = json.loads((out / "report.json").read_text())
    assert report["complete"] is False and report["frames_in"] == 0
    assert report["incomplete_reason"] == ("playback stopped by SIGTERM during the node's start-up, before "
                                           "any frame was sent")


@pytest.mark.ros
def test_no_node_outlives_a_killed_bag_eval(tmp_path: Path, camvid_root: Path,
                                            camvid_checkpoint: Path) -> None:
    """SIGKILL leaves dcfm-bag-eval no chance to stop the node: the kernel's parent-death signal does."""
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag")
    out = tmp_path / "eval"
    run = _Proc([str(bag), "--rate", "0.1", "--model", str(camvid_checkpoint), "--out", str(out)])
    run.wait_for("the node is ready; playing", timeout=120)
    assert len(_processes_mentioning(str(out / "node_params.yaml"))) == 1
    run.proc.kill()
    run.finish()
    deadline = time.monotonic() + 60  # the node's own shutdown on SIGTERM, on a busy machine
    while _processes_mentioning(str(out / "node_params.yaml")):
        assert time.monotonic() < deadline, "dcfm_node outlived dcfm-bag-eval"
        time.sleep(0.2)
    assert not (out / "report.json").exists()  # no report passes for one that was never written


@pytest.mark.ros
def test_multi_camera_bag_round_trip(tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path) -> None:
    """A two-camera bag from dcfm-make-bag (the clip, and the clip from frame 3 at another rate) through
    one node with cameras: each camera's labels equal a single-camera engine fed that camera's frames
    alone, its metrics equal those offline, and the overall metrics are those of both cameras' frames."""
    bag = tmp_path / "bag"
    assert make_bag([str(bag), "--camvid", str(camvid_root), "--split", "val", "--sequence", "0016E5",
                     "--camera", "front", "--camera", "rear", "--start-frame", "3", "--rate", "10"]) == 0
    out = tmp_path / "eval"
    rc = main([str(bag), "--image-topic", "/front/image", "--image-topic", "/rear/image",
               "--gt-topic", "/front/labels", "--gt-topic", "/rear/labels", "--max",
               "--model", str(camvid_checkpoint), "--param", f"keyframe.interval={INTERVAL}",
               "--param", "keyframe.policy=fixed", "--out", str(out), "-q"])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    report = json.loads((out / "report.json").read_text())
    assert report["node_params"]["cameras"] == ["front", "rear"]
    counts = {"front": N, "rear": N - 3}
    total = ConfusionMatrix(11)
    for cam, n in counts.items():
        row = report["cameras"][cam]
        assert (row["frames_in"], row["frames_out"], row["frames_dropped"], row["timeouts"]) == (n, n, 0, 0)
        inputs = _read_topic(bag, f"/{cam}/image", "image")
        labels = _read_topic(out / "bag", f"/{cam}/segmentation/labels")
        assert [f.stamp_ns for f in labels] == [f.stamp_ns for f in inputs]
        ref = _offline(camvid_checkpoint, [f.image for f in inputs], INTERVAL)
        for got, want in zip(labels, ref, strict=True):
            np.testing.assert_array_equal(got.image, want.labels)
        gts = [f.image for f in _read_topic(bag, f"/{cam}/labels")]
        cm = ConfusionMatrix(11)
        for r_, g in zip(ref, gts, strict=True):
            cm.update(r_.labels, g)
            total.update(r_.labels, g)
        cam_report = json.loads((out / cam / "report.json").read_text())
        assert cam_report["metrics"]["miou"] == pytest.approx(cm.summary(CAMVID_NAMES)["mIoU"], abs=1e-12)
        assert row["miou"] == cam_report["metrics"]["miou"]
        assert [r_.is_keyframe for r_ in read_frames_csv(out / cam / "frames.csv")] == [
            i % INTERVAL == 0 for i in range(n)]
    overall = report["overall"]
    assert (overall["frames_in"], overall["frames_out"]) == (2 * N - 3, 2 * N - 3)
    assert overall["metrics"]["miou"] == pytest.approx(total.summary(CAMVID_NAMES)["mIoU"], abs=1e-12)
    assert overall["metrics"]["frames"] == 2 * N - 3
    text = (out / "report.md").read_text()
    assert "| [front](front/report.md) | `/front/image` | 10 | 10 | 0 |" in text and "**overall**" in text
    # a gt topic count that does not pair with the cameras is refused before the node starts
    assert main([str(bag), "--image-topic", "/front/image", "--image-topic", "/rear/image",
                 "--gt-topic", "/front/labels", "--max", "--model", str(camvid_checkpoint),
                 "--out", str(tmp_path / "bad"), "-q"]) == 2


@pytest.mark.ros
def test_multi_camera_rate_mode_compressed(tmp_path: Path, camvid_root: Path,
                                           camvid_checkpoint: Path) -> None:
    """--rate with two compressed camera topics: recorded timing, the node's own drop policy; every
    frame sent is accounted for per camera (answered or dropped), the bag's outputs are per camera."""
    bag = tmp_path / "bag"
    assert make_bag([str(bag), "--camvid", str(camvid_root), "--split", "val", "--sequence", "0016E5",
                     "--compressed", "--camera", "a", "--camera", "b", "--rate", "8"]) == 0
    out = tmp_path / "eval"
    rc = main([str(bag), "--image-topic", "/a/image/compressed", "--image-topic", "/b/image/compressed",
               "--rate", "1", "--model", str(camvid_checkpoint), "--out", str(out), "-q", "--no-video"])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    report = json.loads((out / "report.json").read_text())
    assert report["node_params"]["image_transport"] == "compressed"
    for cam in ("a", "b"):
        row = report["cameras"][cam]
        assert row["frames_in"] == N and row["frames_out"] + row["frames_dropped"] == N
        assert row["frames_out"] > 0 and row["node_counters"]["frames_received"] == N
    with BagReader(out / "bag") as r:
        assert {"/a/segmentation/labels", "/b/segmentation/labels", "/a/segmentation/classes"} <= set(
            r.topics)


@pytest.mark.ros
def test_a_camera_too_large_for_the_default_shared_memory_segment_is_warned_about(
        tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path) -> None:
    """Labels over Fast DDS's 0.5 MB segment cross to dcfm-bag-eval as UDP fragments, which the
    report's latencies include: the report says so and names --transport LARGE_SHM, which it then
    no longer needs to say."""
    bag = _bag_from_camvid(camvid_root, tmp_path / "bag", "--resize", "1024x768", "--compressed")
    warned = {}
    for transport in ("UDPv4", "LARGE_SHM"):
        out = tmp_path / transport
        rc = main([str(bag), "--image-topic", "/camera/image/compressed", "--gt-topic", "/camera/labels",
                   "--max", "--max-frames", "2", "--model", str(camvid_checkpoint), "--no-video",
                   "--transport", transport, "--out", str(out), "-q"])
        assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
        report = json.loads((out / "report.json").read_text())
        assert report["frames_out"] == 2 and report["transport"] == transport
        warned[transport] = [w for w in report["warnings"] if "shared-memory segment" in w]
    assert len(warned["UDPv4"]) == 1 and "1024x768" in warned["UDPv4"][0]
    assert "--transport LARGE_SHM" in warned["UDPv4"][0]
    assert warned["LARGE_SHM"] == []


@pytest.mark.ros
def test_multi_camera_report_warns_of_labels_too_large_for_the_default_segment(
        tmp_path: Path, camvid_root: Path, camvid_checkpoint: Path) -> None:
    bag = tmp_path / "bag"
    # options before the first --camera are every camera's
    assert make_bag([str(bag), "--resize", "1024x768", "--compressed", "--camvid", str(camvid_root),
                     "--split", "val", "--sequence", "0016E5", "--camera", "front", "--camera", "rear"]) == 0
    out = tmp_path / "eval"
    rc = main([str(bag), "--image-topic", "/front/image/compressed",
               "--image-topic", "/rear/image/compressed", "--max",
               "--model", str(camvid_checkpoint), "--no-video",
               "--transport", "UDPv4", "--out", str(out), "-q"])
    assert rc == 0, (out / "node.log").read_text() if (out / "node.log").exists() else ""
    for cam in ("front", "rear"):  # each camera's own report
        report = json.loads((out / cam / "report.json").read_text())
        (warning,) = [w for w in report["warnings"] if "shared-memory segment" in w]
        assert "1024x768" in warning and "--transport LARGE_SHM" in warning
