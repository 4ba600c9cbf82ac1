"""MRCFA and SD-CPC (dcfm_ros/model/mrcfa.py, sdcpc.py): causality in the stream, the reference ring,
checkpoints with model_class / model_options, the loss terms on hand values, a training step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import make_camvid, make_folder

from dcfm_ros.data.datasets.clips import clip_samples
from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.confidence import frame_confidence
from dcfm_ros.engine.reference_ring import ReferenceRing
from dcfm_ros.model import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    DCFMConfig,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from dcfm_ros.model.mrcfa import MRCFA, build_mrcfa
from dcfm_ros.model.multiframe import MultiFrameModel, pad_references
from dcfm_ros.model.sdcpc import SDCPC, build_sdcpc
from dcfm_ros.training.peer_losses import class_prototypes, prototype_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 96)
REPO = Path(__file__).resolve().parents[1]


def config(size: tuple[int, int] = SIZE) -> DCFMConfig:
    return DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, size, head="linear")


def _awake(model: MultiFrameModel) -> MultiFrameModel:
    """Random weights everywhere, also where training starts at zero (SD-CPC's residual outputs and
    coordinate maps, the G's last layers): otherwise an untrained model ignores its references and
    every causality check would pass trivially."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith(("enc_lo", "enc_hi")) and p.dim() > 1:
                p.copy_(torch.randn_like(p) * 0.2)
            elif not name.startswith(("enc_lo", "enc_hi")):
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module", params=["MRCFA", "SDCPC"])
def peer(request: pytest.FixtureRequest) -> MultiFrameModel:
    torch.manual_seed(0)
    build = build_mrcfa if request.param == "MRCFA" else build_sdcpc
    return _awake(build(config()))


def frames(n: int, seed: int = 0, size: tuple[int, int] = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


def engine(model: MultiFrameModel, stride: int = 1) -> StreamEngine:
    return StreamEngine(model, FixedInterval(1), device="cpu", reference_stride=stride)


def _norm(model: MultiFrameModel, img: np.ndarray) -> torch.Tensor:
    return model.normalize_input(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous())


# --- causality and the ring ----------------------------------------------------------------------

def test_a_later_frame_never_changes_an_earlier_output(peer: MultiFrameModel):
    a = frames(6, seed=0)
    b = a[:3] + frames(3, seed=9)  # the same first three frames, then another scene
    eng_a, eng_b = engine(peer), engine(peer)
    out_a = [eng_a.process(f) for f in a]
    out_b = [eng_b.process(f) for f in b]
    for ra, rb in zip(out_a[:3], out_b[:3], strict=True):
        assert np.array_equal(ra.labels, rb.labels)
        assert ra.confidence.mean == rb.confidence.mean
    # ... and the references do matter: frame 4 with a different frame 3 before it differs
    c = [*a[:3], b[3], a[4]]
    eng_c = engine(peer)
    out_c = [eng_c.process(f) for f in c]
    assert out_c[4].confidence.mean != out_a[4].confidence.mean
    assert all(r.is_keyframe and r.frames_since_key == 0 for r in out_a)


@torch.no_grad()
@pytest.mark.parametrize("stride", [1, 3])
def test_the_ring_equals_recomputing_the_references(peer: MultiFrameModel, stride: int):
    imgs = frames(8, seed=3)
    eng = engine(peer, stride)
    results = [eng.process(f) for f in imgs]
    pre = eng.preprocessor
    for t in (0, 2, 4, 7):
        # recompute: memories of frames t - 2 stride, t - stride (those that exist) from their images
        ref_idx = [t - stride * k for k in (2, 1) if t - stride * k >= 0]
        mems = [peer.forward_stream(pre.normalize(pre.upload(imgs[i])), [])[1] for i in ref_idx]
        logits, _ = peer.forward_stream(pre.normalize(pre.upload(imgs[t])), mems)
        assert np.array_equal(pre.labels(logits, SIZE), results[t].labels), t
        assert results[t].confidence.mean == frame_confidence(logits).mean


def test_ring_size_positions_and_reset():
    ring = ReferenceRing(2, 3)
    assert ring.capacity == 6 and len(ring) == 0 and ring.references() == []
    for i in range(10):
        ring.push((torch.tensor(i),))
        assert len(ring) == min(i + 1, 6)
    # next frame is 10: references 10 - 6 = 4 and 10 - 3 = 7, oldest first
    assert [int(m[0]) for m in ring.references()] == [4, 7]
    ring.reset()
    assert len(ring) == 0
    ring.push((torch.tensor(0),))
    ring.push((torch.tensor(1),))
    ring.push((torch.tensor(2),))
    assert [int(m[0]) for m in ring.references()] == [0]  # frame 3: only t-3 exists
    own = (torch.tensor(-1),)
    assert [int(m[0]) for m in pad_references(ring.references(), own, 2)] == [0, 0]
    assert pad_references([], own, 2) == [own, own]
    with pytest.raises(ValueError, match=">= 1"):
        ReferenceRing(0, 1)


def test_a_resolution_change_empties_the_ring(peer: MultiFrameModel):
    small = frames(3, seed=4)
    big = frames(2, seed=5, size=(96, 128))
    eng = engine(peer)
    for f in small:
        eng.process(f)
    assert len(eng._ring.ring) == 2
    first_big = eng.process(big[0])
    assert len(eng._ring.ring) == 1
    fresh = engine(peer).process(big[0])
    assert np.array_equal(first_big.labels, fresh.labels)
    assert first_big.confidence.mean == fresh.confidence.mean
    eng.reset()
    assert len(eng._ring.ring) == 0


def test_ring_models_refuse_other_graph_backends_and_schedules(peer: MultiFrameModel):
    with pytest.raises(ValueError, match="torch or onnxruntime"):
        StreamEngine(peer, FixedInterval(1), device="cpu", backend="openvino")
    with pytest.raises(ValueError, match="schedule must be sync"):
        StreamEngine(peer, FixedInterval(1), device="cpu", schedule="spread")


# --- checkpoints -----------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("name,options", [("MRCFA", {"sar": False, "maa": True}),
                                          ("MRCFA", {"maa": False}), ("SDCPC", {})])
