"""dcfm-fleet-eval: the same per-bag numbers serially, in 2 processes and on a local Ray; a rerun reuses
finished bags; a corrupt bag is named and skipped; --export-hard writes a folder dataset that dcfm-train
trains on; and on the demo bag the numbers equal dcfm-bag-eval --max's through the real node."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from dcfm_ros.evaluation.bagio import BagReader, Frame
from dcfm_ros.evaluation.fleet.scoring import comparable, low_confidence_stretches
from dcfm_ros.evaluation.make_bag import SourceFrame, write_bag
from dcfm_ros.tools.fleet_eval import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo" / "camvid_val_0016E5"
CAMERA, LABELS = "/camera/image/compressed", "/camera/labels"
FRAMES = 6  # per test bag
HAVE_RAY = importlib.util.find_spec("ray") is not None


def _demo_frames(n: int) -> list[SourceFrame]:
    with BagReader(DEMO) as bag:
        imgs = [f for f in bag.frames(CAMERA) if isinstance(f, Frame)][:n]
        labs = {f.stamp_ns: f.image for f in bag.frames(LABELS, "labels") if isinstance(f, Frame)}
    return [SourceFrame(f"f{i}", f.image, labs[f.stamp_ns]) for i, f in enumerate(imgs)]


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three short drives from the demo clip: as recorded with ground truth (dcfm-make-bag records its
    label topic, so no --gt-topic is needed), darkened (raw images, no labels) and fogged."""
    root = tmp_path_factory.mktemp("drives")
    src = _demo_frames(3 * FRAMES)
    day = src[:FRAMES]
    dark = [SourceFrame(f.name, (f.rgb // 4).astype(np.uint8), None) for f in src[FRAMES:2 * FRAMES]]
    fog = [SourceFrame(f.name, (f.rgb // 4 + 170).astype(np.uint8), None) for f in src[2 * FRAMES:]]
    write_bag(root / "day", iter(day), rate=15.0, compressed=True, source={"type": "camvid"})
    write_bag(root / "dark", iter(dark), rate=15.0)
    write_bag(root / "fog", iter(fog), rate=15.0, start_ns=1_800_000_000 * 10**9)
    return [root / "day", root / "dark", root / "fog"]


def _results(out: Path) -> dict[str, dict]:
    docs = [json.loads(p.read_text()) for p in (out / "bags").glob("*.json")]
    return {d["bag"]: d for d in docs}


def _report(out: Path) -> dict:
    return json.loads((out / "fleet_report.json").read_text())


def _run(bags: list[Path], out: Path, *extra: str) -> int:
    return main([*map(str, bags), "--out", str(out), "-q", *extra])


def test_serial_two_workers_and_ray_agree(drives: list[Path], tmp_path: Path) -> None:
    runs = {"serial": [], "workers": ["--workers", "2"]}
    if HAVE_RAY:
        runs["ray"] = ["--ray"]
    for name, extra in runs.items():
        assert _run(drives, tmp_path / name, *extra) == 0, name
    serial = _results(tmp_path / "serial")
    assert len(serial) == 3
    day = serial[str(drives[0])]
    assert day["frames"] == FRAMES and day["metrics"]["frames"] == FRAMES
    assert day["gt_source"] == "dcfm-make-bag"
    assert serial[str(drives[1])]["metrics"] is None  # no ground truth in this bag
    assert 0 < day["keyframe_ratio"] <= 1 and day["per_frame"]["keyframe"][0] is True
    assert sum(day["class_shares"].values()) == pytest.approx(1.0)
    for name in runs:
        got = _results(tmp_path / name)
        want = {b: comparable(r) for b, r in serial.items()}
        assert {b: comparable(r) for b, r in got.items()} == want, name
        rep = _report(tmp_path / name)
        for key in ("drives", "class_shares", "accuracy", "frames"):
            assert rep[key] == _report(tmp_path / "serial")[key], (name, key)
        assert rep["executor"]["kind"] == {"serial": "serial", "workers": "processes", "ray": "ray"}[name]
    # the processes really were two (one engine each), Ray's actors other processes than this one
    assert len({r["worker"]["pid"] for r in _results(tmp_path / "workers").values()}) == 2
    if HAVE_RAY:
        assert os.getpid() not in {r["worker"]["pid"] for r in _results(tmp_path / "ray").values()}
    # drives ranked by confidence, lowest first; the darkened drive is less sure than the recorded one
    rep = _report(tmp_path / "serial")
    means = [d["confidence"]["mean"] for d in rep["drives"]]
    assert means == sorted(means)
    order = [d["bag"] for d in rep["drives"]]
    assert order.index(str(drives[1])) < order.index(str(drives[0]))
    assert rep["accuracy"]["bags"] == 1 and rep["accuracy"]["miou"] == pytest.approx(day["metrics"]["miou"])
    for key in ("confidence_plot", "class_plot", "accuracy_plot"):
        assert cv2.imread(str(tmp_path / "serial" / rep["files"][key])) is not None, key
    md = (tmp_path / "serial" / "fleet_report.md").read_text()
    assert md.index(f"`{drives[1]}`") < md.index(f"`{drives[0]}`")


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install -r requirements/fleet.txt)")
def test_ray_is_installed_for_the_agreement_test() -> None:
    """Marks the Ray leg of test_serial_two_workers_and_ray_agree as run (it is skipped silently there)."""
    import ray

    assert ray.__version__


def test_rerun_reuses_finished_bags_and_scores_changed_parameters(drives: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(drives[:2], out, "--max-frames", "3") == 0
    first = _report(out)
    assert first["bags"] == {"given": 2, "scored": 2, "reused": 0, "failed": 0}
    # a stored result is what a rerun reports: tamper with one and it shows up unchanged
    path = next(p for p in (out / "bags").glob("*.json")
                if json.loads(p.read_text())["bag"] == str(drives[0]))
    doc = json.loads(path.read_text())
    doc["frames"] = 999
    path.write_text(json.dumps(doc))
    stamp = path.stat().st_mtime_ns
    assert _run(drives, out, "--max-frames", "3") == 0  # one more bag: only that one is scored
    rep = _report(out)
    assert rep["bags"] == {"given": 3, "scored": 1, "reused": 2, "failed": 0}
    assert {d["bag"]: d["frames"] for d in rep["drives"]}[str(drives[0])] == 999
    assert path.stat().st_mtime_ns == stamp
    # another model-relevant parameter: another key, every bag scored again
    assert _run(drives, out, "--max-frames", "3", "--param", "keyframe.policy=fixed") == 0
    rep = _report(out)
    assert rep["bags"]["scored"] == 3 and rep["key"] != first["key"]
    assert {d["bag"]: d["frames"] for d in rep["drives"]}[str(drives[0])] == 3
    # a parameter that only shapes ROS I/O keeps the key
    assert _run(drives, out, "--max-frames", "3", "--param", "keyframe.policy=fixed",
                "--param", "qos.depth=5") == 0
    assert _report(out)["bags"]["reused"] == 3


def test_corrupt_and_unreadable_bags_are_named_and_skipped(drives: list[Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "truncated"
    shutil.copytree(drives[1], bad)
    mcap = next(bad.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    not_a_bag = tmp_path / "notes"
    not_a_bag.mkdir()
    (not_a_bag / "readme.txt").write_text("not a bag")
    listing = tmp_path / "bags.txt"
    listing.write_text(f"# the fleet\n{drives[0]}\n{bad}\n{not_a_bag}\n")
    out = tmp_path / "out"
    assert main(["--list", str(listing), "--out", str(out), "--max-frames", "2"]) == 1
    rep = _report(out)
    assert rep["bags"] == {"given": 3, "scored": 1, "reused": 0, "failed": 2}
    assert [d["bag"] for d in rep["drives"]] == [str(drives[0])]
    failed = {f["bag"]: f["error"] for f in rep["failed"]}
    assert "truncated" in str(list(failed)) and "BagError" in failed[str(bad)]
    assert "no metadata.yaml" in failed[str(not_a_bag)]
    text = capsys.readouterr()
    assert f"failed: {bad}" in text.out and f"SKIPPED {not_a_bag}" in text.err
    assert f"`{bad}`" in (out / "fleet_report.md").read_text()
    # a failed bag is never "done": the next run tries it again (and the good one is reused)
    assert main(["--list", str(listing), "--out", str(out), "--max-frames", "2", "-q"]) == 1
    assert _report(out)["bags"] == {"given": 3, "scored": 0, "reused": 1, "failed": 2}
    # bad input of the run itself: exit 2 with the reason
    assert main([str(tmp_path / "nothing*"), "--out", str(out)]) == 2
    assert "matches no bag" in capsys.readouterr().err
    assert main([str(drives[0]), "--out", str(out), "--param", "keyframe.intervall=3"]) == 2
    assert "keyframe.intervall" in capsys.readouterr().err
    # a value the node refuses: the same clear error before any worker process starts
    assert main([str(drives[0]), "--out", str(out), "--workers", "2", "--param", "keyframe.interval=0"]) == 2
    assert "keyframe.interval" in capsys.readouterr().err


def test_low_confidence_stretches_follow_the_node_warning_rule() -> None:
    conf = np.array([0.9, 0.9, 0.5, 0.5, 0.5, 0.9, 0.9, 0.9, 0.9, 0.3, 0.3, 0.3])
    t = np.arange(12) / 10.0
    got = low_confidence_stretches(conf, t, warn_below=0.75, window=3)
    # full windows with a mean below 0.75: frames 1-3 (0.633), 2-4 (0.5), 3-5 (0.633), then 7-9 (0.7),
    # 8-10, 9-11; 4-6 (0.767) and those up to 6-8 (0.9) do not warn
    assert [(s["first"], s["last"]) for s in got] == [(1, 5), (7, 11)]
    assert got[1]["frames"] == 5 and got[1]["mean"] == pytest.approx(np.mean(conf[7:12]))
    assert got[0]["start_s"] == pytest.approx(0.1) and got[0]["end_s"] == pytest.approx(0.5)
    assert low_confidence_stretches(conf, t, warn_below=0.0, window=3) == []  # 0 = off, as in the node
    assert low_confidence_stretches(conf[:2], t[:2], warn_below=0.75, window=3) == []  # no full window


def test_export_hard_writes_a_folder_dataset_dcfm_train_trains_on(drives: list[Path], tmp_path: Path) -> None:
    from dcfm_ros.data.datasets import pair_samples, video_frames
    from dcfm_ros.data.datasets.folder import read_classes
    from dcfm_ros.tools.train import main as train_main

    out = tmp_path / "out"
    assert _run(drives, out, "--export-hard", "4", "--export-context", "1") == 0
    root = out / "hard_frames"
    manifest = json.loads((root / "hard_frames.json").read_text())
    hard = [e for e in manifest["frames"] if e["hard"]]
    assert manifest["hard_frames"] == len(hard) == 4
    # the four lowest confidences of the fleet, lowest first
    every = sorted(c for r in _results(out).values() for c in r["per_frame"]["confidence"])
    assert [e["confidence"] for e in hard] == every[:4]
    assert (root / "train" / "labels").is_dir() and not any((root / "train" / "labels").iterdir())
    classes = read_classes(root)
    assert list(classes.names) == json.loads((out / "fleet_report.json").read_text())["model"]["class_names"]
    videos = video_frames("folder", root, "train")
    written = {f.image.relative_to(root).as_posix() for v in videos.values() for f in v}
    assert written == {e["file"] for e in manifest["frames"]}
    assert all(f.label is None for v in videos.values() for f in v)
    for e in hard:  # each hard frame sits in its sequence with its neighbours, in time order
        seq = videos[e["sequence"]]
        names = [int(f.image.stem) for f in seq]
        assert names == sorted(names) and e["index"] in names
        assert names == list(range(names[0], names[-1] + 1))
    # the frames are the bag's frames
    e = hard[0]
    with BagReader(e["bag"]) as bag:
        topic = bag.image_topics()[0].name
        frame = next(f for f in bag.frames(topic) if isinstance(f, Frame) and f.index == e["index"])
    png = cv2.cvtColor(cv2.imread(str(root / e["file"])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(png, frame.image)
    with pytest.raises(FileNotFoundError, match="no labeled frame"):
        pair_samples("folder", root, "train")  # as exported: nothing labelled yet
    # label the hard frames (as a labeller would), then dcfm-train fine-tunes the shipped model on them
    for e in hard:
        lab = root / "train" / "labels" / e["sequence"] / Path(e["file"]).name
        lab.parent.mkdir(parents=True, exist_ok=True)
        img = cv2.imread(str(root / e["file"]))
        cv2.imwrite(str(lab), np.where(img[..., 0] > 100, 0, 3).astype(np.uint8))  # sky / road
    pairs = pair_samples("folder", root, "train")
    assert len(pairs) == 4 and all(p.neighbours and p.neighbours[0] != p.image for p in pairs)
    cfg = {"seed": 0, "device": "cpu", "threads": 1,
           "model": {"backbone": "efficientnet-lite0", "pretrained": None, "init_from": "shipped",
                     "input_size": [32, 48]},
           "dataset": {"type": "folder", "root": str(root), "val_split": None, "crop_size": [32, 48]},
           "loss": {"class_weights": None},
           "train": {"iterations": 1, "batch_size": 2, "workers": 0, "save_fp16": False}}
    cfg_path = tmp_path / "finetune.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert train_main(["--config", str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # the folder is not replaced by accident
    assert _run(drives, out, "--export-hard", "2") == 2


@pytest.mark.ros
@pytest.mark.slow
@pytest.mark.parametrize("camera", [None, (960, 720)], ids=["demo", "960x720"])
def test_demo_bag_numbers_equal_dcfm_bag_eval_through_the_node(tmp_path: Path, camera) -> None:
    """The real node over ROS (dcfm-bag-eval --max) and dcfm-fleet-eval on the same frames of the demo bag
    with the same (default) parameters: the same keyframes, the node's per-frame confidence (float32 on
    /segmentation/info), and mIoU / mVC to the last bit. Also with the clip at a 960x720 camera (W x H),
    whose JPEGs the node decodes at half scale (reduced_decode): fleet-eval decodes them the same way."""
    from dcfm_ros.evaluation.bagio import deserialize
    from dcfm_ros.tools.bag_eval import main as bag_eval

    n = "24" if camera is None else "8"
    drive = DEMO
    if camera is not None:
        drive = tmp_path / "large"
        write_bag(drive, iter(_demo_frames(int(n))), rate=15.0, compressed=True, resize=camera,
                  image_topic=CAMERA.removesuffix("/compressed"), label_topic=LABELS)
    ev = tmp_path / "bag_eval"
    assert bag_eval([str(drive), "--gt-topic", LABELS, "--max", "--max-frames", n, "--no-video", "--out",
                     str(ev), "-q"]) == 0
    node = json.loads((ev / "report.json").read_text())
    with BagReader(ev / "bag") as bag:
        infos = [deserialize(r.data, r.msgtype) for r in bag.raw(["/segmentation/info"])]
    out = tmp_path / "fleet"
    assert main([str(drive), "--gt-topic", LABELS, "--max-frames", n, "--out", str(out), "-q"]) == 0
    (r,) = _results(out).values()
    assert r["frames"] == node["frames_out"] == int(n)
    assert r["per_frame"]["keyframe"] == [bool(i.is_keyframe) for i in infos]
    assert r["per_frame"]["stamp_ns"] == [i.header.stamp.sec * 10**9 + i.header.stamp.nanosec for i in infos]
    assert [np.float32(c) for c in r["per_frame"]["confidence"]] == [np.float32(i.confidence) for i in infos]
    assert r["keyframe_ratio"] == pytest.approx(node["keyframe_ratio"], abs=1e-12)
    got, want = r["metrics"], node["metrics"]
    for key in ("frames", "miou", "wiou", "pixel_acc", "mvc8", "mvc16", "mvc_runs"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["per_class_iou"] == pytest.approx(want["per_class_iou"], abs=1e-12)


def test_ray_missing_is_a_clear_error(drives: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Ray is optional: without it --ray says how to install it (and nothing is scored)."""
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main([str(drives[0]), "--out", str(tmp_path / "out"), "--ray"]) == 2
    assert "pip install 'dcfm_ros[fleet]'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "bags").exists()
