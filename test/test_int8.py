"""int8 (issue 23 item 3): the calibration grammar, calibration reading only the training frames it
names, the int8 cache keyed by the calibration, int8 refused where it cannot run, dcfm-export's
fp32-vs-int8 gate, and the shipped model's int8 labels against fp32 on the demo drive.

Real CamVid frames throughout (train for calibration, val for checks); graph backends keep their
exports in the session's cache folder (conftest points XDG_CACHE_HOME at a temporary folder).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_fastpath import SHIPPED, SMALL, agreement, demo_frames, small_dcfm

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.backends import make_backend
from dcfm_ros.engine.backends.calibration import CalibrationError, read_calibration
from dcfm_ros.engine.specs import CalibrationSpec, parse_calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAMVID = Path("/work/shared/data/camvid")
needs_camvid = pytest.mark.skipif(not (CAMVID / "train").is_dir(), reason="CamVid is not at /work/shared")


@pytest.fixture(scope="module")
def train_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 6 CamVid train frames (and nothing else)."""
    src = sorted((CAMVID / "train").glob("*.png"))[:6]
    if not src:
        pytest.skip("CamVid is not at /work/shared")
    out = tmp_path_factory.mktemp("calib") / "train"
    out.mkdir()
    for p in src:
        shutil.copy(p, out / p.name)
    return out


# -- the grammar ------------------------------------------------------------------------------------


def test_calibration_grammar() -> None:
    want = CalibrationSpec("folder", "/data/camvid/train", 32)
    assert parse_calibration("folder:/data/camvid/train:32") == want
    assert parse_calibration("folder:/data/camvid/train").count == 64
    assert parse_calibration("video:drive.mp4:10") == CalibrationSpec("video", "drive.mp4", 10)
    assert parse_calibration("bag:runs/a.mcap:/camera/image/compressed:8") == CalibrationSpec(
        "bag", "runs/a.mcap", 8, "/camera/image/compressed")
    assert parse_calibration("bag:runs/a.mcap:/cam").count == 64