def test_checkpoint_round_trip_with_model_class_and_options(tmp_path: Path, name: str, options: dict):
    torch.manual_seed(0)
    build = build_mrcfa if name == "MRCFA" else build_sdcpc
    model = _awake(build(config(), **options))
    path = tmp_path / "peer.safetensors"
    save_checkpoint(path, model, {"iteration": 7})
    meta = read_checkpoint_meta(path)
    assert meta["model_class"] == name
    assert meta["model_options"] == model.model_options
    loaded, _ = load_checkpoint(path)
    assert type(loaded) is type(model) and loaded.model_options == model.model_options
    x = torch.randn(1, 3, *SIZE)
    refs = [model.forward_stream(torch.randn(1, 3, *SIZE), [])[1] for _ in range(2)]
    assert torch.equal(loaded.forward_stream(x, refs)[0], model.forward_stream(x, refs)[0])


@torch.no_grad()
def test_mrcfa_ablations_change_the_output_and_token_selection_keeps_p():
    torch.manual_seed(0)
    full = _awake(build_mrcfa(config()))
    x, r = torch.randn(1, 3, *SIZE), torch.randn(1, 2, 3, *SIZE)
    outs = {}
    for opts in ({}, {"sar": False}, {"maa": False}):
        m = build_mrcfa(config(), **opts).eval()
        m.load_state_dict(full.state_dict())
        outs[str(opts)] = m.forward_clip(x, r)
    assert not torch.allclose(outs["{}"], outs["{'sar': False}"])
    assert not torch.allclose(outs["{}"], outs["{'maa': False}"])
    feats, fused = full.backbone(x)
    mem = full.memory(feats, fused)
    q = full.query[-1](feats[3])
    _, idx = full.select_tokens(q, mem[2])
    n_l = feats[3].shape[-2] * feats[3].shape[-1]
    assert idx.shape == (1, round(0.8 * n_l))
    with pytest.raises(ValueError, match="token_ratio"):
        build_mrcfa(config(), token_ratio=0.0)


# --- the loss terms ------------------------------------------------------------------------------

