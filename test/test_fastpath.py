"""The fast path (issue 23): one backend call per frame, the frame step decide -> run -> commit, the
network and policy protocols, and the profiling mode (stages=True).

Labels are compared on real CamVid frames (the demo bag). Graph backends keep their exports in the
session's cache folder (conftest points XDG_CACHE_HOME at a temporary folder).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dcfm_ros.engine import FixedInterval, MotionThreshold, StreamEngine
from dcfm_ros.engine.backends import make_backend
from dcfm_ros.engine.backends.ort_backend import OnnxRuntimeBackend
from dcfm_ros.engine.feature_policy import FeatureSimilarity
from dcfm_ros.engine.keyframe import check_policy
from dcfm_ros.engine.network import StreamNetwork, check_network
from dcfm_ros.engine.schedules import BackgroundSchedule
from dcfm_ros.evaluation.bagio import BagReader, Frame
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, load_checkpoint
from dcfm_ros.model.tfc import TFC

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
DEMO_BAG = REPO / "demo" / "camvid_val_0016E5"
SHIPPED = REPO / "dcfm_ros" / "models" / "camvid_efficientnet_lite0.safetensors"
SMALL = (96, 128)
GRAPH_BACKENDS = ("onnxruntime", "openvino")


def demo_frames(n: int, step: int = 1) -> list[np.ndarray]:
    with BagReader(DEMO_BAG) as bag:
        frames = [f.image for f in bag.frames("/camera/image/compressed") if isinstance(f, Frame)]
    return frames[: n * step : step]


def small_dcfm(seed: int = 0):
    torch.manual_seed(seed)
    cfg = DCFMConfig(backbone="efficientnet-lite0", num_classes=11, class_names=CAMVID_CLASSES,
                     palette=CAMVID_PALETTE, input_size=SMALL)
    return build_model(cfg).eval()


def small_tfc(seed: int = 0) -> TFC:
    torch.manual_seed(seed)
    cfg = DCFMConfig(backbone="efficientnet-lite0", num_classes=11, class_names=CAMVID_CLASSES,
                     palette=CAMVID_PALETTE, input_size=SMALL, head="linear")
    return TFC(cfg).eval()


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(x == y) for x, y in zip(a, b, strict=True)]))


class CallCounter:
    """Counts the graph runs of an ORT/OpenVINO backend per frame, by graph name."""

    def __init__(self, net: OnnxRuntimeBackend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        run = net._run

        def counted(graphs, name, inputs, outputs=None):
            self.names.append(name)
            return run(graphs, name, inputs, outputs)

        monkeypatch.setattr(net, "_run", counted)

    def take(self) -> list[str]:
        out, self.names = self.names, []
        return out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return demo_frames(8, step=3)


@pytest.fixture(scope="module")
def shipped():
    return load_checkpoint(SHIPPED)[0].eval()


# -- one call per frame -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPH_BACKENDS)
def test_shipped_model_fused_frames_equal_the_stage_path(shipped, frames, name: str) -> None:
    """The node's default (motion policy, sync, no blend) on the fused graphs gives the labels of the
    same backend's stages run one by one (the profiling mode), on the demo drive."""
    pytest.importorskip(name)
    net = make_backend(name, shipped, "cpu")
    fused = StreamEngine(shipped, MotionThreshold(0.1, 1, 30), backend=net)
    staged = StreamEngine(shipped, MotionThreshold(0.1, 1, 30), backend=net, stages=True)
    a = [fused.process(f) for f in frames]
    b = [staged.process(f) for f in frames]
    assert [r.is_keyframe for r in a] == [r.is_keyframe for r in b]
    assert agreement([r.labels for r in a], [r.labels for r in b]) >= 0.999
    # the fused call is timed as a whole; the stages each (the profiling mode)
    assert all(r.timings_ms["network"] > 0 and r.timings_ms["enc_lo"] == 0.0 for r in a)
    assert all(r.timings_ms["enc_lo"] > 0 for r in b)
    assert all((r.timings_ms["enc_hi"] > 0) == r.is_keyframe for r in b)


