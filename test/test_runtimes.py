"""Fast runtimes: ONNX export, the onnxruntime backend against eager torch, the export cache, TensorRT.

Labels are compared on real CamVid frames (the demo bag). Graph backends keep their exports in the
session's cache folder (conftest points XDG_CACHE_HOME at a temporary folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.backends import make_backend, resolve_backend
from dcfm_ros.engine.backends.cache import ensure_export
from dcfm_ros.engine.backends.onnx_export import (
    MANIFEST,
    OPSET,
    ExportError,
    Manifest,
    StaleExportError,
    export_onnx,
    file_sha256,
    model_sha256,
    read_graph_metadata,
)
from dcfm_ros.engine.backends.ort_backend import OnnxRuntimeBackend
from dcfm_ros.evaluation.bagio import BagReader, Frame
from dcfm_ros.model import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    DCFMConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from dcfm_ros.tools.export import main as export_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
DEMO_BAG = REPO / "demo" / "camvid_val_0016E5"
SHIPPED = REPO / "dcfm_ros" / "models" / "camvid_efficientnet_lite0.safetensors"
SMALL = (96, 128)
needs_trt = pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU (none here)")


def demo_frames(n: int, step: int = 1) -> list[np.ndarray]:
    """The first n * step frames of the demo drive (real CamVid, 360x480 RGB), every step-th."""
    with BagReader(DEMO_BAG) as bag:
        frames = [f.image for f in bag.frames("/camera/image/compressed") if isinstance(f, Frame)]
    return frames[: n * step : step]


def small_model(backbone: str, size: tuple[int, int] = SMALL, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DCFMConfig(backbone=backbone, num_classes=11, class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE,
                     input_size=size)
    return build_model(cfg).eval()


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)]))


def run_stream(model, backend, frames, interval: int = 2) -> list[np.ndarray]:
    engine = StreamEngine(model, FixedInterval(interval), input_size=model.config.input_size, backend=backend)
    return [engine.process(f).labels for f in frames]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return demo_frames(4, step=5)


@pytest.fixture(scope="module")
def lite0():
    return small_model("efficientnet-lite0")


@pytest.fixture(scope="module")
def lite0_ort(lite0) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(lite0, "cpu", input_size=SMALL)


# -- export: files, checker, metadata ----------------------------------------------------------------


def test_export_cli_writes_checked_graphs_with_metadata(tmp_path: Path, capsys) -> None:
    model = small_model("efficientnet-lite0", (64, 96))
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, model)
    out = tmp_path / "onnx"
    assert export_main([str(ckpt), "--out", str(out), "--size", "64x96"]) == 0
    assert "graphs" in capsys.readouterr().out
    manifest = Manifest.read(out)
    n = manifest.num_deep_units
    assert n == len(model.deep_units()) and len(manifest.deep_unit_costs) == n
    units = {f"unit_{i:02d}" for i in range(n)}
    names = {"enc_lo", "enc_hi", "common", "fuse", "head", "key", "nonkey", *units}
    assert set(manifest.graphs) == names
    loaded, _ = load_checkpoint(ckpt)
    for name, spec in manifest.graphs.items():
        proto = onnx.load(str(out / spec.file))
        onnx.checker.check_model(proto)
        assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= OPSET >= 17
        assert tuple(i.name for i in proto.graph.input) == spec.inputs
        meta = read_graph_metadata(out / spec.file)
        assert meta["dcfm.graph"] == name
        assert json.loads(meta["dcfm.class_names"]) == list(CAMVID_CLASSES)
        assert [tuple(c) for c in json.loads(meta["dcfm.palette"])] == [tuple(c) for c in CAMVID_PALETTE]
        assert json.loads(meta["dcfm.mean"]) == list(model.config.mean)
        assert json.loads(meta["dcfm.std"]) == list(model.config.std)
        assert json.loads(meta["dcfm.input_size"]) == [64, 96]
        assert meta["dcfm.source_sha256"] == file_sha256(ckpt)
        assert meta["dcfm.model_sha256"] == model_sha256(loaded)
        assert meta["dcfm.torch_version"] == torch.__version__ and meta["dcfm.opset"] == str(OPSET)
        assert DCFMConfig.from_dict(json.loads(meta["dcfm.config"])) == model.config
    assert manifest.graphs["key"].outputs == ("logits", "common")
    assert manifest.graphs["nonkey"].inputs == ("x", "common")
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_export_leaves_the_model_in_eval_mode(tmp_path: Path) -> None:
    # torch.onnx.export restores the training flag it found on the exported module, recursively.
    # Left in training mode, BatchNorm would update its running statistics on the next forward.
    model = small_model("mit-b0", (32, 48))
    before = model_sha256(model)
    export_onnx(model, tmp_path)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 48))
    assert model_sha256(model) == before


def test_model_hash_names_the_weights() -> None:
    a, b = small_model("efficientnet-lite0", seed=0), small_model("efficientnet-lite0", seed=0)
    assert model_sha256(a) == model_sha256(b)
    with torch.no_grad():
        b.head.cls.bias[0] += 1e-3
    assert model_sha256(a) != model_sha256(b)


def test_export_error_names_the_module(tmp_path: Path) -> None:
    model = small_model("efficientnet-lite0", (32, 48))

    class NoOnnx(torch.nn.Module):  # an op without an ONNX form
        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return torch.linalg.eigvals(f[0, :4, :4, :4]).real.sum() + f

    model.head = torch.nn.Sequential(NoOnnx(), model.head)
    with pytest.raises(ExportError, match=r"graph 'head' \(head\)") as info:
        export_onnx(model, tmp_path / "x")
    assert "eig" in str(info.value).lower()
    assert not (tmp_path / "x" / MANIFEST).exists()


def test_bad_checkpoint_is_a_clear_cli_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert export_main([str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "bad.safetensors" in capsys.readouterr().err


# -- onnxruntime against torch ------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["mit-b0", "resnet18", "efficientnet-lite0"])
def test_graph_backends_labels_match_torch_on_camvid_frames(backbone: str, frames: list[np.ndarray]) -> None:
    model = small_model(backbone)
    ref = run_stream(model, make_backend("torch", model, "cpu"), frames)
    for name in ("onnxruntime", "openvino"):  # one export (cached), two runtimes
        got = run_stream(model, make_backend(name, model, "cpu", input_size=SMALL), frames)
        assert agreement(ref, got) >= 0.999, name


def test_shipped_model_graph_backends_match_torch_on_the_demo_frames() -> None:
    model, _ = load_checkpoint(SHIPPED)
    frames = demo_frames(4, step=25)
    ref = run_stream(model, make_backend("torch", model, "cpu"), frames)
    assert len(np.unique(ref[0])) >= 5  # a real scene: road, sky, buildings, ... (not a flat map)
    for name in ("onnxruntime", "openvino"):
        got = run_stream(model, make_backend(name, model, "cpu"), frames)
        assert agreement(ref, got) >= 0.999, name


def _ort_run(path: Path, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_key_and_nonkey_graphs_compose_like_the_torch_stages(lite0, lite0_ort, frames) -> None:
    folder = lite0_ort._sets[0].folder
    torch_net = make_backend("torch", small_model("efficientnet-lite0"), "cpu", channels_last=False)
    engine = StreamEngine(lite0, FixedInterval(1), input_size=SMALL, backend=torch_net)
    pre = engine.preprocessor
    with torch.inference_mode():
        x_key = pre.normalize(pre.upload(frames[0]))
        x_next = pre.normalize(pre.upload(frames[1]))
        f_in = torch_net.enc_lo(x_key)
        common = torch_net.common_part(torch_net.enc_hi(f_in))
        logits_key = torch_net.head(torch_net.fuse(common, f_in))
        logits_next = torch_net.head(torch_net.fuse(common, torch_net.enc_lo(x_next)))
    got_key, got_common = _ort_run(folder / "key.onnx", {"x": x_key})
    (got_next,) = _ort_run(folder / "nonkey.onnx", {"x": x_next, "common": torch.from_numpy(got_common)})
    np.testing.assert_allclose(got_common, common.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_key, logits_key.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_next, logits_next.numpy(), rtol=1e-4, atol=1e-4)
    # And the one-graph frames equal the stage graphs the backend runs.
    with torch.inference_mode():
        fi = lite0_ort.enc_lo(x_key)
        c = lite0_ort.common_part(lite0_ort.enc_hi(fi))
        stage_key = lite0_ort.head(lite0_ort.fuse(c, fi))
    np.testing.assert_allclose(got_key, stage_key.numpy(), rtol=1e-5, atol=1e-5)


def test_deep_unit_graphs_compose_to_the_enc_hi_graph(lite0_ort, frames) -> None:
    net = lite0_ort
    x = torch.randn(1, 3, *SMALL, generator=torch.Generator().manual_seed(1))
    f_in = net.enc_lo(x)
    whole = net.enc_hi(f_in)
    n = net.num_deep_units
    assert n > 3 and len(net.deep_unit_costs()) == n
    for split in (0, n // 2, n - 1):
        state = net.run_deep_units(split, n, net.run_deep_units(0, split, (f_in,)))
        assert len(state) == 1
        np.testing.assert_allclose(state[0].numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        net.run_deep_units(0, n + 1, (f_in,))


# -- the cache: stale and foreign files ----------------------------------------------------------------


def test_stale_folder_and_foreign_graph_are_refused_and_rebuilt(tmp_path: Path, capsys) -> None:
    a = small_model("efficientnet-lite0", (32, 48), seed=1)
    b = small_model("efficientnet-lite0", (32, 48), seed=2)
    folder_a, _ = ensure_export(a, (32, 48), model_sha256(a), tmp_path)
    folder_b, _ = ensure_export(b, (32, 48), model_sha256(b), tmp_path)
    # A foreign graph put in a's folder behind its manifest: the backend refuses it and re-exports.
    (folder_a / "head.onnx").write_bytes((folder_b / "head.onnx").read_bytes())
    capsys.readouterr()
    net = OnnxRuntimeBackend(a, "cpu", cache_dir=tmp_path)
    err = capsys.readouterr().err
    assert "stale or foreign" in err and "head.onnx" in err and "model_sha256" in err
    assert read_graph_metadata(folder_a / "head.onnx")["dcfm.model_sha256"] == model_sha256(a)
    ref = make_backend("torch", a, "cpu", channels_last=False)
    f = torch.randn(1, a.co_channels, 8, 12)
    with torch.inference_mode():
        np.testing.assert_allclose(net.head(f).numpy(), ref.head(f).numpy(), rtol=1e-4, atol=1e-5)
    # A stale manifest (another model's folder under a's name) is reported and rebuilt too.
    (folder_a / MANIFEST).write_bytes((folder_b / MANIFEST).read_bytes())
    folder, manifest = ensure_export(a, (32, 48), model_sha256(a), tmp_path)
    assert folder == folder_a and manifest.model_hash == model_sha256(a)
    assert "stale or foreign" in capsys.readouterr().err
    # Reading a foreign graph directly is a clear error.
    with pytest.raises(StaleExportError, match="model_sha256"):
        net._open_session(folder_b / "head.onnx", manifest.graphs["head"],
                          json.loads(json.dumps(manifest.metadata)))


def test_unfinished_export_folder_is_not_used(tmp_path: Path) -> None:
    with pytest.raises(StaleExportError, match="did not finish"):
        Manifest.read(tmp_path)


# -- backend choice ---------------------------------------------------------------------------------


def test_auto_picks_onnxruntime_on_cpu_and_unknown_names_are_refused(lite0) -> None:
    assert resolve_backend("auto", "cpu") == "openvino"  # installed by requirements/runtime.txt
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"backend 'fast'.*auto, torch, onnxruntime, openvino, tensorrt"):
        make_backend("fast", lite0, "cpu")
    with pytest.raises(ValueError, match="fp32 graphs"):
        OnnxRuntimeBackend(lite0, "cpu", precision="fp16")


def test_tensorrt_without_a_gpu_is_a_clear_error(lite0) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_tensorrt_fp16_labels covers it")
    with pytest.raises(RuntimeError, match="tensorrt"):
        make_backend("tensorrt", lite0, "cpu")


@needs_trt
def test_tensorrt_fp16_labels_match_torch_fp16(tmp_path: Path, frames) -> None:
    pytest.importorskip("tensorrt", reason="the tensorrt package is not installed")
    model = small_model("efficientnet-lite0")
    ref = run_stream(model, make_backend("torch", model, "cuda", "fp16"), frames)
    net = make_backend("tensorrt", model, "cuda", "fp16", input_size=SMALL, cache_dir=tmp_path)
    got = run_stream(model, net, frames)
    assert agreement(ref, got) >= 0.99
    # A cached engine whose record names another build is refused and rebuilt.
    record = next((tmp_path / "tensorrt").rglob("head.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "tensorrt": "0.0"}))
    again = make_backend("tensorrt", model, "cuda", "fp16", input_size=SMALL, cache_dir=tmp_path)
    assert json.loads(record.read_text())["tensorrt"] != "0.0"
    assert agreement(got, run_stream(model, again, frames)) >= 0.999


def test_bag_eval_passes_the_backend_to_the_node(tmp_path: Path) -> None:
    import yaml

    from dcfm_ros.evaluation.bag_eval.params import effective_params, parse_param, write_params_file
    from dcfm_ros.node.params import ParameterError, settings_from_values

    values = effective_params(None, [parse_param("backend=torch"), parse_param("backend_cache_dir=/tmp/c")],
                              max_mode=True, transport="raw")
    write_params_file(values, tmp_path / "p.yaml")
    written = yaml.safe_load((tmp_path / "p.yaml").read_text())["/**"]["ros__parameters"]
    assert (written["backend"], written["backend_cache_dir"]) == ("torch", "/tmp/c")
    assert effective_params(None, [], max_mode=True, transport="raw")["backend"] == "auto"
    settings = settings_from_values({k: v for k, v in values.items() if k != "use_sim_time"})
    assert (settings.backend, settings.backend_cache_dir) == ("torch", "/tmp/c")
    with pytest.raises(ParameterError, match="'backend' must be one of auto, torch, onnxruntime, openvino"):
        settings_from_values({**{k: v for k, v in values.items() if k != "use_sim_time"}, "backend": "tvm"})


def test_spread_opens_the_deep_unit_graphs_before_the_first_frame(tmp_path: Path) -> None:
    model = small_model("efficientnet-lite0")
    net = make_backend("onnxruntime", model, "cpu", input_size=SMALL, cache_dir=tmp_path)
    opened = lambda: sorted(n for n in net._sets[0].sessions if n.startswith("unit_"))  # noqa: E731
    StreamEngine(model, FixedInterval(2), input_size=SMALL, backend=net)  # sync: not needed
    assert opened() == []
    StreamEngine(model, FixedInterval(2), input_size=SMALL, backend=net, schedule="spread")
    assert len(opened()) == net.num_deep_units