def test_prototypes_and_contrastive_terms_on_hand_values():
    # one frame, 2 variates of 2 channels, 3 pixels (1 x 3), 2 classes
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # pixel 0: variate 0 = e0, variate 1 = e1
    feats = torch.stack([v, v, torch.tensor([[0.0, 1.0], [1.0, 0.0]])])  # pixel 2 swapped
    variates = feats.permute(1, 2, 0).reshape(1, 2, 2, 1, 3)  # (B, M, c, h, w)
    y = torch.tensor([[[0, 0, 1]]])
    logits = torch.tensor([[[[5.0, 5.0, -5.0]], [[-5.0, -5.0, 5.0]]]])  # every pixel right
    tau = 0.5
    l_cr, l_mf, share = prototype_losses(variates, logits, y, tau)
    assert share == 1.0
    # prototypes: class 0 = mean of pixels 0, 1 = v; class 1 = pixel 2; all already unit length
    p0, p1 = v, feats[2]
    protos, counts = class_prototypes(feats[None].reshape(1, 3, 2, 2), y.reshape(1, 3), 2)
    assert torch.allclose(protos[0, 0], p0) and torch.allclose(protos[0, 1], p1)
    assert counts.tolist() == [[2.0, 1.0]]
    expected = []
    for i, cls in enumerate([0, 0, 1]):
        for m in range(2):
            f = feats[i, m]
            pos = (p0 if cls == 0 else p1)[m]
            neg = (p1 if cls == 0 else p0)[m]
            expected.append(math.log(1 + math.exp(float(f @ neg) / tau) / math.exp(float(f @ pos) / tau)))
    assert float(l_cr) == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    # L_MF: class 0's two variate prototypes e0, e1 are orthogonal (0); class 1's too (0)
    assert float(l_mf) == pytest.approx(0.0, abs=1e-7)
    # a wrong pixel leaves the prototypes: pixel 2 predicted as class 0 -> only class 0 present,
    # no negatives, L_CR = 0; L_MF of class 0 = e0 . e1 = 0
    wrong = logits.clone()
    wrong[..., 2] = torch.tensor([5.0, -5.0]).view(2, 1)
    l_cr2, _, share2 = prototype_losses(variates, wrong, y, tau)
    assert share2 == pytest.approx(2 / 3) and float(l_cr2) == 0.0
    # L_MF on hand values: variates (1, 0) and (0.6, 0.8) -> cosine 0.6
    same = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    var2 = same[None].expand(3, 2, 2).permute(1, 2, 0).reshape(1, 2, 2, 1, 3)
    _, l_mf3, _ = prototype_losses(var2, logits, y, tau)
    assert float(l_mf3) == pytest.approx(0.6, rel=1e-6)


def test_no_correct_pixel_gives_zero_terms_connected_to_the_graph():
    variates = torch.randn(1, 2, 2, 1, 3, requires_grad=True)
    logits = torch.tensor([[[[-5.0, -5.0, -5.0]], [[5.0, 5.0, 5.0]]]])
    l_cr, l_mf, share = prototype_losses(variates, logits, torch.tensor([[[0, 0, 0]]]), 0.1)
    assert share == 0.0 and float(l_cr.detach()) == 0.0 and float(l_mf.detach()) == 0.0
    (l_cr + l_mf).backward()
    assert variates.grad is not None


# --- clips and training ----------------------------------------------------------------------------

