"""StreamEngine (P mode), device/precision selection, visualisation and the dcfm-bench CLI.

Real PyTorch on a tiny random-init EfficientNet-Lite0 DCFM at 64x96.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcfm_ros.engine import (
    TIMING_KEYS,
    FixedInterval,
    MotionThreshold,
    StreamEngine,
    class_mask,
    colorize,
    overlay,
    resolve_device,
    resolve_precision,
    run_bmode,
    run_pmode,
)
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model
from dcfm_ros.tools.bench import main as bench_main

SIZE = (64, 96)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def clip(n: int, seed: int = 0, size: tuple[int, int] = SIZE, shift: int = 3) -> list[np.ndarray]:
    """n frames of a smooth random scene panning `shift` pixels per frame."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (8, 24, 3), dtype=np.uint8), (size[1] * 2, size[0]),
                      interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(np.roll(base, shift * i, axis=1)[:, : size[1]]) for i in range(n)]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE)).eval()


def reference_input(model: torch.nn.Module, image: np.ndarray, size: tuple[int, int] = SIZE) -> torch.Tensor:
    """Independent preprocessing: uint8 -> float, bilinear resize, DCFM.normalize_input."""
    x = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float()
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return model.normalize_input(x / 255.0)


def count_calls(module: torch.nn.Module) -> tuple[list[int], object]:
    """A call counter on `module` (forward hook) and the hook's handle."""
    counter = [0]
    handle = module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter, handle


# ---------------------------------------------------------------- P mode