@pytest.mark.parametrize(("text", "words"), [
    ("/data/camvid/train", "folder:DIR"),
    ("pictures:/data/train", "folder:DIR"),
    ("folder:", "folder:DIR"),
    ("folder:/data/train:0", "at least 1 frame"),
    ("bag:runs/a.mcap", "names its image topic"),
    ("folder:/data/camvid/val:16", "held-out split"),
    ("folder:/data/camvid/valannot", "held-out split"),
    ("video:/data/Test/drive.mp4", "held-out split"),
    ("bag:/data/validation/run.mcap:/cam", "held-out split"),
])
def test_bad_calibration_specs_say_what_to_pass(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_calibration(text)


# -- reading only what is named ----------------------------------------------------------------------


@needs_camvid
def test_calibration_reads_only_the_training_frames_it_names(train_folder: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import cv2

    opened: list[str] = []
    imread = cv2.imread
    monkeypatch.setattr(cv2, "imread", lambda path, *a: opened.append(str(path)) or imread(path, *a))
    calib = read_calibration(f"folder:{train_folder}:3")
    names = sorted(p.name for p in train_folder.iterdir())
    assert [Path(f).name for f in calib.files] == [names[0], names[2], names[4]]  # spread evenly
    assert opened == list(calib.files)  # nothing else was opened
    assert all(Path(f).parent == train_folder for f in opened)
    assert len(calib.frames) == 3 and calib.frames[0].dtype == np.uint8 and calib.frames[0].shape[2] == 3

    opened.clear()
    with pytest.raises(ValueError, match="held-out split"):
        read_calibration(f"folder:{CAMVID / 'val'}:4")
    assert opened == []  # refused before any val frame was read


def test_missing_or_empty_calibration_folders_say_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        read_calibration(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "train").mkdir()
    with pytest.raises(CalibrationError, match="has no images"):
        read_calibration(f"folder:{tmp_path / 'train'}")


# -- the cache ----------------------------------------------------------------------------------------


@needs_camvid
def test_int8_cache_key_changes_with_the_calibration(train_folder: Path, tmp_path: Path) -> None:
    from dcfm_ros.engine.backends.cache import ensure_int8
    from dcfm_ros.engine.backends.onnx_export import StaleExportError, model_sha256

    a, b = read_calibration(f"folder:{train_folder}:2"), read_calibration(f"folder:{train_folder}:3")
    assert a.sha256 != b.sha256  # the count (and so the files) differ
    assert read_calibration(f"folder:{train_folder}:2").sha256 == a.sha256
    model = small_dcfm()
    h = model_sha256(model)
    fa, ma = ensure_int8(model, SMALL, h, tmp_path, "qdq", a, progress=None)
    fb, _ = ensure_int8(model, SMALL, h, tmp_path, "qdq", b, progress=None)
    assert fa != fb and a.sha256[:16] in fa.name and b.sha256[:16] in fb.name
    assert fa.parent == fb.parent and any(p.name.endswith("-fp32-v2") for p in fa.parent.iterdir())
    assert ma.metadata["dcfm.calibration_sha256"] == a.sha256 and ma.metadata["dcfm.dtype"] == "int8-qdq"
    # a folder whose graphs name another calibration is refused (and rebuilt by ensure_int8)
    from dcfm_ros.engine.backends.cache import _valid, expected_metadata

    with pytest.raises(StaleExportError, match="calibration_sha256"):
        _valid(fa, expected_metadata(model, SMALL, h, "int8-qdq", b.sha256))
    net = make_backend("onnxruntime", model, "cpu", "int8", input_size=SMALL, cache_dir=tmp_path,
                       calibration=f"folder:{train_folder}:2", progress=None)
    assert net.precision == "int8" and net._sets[0].folder == fa


# -- where int8 cannot run ----------------------------------------------------------------------------


def test_int8_on_torch_says_what_to_use() -> None:
    with pytest.raises(ValueError, match=r"backend 'torch' has no int8.*'openvino' or 'onnxruntime'"):
        make_backend("torch", small_dcfm(), "cpu", "int8")


def test_int8_without_calibration_frames_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs calibration frames.*dcfm-export"):
        make_backend("onnxruntime", small_dcfm(), "cpu", "int8", input_size=SMALL, cache_dir=tmp_path)


@needs_camvid
def test_the_node_calibration_parameter_reaches_the_int8_graphs(tiny_checkpoint: Path, train_folder: Path,
                                                                 tmp_path: Path) -> None:
    """A user's model (no calibration ships with it) runs int8 in the node with `calibration` set: the
    int8 folder is the one named by those frames' hash, and a frame goes through. Without it, the
    start-up error names the parameter; a held-out folder is refused before anything is exported."""
    from dcfm_ros.engine.settings import (
        PARAMETERS,
        ParameterError,
        StartupError,
        build_engine,
        settings_from_values,
    )

    spec = f"folder:{train_folder}:2"
    values = {**{p.name: p.default for p in PARAMETERS}, "model": str(tiny_checkpoint), "device": "cpu",
              "backend": "onnxruntime", "precision": "int8", "backend_cache_dir": str(tmp_path),
              "calibration": spec}
    engine = build_engine(settings_from_values(values))
    assert engine.precision == "int8"
    assert read_calibration(spec).sha256[:16] in engine.backend._sets[0].folder.name
    frame = demo_frames(1)[0]
    assert engine.process(frame).labels.shape == frame.shape[:2]
    with pytest.raises(StartupError, match="needs calibration frames"):
        build_engine(settings_from_values({**values, "calibration": ""}))
    with pytest.raises(ParameterError, match=r"parameter 'calibration'.*held-out split"):
        settings_from_values({**values, "calibration": f"folder:{CAMVID / 'val'}:4"})
    with pytest.raises(ParameterError, match=r"parameter 'calibration'.*folder:DIR"):
        settings_from_values({**values, "calibration": "train"})


# -- dcfm-export --precision int8 ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def check_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 CamVid val frames and their labels (a check set may be val; calibration may not)."""
    root = tmp_path_factory.mktemp("check")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for p in sorted((CAMVID / "val").glob("*.png"))[:3]:
        shutil.copy(p, root / "images" / p.name)
        shutil.copy(CAMVID / "valannot" / p.name, root / "labels" / p.name)
    return f"{root / 'images'}:{root / 'labels'}:3"


@needs_camvid
def test_export_int8_bad_calibration_fails_before_exporting(tiny_checkpoint: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from dcfm_ros.tools.export import main

    rc = main([str(tiny_checkpoint), "--out", str(tmp_path / "out"), "--precision", "int8",
               "--calibration", f"folder:{CAMVID / 'test'}:8"])
    assert rc == 2 and "held-out split" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_camvid
def test_export_int8_over_the_drop_limit_fails_and_removes_the_graphs(
        tiny_checkpoint: Path, train_folder: Path, check_set: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A limit no quantization can meet (int8 would have to gain 100 points) fails the export with a
    message saying what to do; the same export under the default limit passes. Both print the
    fp32/int8 mIoU and agreement of each frame kind."""
    from dcfm_ros.tools.export import main

    out = tmp_path / "out"
    args = [str(tiny_checkpoint), "--out", str(out), "--precision", "int8",
            "--backend", "onnxruntime", "--calibration", f"folder:{train_folder}:2", "--check", check_set]
    assert main([*args, "--max-miou-drop", "-100"]) == 1
    captured = capsys.readouterr()
    assert "more than --max-miou-drop -100" in captured.err and "--calibration" in captured.err
    assert "key   : mIoU fp32" in captured.out and "nonkey: mIoU fp32" in captured.out
    assert not list(out.glob("int8-*"))  # nothing left to use by mistake
    assert main(args) == 0
    assert "pixel agreement" in capsys.readouterr().out
    assert len(list(out.glob("int8-qdq-*/manifest.json"))) == 1


# -- the shipped model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_shipped_int8_labels_agree_with_fp32_on_the_demo_drive(name: str) -> None:
    """The shipped model at precision int8 (its shipped CamVid-train calibration, no download): >= 97 %
    of the demo pixels get fp32's label, keyframes and non-key frames alike."""
    pytest.importorskip(name)
    from dcfm_ros.model import load_checkpoint

    model = load_checkpoint(SHIPPED)[0].eval()
    frames = demo_frames(6, step=4)
    runs = {}
    for precision in ("fp32", "int8"):
        net = make_backend(name, model, "cpu", precision)
        assert net.precision == precision
        engine = StreamEngine(model, FixedInterval(2), backend=net)
        runs[precision] = [engine.process(f) for f in frames]
    for key in (True, False):
        a = [r.labels for r in runs["fp32"] if r.is_keyframe == key]
        b = [r.labels for r in runs["int8"] if r.is_keyframe == key]
        assert agreement(a, b) >= 0.97


def test_tensorrt_int8_graphs_are_symmetric_and_agree_with_fp32_on_the_cpu() -> None:
    """The graphs TensorRT builds its int8 engines from (qdq-sym): every Q/DQ pair is signed int8 with
    a zero point of 0 (TensorRT's explicit quantization takes nothing else), and run on ONNX Runtime
    they keep fp32's label on >= 97 % of the demo pixels, keyframes and non-key frames alike."""
    import onnx
    from onnx import numpy_helper

    from dcfm_ros.model import load_checkpoint

    model = load_checkpoint(SHIPPED)[0].eval()
    frames = demo_frames(6, step=4)
    runs = {}
    for precision, method in (("fp32", None), ("int8", "qdq-sym")):
        net = make_backend("onnxruntime", model, "cpu", precision, int8_method=method)
        engine = StreamEngine(model, FixedInterval(2), backend=net)
        runs[precision] = [engine.process(f) for f in frames]
    folder = net._sets[0].folder
    assert "int8-qdq-sym" in folder.name
    for name in ("key", "nonkey"):
        graph = onnx.load(str(folder / f"{name}.onnx")).graph
        inits = {i.name: i for i in graph.initializer}
        zero_points = [n.input[2] for n in graph.node
                       if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]
        assert zero_points, name
        for z in zero_points:
            value = numpy_helper.to_array(inits[z])
            assert value.dtype == np.int8 and not value.any(), (name, z, value.dtype)
    for key in (True, False):
        a = [r.labels for r in runs["fp32"] if r.is_keyframe == key]
        b = [r.labels for r in runs["int8"] if r.is_keyframe == key]
        assert agreement(a, b) >= 0.97


def test_tensorrt_int8_labels_agree_with_fp32(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="the tensorrt package is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT int8 needs a CUDA GPU (none here)")
    from dcfm_ros.model import load_checkpoint

    model = load_checkpoint(SHIPPED)[0].eval()
    frames = demo_frames(6, step=4)
    runs = {}
    for precision in ("fp32", "int8"):
        net = make_backend("tensorrt", model, "cuda", precision, cache_dir=tmp_path)
        assert net.precision == precision
        runs[precision] = [StreamEngine(model, FixedInterval(2), backend=net).process(f) for f in frames]
    for key in (True, False):
        a = [r.labels for r in runs["fp32"] if r.is_keyframe == key]
        b = [r.labels for r in runs["int8"] if r.is_keyframe == key]
        assert agreement(a, b) >= 0.97