def test_clip_references_are_the_earlier_frames_oldest_first(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    clips = {c.name: c for c in clip_samples("camvid", root, "train", 2)}
    third = clips["0001TP_006750"]
    assert [p.stem for p in third.references] == ["0001TP_006690", "0001TP_006720"]
    second = clips["0001TP_006720"]
    assert [p.stem for p in second.references] == ["0001TP_006690", "0001TP_006690"]  # padded
    first = clips["0001TP_006690"]
    assert [p.stem for p in first.references] == ["0001TP_006690"] * 2  # the frame itself
    folder = make_folder(tmp_path / "folder")
    f_clips = clip_samples("folder", folder, "train", 2)
    c4 = next(c for c in f_clips if c.video == "run1" and c.name.endswith("0004"))
    assert [p.stem for p in c4.references] == ["0002", "0003"]  # unlabeled frames count


@pytest.mark.parametrize("method", ["mrcfa", "sdcpc"])
def test_one_training_step_on_the_folder_fixture(tmp_path: Path, method: str):
    from dcfm_ros.tools.train import main

    root = make_folder(tmp_path / "folder")
    out = tmp_path / method
    args = ["--config", str(REPO / f"config/train/camvid_{method}_efficientnet_lite0.yaml"),
            "--out", str(out), "--set", "dataset.type=folder", "--set", f"dataset.root={root}",
            "--set", "dataset.class_names=null",
            "--set", "dataset.palette=null", "--set", "dataset.val_split=null",
            "--set", "dataset.crop_size=[32,48]", "--set", "model.input_size=[32,48]",
            "--set", "model.pretrained=null", "--set", "train.batch_size=2", "--set", "train.workers=0",
            "--set", "threads=1", "--iterations", "1", "--no-progress"]
    assert main(args) == 0
    model, _ = load_checkpoint(out / "model.safetensors")
    assert isinstance(model, MRCFA if method == "mrcfa" else SDCPC)
    assert model.config.num_classes == 3
    row = (out / "log.csv").read_text().splitlines()[1].split(",")
    assert math.isfinite(float(row[2])) and float(row[3]) > 0  # loss, L_I (the target's CE)
    if method == "sdcpc":
        assert float(row[4]) != 0.0  # L_CR was computed


# --- dcfm-compare and dcfm-evaluate build them from the checkpoint alone ---------------------------

def test_compare_and_evaluate_run_the_peers_from_their_checkpoints(tmp_path: Path):
    import json

    from dcfm_ros.model import build_model
    from dcfm_ros.tools.compare import main as compare_main
    from dcfm_ros.tools.evaluate import main as evaluate_main

    root = make_camvid(tmp_path / "camvid")
    torch.manual_seed(0)
    size = (32, 48)
    dcfm, mrcfa, sdcpc = (tmp_path / f"{n}.safetensors" for n in ("dcfm", "mrcfa", "sdcpc"))
    save_checkpoint(dcfm, build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE,
                                                 size)))
    save_checkpoint(mrcfa, build_mrcfa(config(size), sar=False))
    save_checkpoint(sdcpc, build_sdcpc(config(size)))
    out = tmp_path / "cmp.json"
    assert compare_main(["--root", str(root), "--split", "val", "--dcfm", str(dcfm), "--blend", "",
                         "--policies", "fixed:2", "--peer", f"MRCFA w/o SAR={mrcfa}",
                         "--peer", f"SD-CPC={sdcpc}", "--json", str(out), "--quiet"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    for name in ("MRCFA w/o SAR", "SD-CPC"):
        r = rows[name]
        assert r["policy"] == "fixed:1" and r["keyframe_ratio"] == 1.0 and r["key_ms_p50"] > 0
        assert r["mVC_8"] is not None and r["wIoU"] is not None and r["params_M"] > 3
    assert [m for m in rows if m.startswith("MRCFA")] == ["MRCFA w/o SAR"]  # one row, no policies
    assert compare_main(["--root", str(root), "--dcfm", str(dcfm), "--peer", "nonsense"]) == 2
    report = tmp_path / "eval.json"
    assert evaluate_main(["--model", str(mrcfa), "--dataset", "camvid", "--root", str(root), "--split",
                          "test", "--policies", "fixed:1,fixed:5", "--json", str(report), "--quiet"]) == 0
    rep = json.loads(report.read_text())
    assert [(r["mode"], r["policy"]) for r in rep["results"]] == [("p", "fixed:1")]
    assert any("MRCFA runs the whole network" in n for n in rep["notes"])


@torch.no_grad()
def test_onnxruntime_runs_the_ring_as_graph_inputs_like_torch(peer: MultiFrameModel):
    pytest.importorskip("onnxruntime")
    imgs = frames(5, seed=7)
    torch_eng = engine(peer, 1)
    ort_eng = StreamEngine(peer, FixedInterval(1), device="cpu", backend="onnxruntime", reference_stride=1)
    assert ort_eng.backend.describe().startswith("onnxruntime")
    for f in imgs:
        a, b = torch_eng.process(f), ort_eng.process(f)
        assert abs(a.confidence.mean - b.confidence.mean) < 1e-4
        assert (a.labels == b.labels).mean() > 0.99


def test_a_reduced_frame_gets_labels_at_its_camera_size(peer: MultiFrameModel):
    """The node hands a large camera's JPEG over decoded reduced (engine.process(image, camera)):
    the peers' labels come back at the camera's size, as the logits upsampled there, and a camera
    the image cannot come from is refused."""
    eng = engine(peer)
    img = frames(1, seed=4)[0]
    camera = (2 * SIZE[0], 2 * SIZE[1])
    got = eng.process(img, camera)
    logits, _ = peer.forward_stream(eng.preprocessor.normalize(eng.preprocessor.upload(img)), [])
    assert got.labels.shape == camera
    assert np.array_equal(got.labels, eng.preprocessor.labels(logits, camera))
    with pytest.raises(ValueError, match="camera"):
        eng.process(img, (SIZE[0] // 2, SIZE[1]))