def count_common_part(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of model.ffm.common_part (the real method still runs)."""
    counter = [0]
    real = model.ffm.common_part

    def counted(f_co: torch.Tensor) -> torch.Tensor:
        counter[0] += 1
        return real(f_co)

    monkeypatch.setattr(model.ffm, "common_part", counted)
    return counter


def test_nonkey_frames_never_run_enc_hi(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = StreamEngine(model, FixedInterval(3), device="cpu")
    (hi, hi_hook), (lo, lo_hook) = count_calls(model.enc_hi), count_calls(model.enc_lo)
    # The full FFM (forward, i.e. the 1x1 conv over C_co + lo_take channels) must not run: a
    # non-key frame only convolves F_in and adds the keyframe's cached common part.
    (ffm, ffm_hook), (conv, conv_hook) = count_calls(model.ffm), count_calls(model.ffm.conv)
    common = count_common_part(model, monkeypatch)
    try:
        for frame in clip(7):
            hi0, lo0, ffm0, conv0, common0 = hi[0], lo[0], ffm[0], conv[0], common[0]
            r = engine.process(frame)
            assert hi[0] - hi0 == (1 if r.is_keyframe else 0)
            assert common[0] - common0 == (1 if r.is_keyframe else 0)
            assert lo[0] - lo0 == 1
            if not r.is_keyframe:
                assert r.timings_ms["enc_hi"] == 0.0
                assert ffm[0] - ffm0 == 0 and conv[0] - conv0 == 0
        assert hi[0] == 3 and common[0] == 3  # frames 0, 3, 6
        assert ffm[0] == 0 and conv[0] == 0  # keyframes share the split path too
    finally:
        for handle in (hi_hook, lo_hook, ffm_hook, conv_hook):
            handle.remove()  # type: ignore[attr-defined]


def test_sequence_modes_cache_common_part_per_keyframe(model: torch.nn.Module,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    frames = clip(5)
    (ffm, ffm_hook), (conv, conv_hook) = count_calls(model.ffm), count_calls(model.ffm.conv)
    common = count_common_part(model, monkeypatch)
    try:
        run_bmode(model, frames, [0, 3], device="cpu")
        assert common[0] == 2  # once per keyframe, shared by the frames on both sides
        run_pmode(model, frames, [0, 2, 4], device="cpu")
        assert common[0] == 5
        assert ffm[0] == 0 and conv[0] == 0
    finally:
        ffm_hook.remove()  # type: ignore[attr-defined]
        conv_hook.remove()  # type: ignore[attr-defined]


def test_causal_output_does_not_depend_on_later_frames(model: torch.nn.Module) -> None:
    shared = clip(3, seed=0)
    tail_a, tail_b = clip(2, seed=1), clip(2, seed=2)
    policy = MotionThreshold(0.05, min_interval=1, max_interval=3)
    engine_a = StreamEngine(model, policy, device="cpu")
    ra = [engine_a.process(f) for f in shared + tail_a]
    engine_b = StreamEngine(model, policy, device="cpu")
    rb = [engine_b.process(f) for f in shared + tail_b]
    for t in range(len(shared)):
        np.testing.assert_array_equal(ra[t].labels, rb[t].labels)
        assert (ra[t].is_keyframe, ra[t].motion_score) == (rb[t].is_keyframe, rb[t].motion_score)
    # and a fresh engine fed only frames 0..t agrees too
    engine_c = StreamEngine(model, policy, device="cpu")
    rc = [engine_c.process(f) for f in shared]
    for t in range(len(shared)):
        np.testing.assert_array_equal(ra[t].labels, rc[t].labels)


def test_labels_equal_model_forward_on_key_and_nonkey(model: torch.nn.Module) -> None:
    frames = clip(3)
    engine = StreamEngine(model, FixedInterval(100), device="cpu")
    with torch.inference_mode():
        x0 = reference_input(model, frames[0])
        _, f_co, _ = model.forward_key(x0)
        want_key = model(x0).argmax(1)[0].numpy()
        want_nonkey = [model(reference_input(model, f), f_co=f_co).argmax(1)[0].numpy() for f in frames[1:]]
    r = engine.process(frames[0])
    assert r.is_keyframe and r.labels.dtype == np.uint8 and r.labels.shape == SIZE
    np.testing.assert_array_equal(r.labels, want_key)
    for frame, want in zip(frames[1:], want_nonkey, strict=True):
        r = engine.process(frame)
        assert not r.is_keyframe
        np.testing.assert_array_equal(r.labels, want)
    assert len(np.unique(want_key)) > 1  # the comparison is not between two constant maps


def test_labels_at_original_resolution(model: torch.nn.Module) -> None:
    image = cv2.resize(clip(1)[0], (150, 100))  # (100, 150, 3): resized to 64x96 and back
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    with torch.inference_mode():
        logits, _, _ = model.forward_key(reference_input(model, image))
        want = F.interpolate(logits, size=(100, 150), mode="bilinear", align_corners=False).argmax(1)[0]
    r = engine.process(image)
    assert r.labels.shape == (100, 150)
    np.testing.assert_array_equal(r.labels, want.numpy())
    # a BGR->RGB view (negative strides) is accepted
    assert engine.process(np.ascontiguousarray(image[..., ::-1])[..., ::-1]).labels.shape == (100, 150)


def test_input_size_override(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(2), device="cpu", input_size=(32, 64))
    assert engine.input_size == (32, 64)
    assert engine.process(clip(1)[0]).labels.shape == SIZE
    with pytest.raises(ValueError, match="input_size"):
        StreamEngine(model, FixedInterval(2), device="cpu", input_size=(0, 64))


def test_uint16_labels_for_many_classes() -> None:
    torch.manual_seed(1)
    n = 300
    config = DCFMConfig("efficientnet-lite0", n, tuple(f"c{i}" for i in range(n)),
                        tuple((i % 256, 0, 0) for i in range(n)), (32, 48))
    big = build_model(config).eval()
    image = clip(1, size=(32, 48))[0]
    with torch.inference_mode():
        want = big(reference_input(big, image, (32, 48))).argmax(1)[0].numpy()
    r = StreamEngine(big, FixedInterval(1), device="cpu").process(image)
    assert r.labels.dtype == np.uint16
    np.testing.assert_array_equal(r.labels, want)


def test_resolution_change_and_reset_force_keyframes(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(100), device="cpu")
    frame = clip(1)[0]
    assert engine.process(frame).is_keyframe
    assert not engine.process(frame).is_keyframe
    r = engine.process(cv2.resize(frame, (80, 48)))
    assert r.is_keyframe and r.frames_since_key == 0 and r.motion_score == 0.0
    assert r.labels.shape == (48, 80)
    assert not engine.process(cv2.resize(frame, (80, 48))).is_keyframe
    engine.reset()
    assert not engine.has_keyframe
    assert engine.process(cv2.resize(frame, (80, 48))).is_keyframe


@pytest.mark.parametrize(("bad", "match"), [
    (np.zeros((64, 96), np.uint8), "3 dimensions"),
    (np.zeros((64, 96, 4), np.uint8), "3 channels"),
    (np.zeros((64, 96, 3), np.float32), "uint8"),
    (np.zeros((0, 96, 3), np.uint8), "empty"),
    (np.zeros((64, 0, 3), np.uint8), "empty"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_inputs_raise_and_engine_keeps_working(model: torch.nn.Module, bad: object, match: str) -> None:
    engine = StreamEngine(model, FixedInterval(100), device="cpu")
    frames = clip(2)
    assert engine.process(frames[0]).is_keyframe
    with pytest.raises(ValueError, match=match):
        engine.process(bad)  # type: ignore[arg-type]
    r = engine.process(frames[1])
    assert not r.is_keyframe and r.frames_since_key == 1  # the stream state survived


def test_timings(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    for r in (engine.process(f) for f in clip(2)):
        assert set(r.timings_ms) == set(TIMING_KEYS)
        assert all(v >= 0.0 for v in r.timings_ms.values())
        assert r.timings_ms["total"] >= r.timings_ms["enc_lo"] + r.timings_ms["enc_hi"]
        assert (r.timings_ms["enc_hi"] > 0.0) == r.is_keyframe


def test_engine_attributes(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    assert engine.num_classes == 11 and engine.class_names == CAMVID_CLASSES
    assert engine.palette == CAMVID_PALETTE and engine.device == torch.device("cpu")


# ---------------------------------------------------------------- device / precision


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("int8", torch.device("cpu"))
    assert resolve_precision("fp32", torch.device("cpu")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error(model: torch.nn.Module) -> None:
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            StreamEngine(model, FixedInterval(2), device=name)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_rejected_on_cpu(model: torch.nn.Module, precision: str) -> None:
    with pytest.raises(ValueError, match="needs a CUDA device"):
        StreamEngine(model, FixedInterval(2), device="cpu", precision=precision)


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_engine_matches_cpu(precision: str) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("GPU without bf16")
    torch.manual_seed(0)
    config = DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE)
    cpu_model = build_model(config)
    gpu_model = build_model(config)
    gpu_model.load_state_dict(cpu_model.state_dict())
    frames = clip(4)
    cpu = StreamEngine(cpu_model, FixedInterval(2), device="cpu")
    gpu = StreamEngine(gpu_model, FixedInterval(2), device="cuda", precision=precision)
    for f in frames:
        a, b = cpu.process(f), gpu.process(f)
        assert a.is_keyframe == b.is_keyframe
        assert b.labels.dtype == np.uint8 and b.labels.shape == SIZE
        agreement = float((a.labels == b.labels).mean())
        assert agreement > (0.99 if precision == "fp32" else 0.9), agreement
        assert b.timings_ms["total"] > 0.0 and (b.timings_ms["enc_hi"] > 0.0) == b.is_keyframe


# ---------------------------------------------------------------- visualisation


def test_colorize_uses_the_palette() -> None:
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    palette = [(10, 20, 30), (40, 50, 60), (70, 80, 90)]
    out = colorize(labels, palette)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(out[0, 1], (40, 50, 60))
    np.testing.assert_array_equal(out[1, 0], (70, 80, 90))
    np.testing.assert_array_equal(out[1, 1], (0, 0, 0))  # no colour (e.g. void): black
    np.testing.assert_array_equal(colorize(labels.astype(np.uint16), palette), out)
    np.testing.assert_array_equal(colorize(labels.astype(np.int64), np.array(palette)), out)
    with pytest.raises(ValueError, match="2-D"):
        colorize(np.zeros((2, 2, 1), np.uint8), palette)
    with pytest.raises(ValueError, match="integer"):
        colorize(np.zeros((2, 2), np.float32), palette)
    with pytest.raises(ValueError, match="palette"):
        colorize(labels, [(0, 0)])
    with pytest.raises(ValueError, match=">= 0"):
        colorize(np.array([[-1]]), palette)


def test_overlay_blends() -> None:
    image = np.full((2, 3, 3), 100, np.uint8)
    color = np.full((2, 3, 3), 200, np.uint8)
    np.testing.assert_array_equal(overlay(image, color, 0.0), image)
    np.testing.assert_array_equal(overlay(image, color, 1.0), color)
    np.testing.assert_array_equal(overlay(image, color, 0.25), np.full((2, 3, 3), 125, np.uint8))
    with pytest.raises(ValueError, match="same shape"):
        overlay(image, color[:1], 0.5)
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, color, 1.5)
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), color, 0.5)


def test_class_mask() -> None:
    labels = np.array([[0, 3], [3, 1]], np.uint8)
    mask = class_mask(labels, 3)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[0, 255], [255, 0]])
    assert not class_mask(labels, 7).any()
    with pytest.raises(ValueError, match="class_id"):
        class_mask(labels, -1)


# ---------------------------------------------------------------- dcfm-bench


REQUIRED = {"key_ms", "nonkey_ms", "baseline_ms", "ratio_nonkey_key", "ratio_stream_baseline", "device",
            "precision", "torch", "device_name", "threads", "mode", "keyframe_ratio", "stream_ms", "weights"}


def test_bench_cli_json(tmp_path, capsys) -> None:
    for i, frame in enumerate(clip(4, size=(48, 64), shift=6)):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    rc = bench_main(["--backbone", "efficientnet-lite0", "--size", "64x96", "--frames", "3", "--warmup", "0",
                     "--json", "--device", "cpu", "--clip", str(tmp_path), "--num-classes", "5"])
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["mode"] for r in lines] == ["fixed", "fixed", "fixed", "motion"]
    assert [r.get("K") for r in lines[:3]] == [1, 2, 6]
    for r in lines:
        assert set(r) >= REQUIRED, REQUIRED - set(r)
        assert r["key_ms"] > 0 and r["nonkey_ms"] > 0 and r["baseline_ms"] > 0
        assert r["device"] == "cpu" and r["precision"] == "fp32" and r["clip"] == str(tmp_path)
    assert lines[-1]["motion_frames"] == 4 and 0 < lines[-1]["keyframe_ratio"] <= 1


def test_bench_cli_table_and_bad_size(capsys) -> None:
    rc = bench_main(["--backbone", "efficientnet-lite0", "--size", "32x48", "--frames", "1", "--warmup", "0",
                     "--device", "cpu", "--motion-frames", "0", "--intervals", "1,3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "DCFM non-key" in out and "fixed K=3" in out and "random init" in out
    with pytest.raises(SystemExit):
        bench_main(["--size", "480by853"])


def test_bench_overhead_times_the_graphs_the_engine_runs(tmp_path, capsys) -> None:
    """--overhead --graph-io times the engine against the same I/O-variant graphs called bare (uint8
    image in), on the graph backends; a backend without bare graphs is refused."""
    for i, frame in enumerate(clip(3, size=(48, 64), shift=6)):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    common = ["--backbone", "efficientnet-lite0", "--size", "48x64", "--frames", "2", "--warmup", "0",
              "--device", "cpu", "--clip", str(tmp_path), "--num-classes", "5", "--overhead"]
    assert bench_main([*common, "--backends", "onnxruntime", "--graph-io", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines() if line.startswith("{")]
    got = rows[-1]
    row = got.get("onnxruntime", got)
    assert row["graph_key_ms"] > 0 and row["engine_nonkey_ms"] > 0
    assert row["ratio_key_engine_graph"] > 0 and row["ratio_nonkey_engine_graph"] > 0
    with pytest.raises(SystemExit, match="no fused graphs"):
        bench_main([*common, "--backends", "torch"])