def test_a_frame_is_one_graph_call(frames, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_dcfm()
    net = OnnxRuntimeBackend(model, "cpu", input_size=SMALL)
    calls = CallCounter(net, monkeypatch)
    engine = StreamEngine(model, FixedInterval(2), backend=net)
    got = []
    for f in frames[:4]:
        engine.process(f)
        got.append(calls.take())
    assert got == [["key"], ["nonkey"], ["key"], ["nonkey"]]
    # the blend's similarity feature (DCFM: F_in) comes out of the same call
    blended = StreamEngine(model, FixedInterval(2), backend=net, nonkey_blend="cosine:prev:0.5")
    assert calls.take() == ["key_x", "nonkey_x"]  # opened and warmed up with the engine, not on a frame
    got = []
    for f in frames[:3]:
        blended.process(f)
        got.append(calls.take())
    assert got == [["key_x"], ["nonkey_x"], ["key_x"]]
    # a deferred pass starts from the F_in of the keyframe's own non-key call
    lag = StreamEngine(model, FixedInterval(2), backend=net, schedule="lag:1")
    calls.take()
    got = []
    for f in frames[:4]:
        lag.process(f)
        got.append(calls.take())
    assert got[0] == ["key"] and got[1] == ["nonkey"] and got[2] == ["nonkey_x"]
    assert got[3][-1] == "nonkey"  # the held pass runs (enc_hi, common) and then the frame's call


def test_tfc_similarity_feature_comes_out_of_the_frame_call(frames, monkeypatch: pytest.MonkeyPatch) -> None:
    """TFC's blend (its own, on z) on the fused graphs: the frame call returns z and x^2; its labels
    equal the torch backend's."""
    model = small_tfc()
    net = OnnxRuntimeBackend(model, "cpu", input_size=SMALL)
    assert "sim" in net._sets[0].manifest.graphs
    calls = CallCounter(net, monkeypatch)
    engine = StreamEngine(model, FixedInterval(3), backend=net)
    calls.take()
    eager = make_backend("torch", model, "cpu", channels_last=False)
    ref = StreamEngine(model, FixedInterval(3), backend=eager)
    a, b = [], []
    for f in frames[:5]:
        a.append(engine.process(f))
        names = calls.take()
        # the frame's call; a blended non-key frame also runs the head on the blended z
        assert names[0] in ("key_x", "nonkey_x") and names[1:] in ([], ["head"]), names
        b.append(ref.process(f))
    assert agreement([r.labels for r in a], [r.labels for r in b]) >= 0.999
    assert [r.low_similarity for r in a] == pytest.approx([r.low_similarity for r in b], abs=1e-3)


@pytest.mark.parametrize("schedule", ["sync", "spread:2", "background", "lag:1"])
def test_every_schedule_runs_on_the_fused_graphs(frames, schedule: str) -> None:
    """Each schedule on the onnxruntime fast path: the keyframes, cache ages and labels of the torch
    backend (background: with a fixed hand-over point, so the two runs are comparable)."""
    model = small_dcfm(1)
    runs = []
    for net in (OnnxRuntimeBackend(model, "cpu", input_size=SMALL),
                make_backend("torch", model, "cpu", channels_last=False)):
        engine = StreamEngine(model, MotionThreshold(0.02, 1, 3), backend=net, schedule=schedule)
        out = []
        try:
            for f in frames:
                out.append(engine.process(f))
                if isinstance(engine.schedule, BackgroundSchedule):
                    engine.schedule.wait(30)
        finally:
            engine.close()
        runs.append(out)
    fused, eager = runs
    assert sum(r.is_keyframe for r in fused) >= 3
    assert [(r.is_keyframe, r.common_age) for r in fused] == [(r.is_keyframe, r.common_age) for r in eager]
    assert agreement([r.labels for r in fused], [r.labels for r in eager]) >= 0.999


def test_feature_policy_decides_from_the_frame_call(frames) -> None:
    """The feature policy on the fused path: decided after the non-key call, from its similarity
    feature; the same keyframes and labels as the torch backend."""
    model = small_dcfm(2)
    policy = FeatureSimilarity(0.05, 1, 4)
    a = StreamEngine(model, policy, backend=OnnxRuntimeBackend(model, "cpu", input_size=SMALL))
    b = StreamEngine(model, policy, backend=make_backend("torch", model, "cpu", channels_last=False))
    ra, rb = [a.process(f) for f in frames], [b.process(f) for f in frames]
    assert [r.is_keyframe for r in ra] == [r.is_keyframe for r in rb]
    assert sum(r.is_keyframe for r in ra[1:]) >= 1
    assert agreement([r.labels for r in ra], [r.labels for r in rb]) >= 0.999


# -- the frame step -----------------------------------------------------------------------------------


def test_decide_run_commit_keep_state_per_stream(frames) -> None:
    """Two streams through one engine's network: decide for each, run each, commit each; every stream
    behaves as if it had an engine of its own (what a multi-camera scheduler builds on)."""
    model = small_dcfm()
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    alone = StreamEngine(model, FixedInterval(2), device="cpu")
    from dcfm_ros.engine.stream import StreamState

    other = StreamState(FixedInterval(3), engine.state.schedule.__class__(), engine.state.blend.__class__(
        engine.state.blend.spec, model))
    alone_other = StreamEngine(model, FixedInterval(3), device="cpu")
    with torch.inference_mode():
        for f, g in zip(frames[:5], frames[3:8], strict=True):
            plans = [engine.decide(f, engine.state), engine.decide(g, other)]
            runs = [engine.run(p) for p in plans]
            got = [engine.commit(p, r) for p, r in zip(plans, runs, strict=True)]
            want = [alone.process(f), alone_other.process(g)]
            for x, y in zip(got, want, strict=True):
                assert (x.is_keyframe, x.common_age) == (y.is_keyframe, y.common_age)
                np.testing.assert_array_equal(x.labels, y.labels)


def test_a_frame_that_fails_in_run_changes_no_state(frames, monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_dcfm()
    engine = StreamEngine(model, FixedInterval(3), device="cpu")
    engine.process(frames[0])
    before = (engine.state.since, engine.state.frame)
    cache = engine.state.cache
    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the backend failed")

    monkeypatch.setattr(engine.backend, "nonkey_frame", fail)
    with pytest.raises(RuntimeError):
        engine.process(frames[1])
    assert (engine.state.since, engine.state.frame) == before and engine.state.cache is cache
    monkeypatch.undo()
    r = engine.process(frames[1])
    assert not r.is_keyframe and r.frames_since_key == 1


# -- protocols ----------------------------------------------------------------------------------------


def test_dcfm_and_tfc_are_stream_networks_and_others_are_refused() -> None:
    assert isinstance(small_dcfm(), StreamNetwork) and isinstance(small_tfc(), StreamNetwork)
    assert small_dcfm().unit_feature and not small_tfc().unit_feature
    with pytest.raises(ValueError, match=r"lacks .*similarity_feature"):
        check_network(SimpleNamespace(config=None, enc_lo=None, enc_hi=None, ffm=None, head=None))
    with pytest.raises(ValueError, match="not a network"):
        StreamEngine(torch.nn.Conv2d(3, 3, 1), FixedInterval(2), device="cpu")  # type: ignore[arg-type]


def test_policy_protocol_names_the_score() -> None:
    assert FixedInterval(2).score == "none" and MotionThreshold(0.1).score == "motion"
    assert FeatureSimilarity(0.5).score == "similarity"

    class Odd:
        score = "colour"

        def decide(self, frames_since_key: int, score: float | None) -> bool:
            return False

    with pytest.raises(ValueError, match="score must be one of"):
        check_policy(Odd())
    with pytest.raises(ValueError, match=r"decide.*score"):
        check_policy(object())


# -- precisions ---------------------------------------------------------------------------------------


def _ov_bf16() -> bool:
    from dcfm_ros.engine.backends.openvino_backend import cpu_has_bf16, openvino_available

    return openvino_available() and cpu_has_bf16()


needs_bf16 = pytest.mark.skipif(not _ov_bf16(), reason="OpenVINO bf16 needs openvino and a CPU with native "
                                                        "bf16 (AVX512_BF16 or AMX)")


@needs_bf16
def test_bf16_labels_agree_with_fp32_on_the_demo_drive(shipped, frames) -> None:
    """OpenVINO's bf16 inference precision hint on the shipped model: >= 97 % of the demo pixels get
    fp32's label, on keyframes and non-key frames alike."""
    runs = {}
    for precision in ("fp32", "bf16"):
        net = make_backend("openvino", shipped, "cpu", precision)
        engine = StreamEngine(shipped, FixedInterval(2), backend=net)
        runs[precision] = [engine.process(f) for f in frames]
    for kind in (True, False):
        a = [r.labels for r in runs["fp32"] if r.is_keyframe == kind]
        b = [r.labels for r in runs["bf16"] if r.is_keyframe == kind]
        assert agreement(a, b) >= 0.97


def test_precision_auto_names_what_it_picked_and_why(shipped) -> None:
    from dcfm_ros.engine.backends import pick_precision

    assert pick_precision("onnxruntime", "cpu")[0] == "fp32"
    assert pick_precision("torch", "cpu")[0] == "fp32"
    net = make_backend("torch", small_dcfm(), "cpu", "auto")
    assert net.precision == "fp32" and "precision auto: fp32" in net.describe()
    if _ov_bf16():
        precision, why = pick_precision("openvino", "cpu")
        assert precision == "bf16" and "BF16" in why


def test_bf16_on_a_cpu_without_it_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from dcfm_ros.engine.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda core=None: ["FP32", "INT8"])
    with pytest.raises(ValueError, match="use 'fp32' or 'auto'"):
        make_backend("openvino", small_dcfm(), "cpu", "bf16", input_size=SMALL)
    assert make_backend("openvino", small_dcfm(), "cpu", "auto", input_size=SMALL).precision == "fp32"


# -- pre/post-processing in the graph -------------------------------------------------------------------


@pytest.mark.parametrize("name", GRAPH_BACKENDS)
def test_graph_io_gives_the_host_path_labels_without_torch_pre_or_post(
        shipped, frames, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uint8 camera image in, labels and confidence out of the frame's one call: the labels,
    keyframes and confidence of the engine's own pre/post-processing, and none of it runs."""
    pytest.importorskip(name)
    net = make_backend(name, shipped, "cpu")
    host = StreamEngine(shipped, MotionThreshold(0.1, 1, 30), backend=net)
    io = StreamEngine(shipped, MotionThreshold(0.1, 1, 30), backend=net, graph_io=True, labels_at="camera")
    assert io.graph_io
    a = [host.process(f) for f in frames]
    pre = type(io.preprocessor)
    for fn in ("upload", "normalize", "labels", "motion_copy"):
        monkeypatch.setattr(pre, fn, lambda *args, **kwargs: pytest.fail("torch pre/post-processing ran"))
    b = [io.process(f) for f in frames]
    assert [r.is_keyframe for r in a] == [r.is_keyframe for r in b]
    assert agreement([r.labels for r in a], [r.labels for r in b]) >= 0.999
    for x, y in zip(a, b, strict=True):
        assert y.labels.dtype == np.uint8 and y.labels.shape == x.labels.shape
        assert y.confidence.mean == pytest.approx(x.confidence.mean, abs=1e-3)
        assert np.abs(y.confidence.map_u8.astype(int) - x.confidence.map_u8).max() <= 1
        assert abs(y.motion_score - x.motion_score) <= 1.0 / 255


@pytest.mark.parametrize("name", GRAPH_BACKENDS)
def test_graph_io_at_a_large_camera_and_labels_made_at_the_network_size(frames, name: str) -> None:
    """A camera 3x the network's size: exact labels at its size, or labels made at the network's size
    and scaled up (nearest) -- the same labels nearly everywhere, at the camera's size. OpenVINO
    resizes the uint8 image (its PrePostProcessor) where the host path resizes floats."""
    import cv2

    pytest.importorskip(name)
    model = small_dcfm()
    net = make_backend(name, model, "cpu", input_size=SMALL)
    big = [cv2.resize(f, (SMALL[1] * 3, SMALL[0] * 3), interpolation=cv2.INTER_AREA) for f in frames[:4]]
    exact = StreamEngine(model, FixedInterval(2), backend=net)
    io = StreamEngine(model, FixedInterval(2), backend=net, graph_io=True, labels_at="camera")
    coarse = StreamEngine(model, FixedInterval(2), backend=net, graph_io=True, labels_at="network")
    a, b, c = ([e.process(f).labels for f in big] for e in (exact, io, coarse))
    assert all(x.shape == big[0].shape[:2] for x in (*b, *c))
    assert agreement(a, b) >= 0.999
    assert agreement(a, c) >= 0.9  # random weights: the noisiest label maps, the worst case for it
    with pytest.raises(ValueError, match="labels_at"):
        StreamEngine(model, FixedInterval(2), backend=net, graph_io=True, labels_at="half")


def test_a_new_camera_size_prepares_its_key_and_nonkey_graphs_on_its_first_frame(frames) -> None:
    """The graph-I/O variants are built per camera size: the first (key) frame of a size opens the
    non-key one too, so the first non-key frame does not pay for building its graph."""
    import cv2

    model = small_dcfm()
    net = OnnxRuntimeBackend(model, "cpu", input_size=SMALL)
    engine = StreamEngine(model, FixedInterval(3), backend=net, graph_io=True, labels_at="camera")
    graphs = net._sets[0]

    def io_sessions() -> set[str]:
        return {n.split(":")[1] for n in graphs.sessions if n.startswith("io:")}

    assert io_sessions() == set()
    assert engine.process(frames[0]).is_keyframe
    assert io_sessions() == {"key", "nonkey"}
    opened = set(graphs.sessions)
    assert not engine.process(frames[1]).is_keyframe
    assert set(graphs.sessions) == opened  # nothing built on the non-key frame
    big = cv2.resize(frames[2], (SMALL[1] * 2, SMALL[0] * 2))
    assert engine.process(big).is_keyframe  # a new size: forced keyframe, its graphs built with it
    assert len([n for n in graphs.sessions if n.startswith("io:")]) == 4
    # a size known in advance (node parameter camera_size): built before any frame of it
    engine.prepare_camera((SMALL[0] * 3, SMALL[1] * 3))
    assert len([n for n in graphs.sessions if n.startswith("io:")]) == 6
    opened = set(graphs.sessions)
    huge = cv2.resize(frames[3], (SMALL[1] * 3, SMALL[0] * 3))
    assert engine.process(huge).is_keyframe and set(graphs.sessions) == opened


def test_graph_io_stays_off_where_it_cannot_apply(frames) -> None:
    model = small_dcfm()
    net = OnnxRuntimeBackend(model, "cpu", input_size=SMALL)
    blended = StreamEngine(model, FixedInterval(2), backend=net, graph_io=True, nonkey_blend="cosine")
    assert not blended.graph_io  # the blend needs the logits
    assert not StreamEngine(model, FixedInterval(2), backend=net, graph_io=True, stages=True).graph_io
    assert not StreamEngine(model, FixedInterval(2), device="cpu", graph_io=True).graph_io  # torch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU (none here)")
def test_tensorrt_fused_frames_equal_its_stage_path(frames) -> None:
    pytest.importorskip("tensorrt")
    model = small_dcfm()
    net = make_backend("tensorrt", model, "cuda", "fp16", input_size=SMALL)
    fused = StreamEngine(model, FixedInterval(2), backend=net)
    staged = StreamEngine(model, FixedInterval(2), backend=net, stages=True)
    a = [fused.process(f).labels for f in frames]
    b = [staged.process(f).labels for f in frames]
    assert agreement(a, b) >= 0.99


def test_the_fused_per_frame_baseline_equals_its_stages(frames) -> None:
    """dcfm-bench's per-frame baseline head(enc_hi(enc_lo(x))) as one graph == the three stage calls."""
    model = small_dcfm()
    net = OnnxRuntimeBackend(model, "cpu", input_size=SMALL)
    engine = StreamEngine(model, FixedInterval(1), backend=net)
    pre = engine.preprocessor
    with torch.inference_mode():
        x = pre.normalize(pre.upload(frames[0]))
        staged = net.head(net.enc_hi(net.enc_lo(x)))
    np.testing.assert_allclose(net.baseline_logits(x).numpy(), staged.numpy(), rtol=1e-4, atol=1e-4)
