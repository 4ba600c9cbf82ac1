"""TFC and the cosine blend: the blend on hand-made features, L_sim / focal BCE against hand values,
the feature keyframe policy, TFC's stage interface (a non-key frame never runs its deep stages),
its checkpoint, the labeled-pair dataset and training through dcfm-train.

Real PyTorch on tiny random-init EfficientNet-Lite0 models (no pretrained weights needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_fixtures import make_camvid

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.blend import KeyReference, NonkeyBlend, parse_blend
from dcfm_ros.engine.feature_policy import FeatureSimilarity
from dcfm_ros.engine.keyframe import build_policy
from dcfm_ros.engine.specs import parse_policy
from dcfm_ros.model import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    CheckpointError,
    DCFMConfig,
    build_model,
    load_checkpoint,
    read_checkpoint_meta,
    run_deep_units,
    save_checkpoint,
)
from dcfm_ros.model.similarity import cosine_similarity_map, low_similarity_share
from dcfm_ros.model.tfc import TFC, build_tfc, pack_shallow, unpack_shallow
from dcfm_ros.training.losses import focal_bce, same_label_mask, similarity_loss, tfc_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (64, 96)


def config(head: str = "linear", size: tuple[int, int] = SIZE) -> DCFMConfig:
    return DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, size, head=head)


@pytest.fixture(scope="module")
def tfc() -> TFC:
    torch.manual_seed(0)
    return build_tfc(config()).eval()


def pan(n: int, shift: int, seed: int = 0, still: int = 0) -> list[np.ndarray]:
    """n frames of a smooth random scene; frames after `still` pan `shift` pixels per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (8, 24, 3), dtype=np.uint8), (SIZE[1] * 3, SIZE[0]),
                      interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(np.roll(base, shift * max(0, i - still), axis=1)[:, : SIZE[1]])
            for i in range(n)]


# --- the blend -----------------------------------------------------------------------------------

def _ref(feature: torch.Tensor, logits: torch.Tensor) -> KeyReference:
    return KeyReference(sim_feature=torch.zeros(1, 2, 2, 2), feature=feature, logits=logits)


def test_blend_w1_gives_the_keyframes_w0_the_current_and_negative_is_clamped():
    key = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    cur = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])
    raw = SimpleNamespace(model_class="TFC")  # a model whose fused feature is not unit length
    blend = NonkeyBlend(parse_blend("cosine:feature"), raw)  # type: ignore[arg-type]
    # per pixel: w = 1, 0, -0.7 (clamped to 0), 0.25
    sim = torch.tensor([[[[1.0, 0.0], [-0.7, 0.25]]]])
    out = blend.on_feature(sim, _ref(key, key), cur)
    assert torch.allclose(out, torch.tensor([[[[1.0, 20.0], [30.0, 0.25 * 4.0 + 0.75 * 40.0]]]]))
    # the feature target leaves the logits alone, and the logits target the feature
    assert torch.equal(blend.on_logits(sim, _ref(key, key), cur), cur)
    on_logits = NonkeyBlend(parse_blend("cosine:logits"), raw)  # type: ignore[arg-type]
    assert torch.equal(on_logits.on_feature(sim, _ref(key, key), cur), cur)
    assert torch.allclose(on_logits.on_logits(sim, _ref(key, key), cur), out)
    # "none" changes nothing
    off = NonkeyBlend(parse_blend("none"), raw)  # type: ignore[arg-type]
    assert torch.equal(off.on_feature(sim, _ref(key, key), cur), cur)


def test_blend_of_dcfm_unit_features_is_normalised_again():
    """DCFM's F is L2-normalised per pixel; the blend of two unit vectors is renormalised."""
    key = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    cur = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    blend = NonkeyBlend(parse_blend("cosine:feature"), build_model(config("conv")))
    out = blend.on_feature(torch.full((1, 1, 1, 1), 0.5), _ref(key, key), cur)
    assert torch.allclose(out.flatten(), torch.tensor([0.5, 0.5]) / math.sqrt(0.5))
    assert torch.equal(blend.on_feature(torch.ones(1, 1, 1, 1), _ref(key, key), cur), key)


def test_cosine_map_on_hand_vectors():
    # per pixel (channel 0, channel 1): a = (1, 0), (0, 3), (1, 0); b = (2, 0), (-1, 0), (-5, 0)
    a = torch.tensor([[1.0, 0.0, 1.0], [0.0, 3.0, 0.0]]).view(1, 2, 1, 3)
    b = torch.tensor([[2.0, -1.0, -5.0], [0.0, 0.0, 0.0]]).view(1, 2, 1, 3)
    w = cosine_similarity_map(a, b)
    assert w.shape == (1, 1, 1, 3)
    assert torch.allclose(w.flatten(), torch.tensor([1.0, 0.0, -1.0]))
    same = cosine_similarity_map(a, 4 * a)
    assert torch.allclose(same, torch.ones_like(same))
    opposite = cosine_similarity_map(a, -a)
    assert torch.allclose(opposite, -torch.ones_like(opposite))
    assert low_similarity_share(torch.tensor([0.9, 0.79, 0.5, 1.0])) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        cosine_similarity_map(a, b[:, :1])


def test_blend_strength_scales_w():
    key, cur = torch.full((1, 1, 1, 2), 2.0), torch.zeros(1, 1, 1, 2)
    half = NonkeyBlend(parse_blend("cosine:0.5"), SimpleNamespace(model_class="TFC"))  # type: ignore[arg-type]
    # w = 0.5 * clamp(sim): 0.5 * 1 and 0.5 * 0.5
    out = half.on_logits(torch.tensor([[[[1.0, 0.5]]]]), _ref(key, key), cur)
    assert torch.allclose(out.flatten(), torch.tensor([1.0, 0.5]))


@pytest.mark.parametrize(("text", "spec"), [
    ("cosine:prev:0.5", ("logits", "prev", 0.5, "cosine:logits:prev:0.5")),
    ("Cosine:0.25:feature", ("feature", "key", 0.25, "cosine:feature:0.25")),
    ("cosine:key:1", ("logits", "key", 1.0, "cosine:logits")),
])
def test_blend_options_parse_in_any_order(text: str, spec: tuple):
    got = parse_blend(text)
    assert (got.target, got.reference, got.strength, str(got)) == spec
    assert parse_blend(str(got)) == got


@pytest.mark.parametrize("text", ["cos", "cosine:weights", "none:feature", "cosine:feature:x",
                                  "cosine:prev:key", "cosine:0", "cosine:1.5", "cosine:nan",
                                  "cosine:0.5:0.5"])
def test_bad_blend_specs_are_rejected_with_the_valid_list(text: str):
    with pytest.raises(ValueError, match="auto, none, cosine"):
        parse_blend(text)


def test_auto_blend_is_the_models_own():
    assert str(parse_blend("auto", build_model(config("conv")))) == "none"
    assert str(parse_blend("auto", TFC.__new__(TFC))) == "cosine:feature"
    assert str(parse_blend("cosine")) == "cosine:logits"


def test_engine_blend_keeps_the_keyframe_prediction_on_a_still_scene():
    """A still scene: the shallow feature equals the keyframe's (w = 1 everywhere), so a DCFM non-key
    frame with the blend reproduces the keyframe's labels; a moving one lowers w."""
    torch.manual_seed(0)
    model = build_model(config("conv")).eval()
    frames = pan(4, shift=0) + pan(4, shift=9, seed=0)[1:]
    plain = StreamEngine(model, FixedInterval(10), "cpu", nonkey_blend="none")
    blended = StreamEngine(model, FixedInterval(10), "cpu", nonkey_blend="cosine")
    a = [plain.process(f) for f in frames]
    b = [blended.process(f) for f in frames]
    assert [r.is_keyframe for r in b] == [True] + [False] * (len(frames) - 1)
    for r in b[1:4]:  # identical frames
        assert r.low_similarity == 0.0
        assert np.array_equal(r.labels, b[0].labels)
    assert all(r.low_similarity == 0.0 for r in a)  # not computed without the blend
    assert b[-1].low_similarity > 0.0
    # where the scene moved, the blend is a mix, not the keyframe's prediction
    assert not np.array_equal(b[-1].labels, b[0].labels)


def _spy_references(engine: StreamEngine) -> list[tuple]:
    """(reference logits, blended output) of every on_logits call with a similarity map."""
    seen: list[tuple] = []
    inner = engine.blend.on_logits

    def on_logits(sim, ref, logits):  # type: ignore[no-untyped-def]
        out = inner(sim, ref, logits)
        if sim is not None:
            seen.append((ref.logits.clone(), out.clone()))
        return out

    engine.blend.on_logits = on_logits  # type: ignore[method-assign]
    return seen


def test_engine_blend_reference_prev_follows_the_last_output_and_key_stays():
    """reference "prev": each non-key frame blends with the previous frame's blended output (a
    recursive filter); reference "key" keeps blending with the keyframe; a keyframe restarts it."""
    torch.manual_seed(0)
    model = build_model(config("conv")).eval()
    frames = pan(7, shift=5, seed=3)
    prev = StreamEngine(model, FixedInterval(4), "cpu", nonkey_blend="cosine:prev:0.5")
    key = StreamEngine(model, FixedInterval(4), "cpu", nonkey_blend="cosine:0.5")
    seen_prev, seen_key = _spy_references(prev), _spy_references(key)
    rs = [prev.process(f) for f in frames]
    for f in frames:
        key.process(f)
    assert [r.is_keyframe for r in rs] == [True, False, False, False, True, False, False]
    nonkey, nonkey_key = seen_prev, seen_key  # frames 1, 2, 3, 5, 6 (keyframes are not blended)
    assert len(nonkey) == len(nonkey_key) == 5
    # frame 1: both blend with the keyframe; frames 2, 3: "prev" with frame 1's / 2's blended output
    assert torch.equal(nonkey[0][0], nonkey_key[0][0])
    assert torch.equal(nonkey[1][0], nonkey[0][1]) and torch.equal(nonkey[2][0], nonkey[1][1])
    assert not torch.equal(nonkey[1][0], nonkey[0][0])
    # "key" keeps the keyframe's logits as its reference
    assert torch.equal(nonkey_key[1][0], nonkey_key[0][0]) and torch.equal(nonkey_key[2][0], nonkey_key[0][0])
    # after the keyframe at frame 4 "prev" starts again from that keyframe, not from frame 3
    assert torch.equal(nonkey[3][0], nonkey_key[3][0])
    assert torch.equal(nonkey[4][0], nonkey[3][1])


# --- focal BCE / L_sim -------------------------------------------------------------------------------

def test_focal_bce_against_hand_values():
    p = torch.tensor([0.8, 0.8, 0.5, 1.0])
    t = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # -(1 - p_t) log p_t, gamma 1: p_t = 0.8, 0.2, 0.5, 1 (clamped to 1 - 1e-6)
    by_hand = [0.2 * -math.log(0.8), 0.8 * -math.log(0.2), 0.5 * -math.log(0.5), 0.0]
    got = focal_bce(p, t)
    assert got.item() == pytest.approx(sum(by_hand) / 4, rel=1e-5)
    valid = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert focal_bce(p, t, valid).item() == pytest.approx((by_hand[0] + by_hand[1]) / 2, rel=1e-5)
    # gamma 0 is plain BCE
    assert focal_bce(p[:2], t[:2], gamma=0.0).item() == pytest.approx(
        (-math.log(0.8) - math.log(0.2)) / 2, rel=1e-5)
    zero = focal_bce(p.requires_grad_(), t, torch.zeros(4))
    assert zero.item() == 0.0
    zero.backward()


def test_similarity_loss_masks_void_and_compares_labels():
    y_a = torch.tensor([[[0, 1], [2, 255]]])
    y_b = torch.tensor([[[0, 2], [2, 3]]])
    same, valid = same_label_mask(y_a, y_b, (2, 2))
    assert same.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]
    assert valid.flatten().tolist() == [1.0, 1.0, 1.0, 0.0]
    w = torch.tensor([[[[0.9, -0.3], [1.2, 0.0]]]])  # clamped to 0.9, 0, 1, 0
    eps = 1e-6
    by_hand = (0.1 * -math.log(0.9) + eps * -math.log(1 - eps) + eps * -math.log(1 - eps)) / 3
    assert similarity_loss(w, y_a, y_b).item() == pytest.approx(by_hand, rel=1e-4, abs=1e-7)


def test_tfc_losses_backward_reaches_shallow_and_deep_stages(tfc: TFC):
    torch.manual_seed(1)
    model = build_tfc(config()).train()
    x_l, x_u = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    y_l = torch.randint(0, 11, (2, 64, 96))
    y_u = y_l.clone()
    y_u[:, :, :40] = 3
    terms = tfc_losses(model, x_l, y_l, x_u, y_u, lambda_sim=1.0)
    assert terms.l_sim is not None and torch.isfinite(terms.total)
    assert terms.total.item() == pytest.approx(0.5 * (terms.l_i + terms.l_b).item() + terms.l_sim.item(),
                                               rel=1e-5)
    terms.total.backward()
    for name in ("enc_lo.stem.conv_stem.weight", "enc_lo.blocks.0._depthwise_conv.weight",
                 "enc_hi.blocks.0._depthwise_conv.weight", "enc_hi.proj.1.weight", "ffm.proj2.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


# --- the feature policy -------------------------------------------------------------------------------

def test_feature_policy_decisions_min_and_max_on_a_synthetic_sequence():
    policy = FeatureSimilarity(0.2, min_interval=2, max_interval=5)
    # (frames since keyframe, share of pixels with similarity < 0.8) -> keyframe?
    seq = [(1, 0.9, False),  # above THR but before min_interval
           (2, 0.1, False), (3, 0.2, False),  # not above THR (strictly greater needed)
           (4, 0.21, True),  # above THR
           (1, 0.0, False), (2, 0.0, False), (3, 0.0, False), (4, 0.0, False),
           (5, 0.0, True)]  # max_interval
    assert [policy.decide(n, s) for n, s, _ in seq] == [k for _, _, k in seq]
    with pytest.raises(ValueError, match="needs the low-similarity share"):
        policy.decide(3, None)
    for bad in ((1.0, 1, 5), (-0.1, 1, 5), (0.2, 0, 5), (0.2, 4, 3), ("0.2", 1, 5)):
        with pytest.raises(ValueError):
            FeatureSimilarity(*bad)  # type: ignore[arg-type]
    p = build_policy(parse_policy("feature:0.3:2:9"))
    assert isinstance(p, FeatureSimilarity)
    assert (p.threshold, p.min_interval, p.max_interval) == (0.3, 2, 9)
    assert build_policy(parse_policy("feature:0.3")).max_interval == 30
    with pytest.raises(ValueError, match="feature:THR"):
        parse_policy("feature")


def test_feature_policy_in_the_engine_fires_when_the_scene_changes():
    """Still frames never trigger it (share 0) until max_interval; a pan does."""
    torch.manual_seed(0)
    model = build_model(config("conv")).eval()
    engine = StreamEngine(model, FeatureSimilarity(0.05, 1, 6), "cpu")
    still = [engine.process(f) for f in pan(8, shift=0)]
    assert [r.is_keyframe for r in still] == [True, False, False, False, False, False, True, False]
    assert all(r.low_similarity == 0.0 for r in still[1:6])
    engine.reset()
    moving = [engine.process(f) for f in pan(6, shift=12)]
    assert moving[0].is_keyframe and sum(r.is_keyframe for r in moving[1:]) >= 2
    assert any(r.low_similarity > 0.05 for r in moving[1:])


# --- TFC: stage interface, deep stages, checkpoint -------------------------------------------------

def test_pack_unpack_is_exact_for_odd_sizes():
    for h, w in ((5, 7), (6, 8), (1, 1)):
        x1 = torch.randn(1, 24, h, w)
        x2 = torch.randn(1, 40, (h + 1) // 2, (w + 1) // 2)
        b1, b2 = unpack_shallow(pack_shallow(x1, x2))
        assert torch.equal(b1, x1) and torch.equal(b2, x2)
    with pytest.raises(ValueError, match="F_in must be"):
        unpack_shallow(torch.zeros(1, 24, 4, 4))


@torch.no_grad()
def test_tfc_stages_compose_like_the_one_shot_forward(tfc: TFC):
    x = torch.randn(1, 3, 61, 83)  # odd sizes on purpose
    f_in = tfc.enc_lo(x)
    f_co = tfc.enc_hi(f_in)
    assert run_deep_units(tfc.deep_units(), (f_in,))[0].equal(f_co)
    z = tfc.ffm(f_co, f_in)
    assert torch.allclose(tfc.ffm.fuse_with_common(tfc.ffm.common_part(f_co), f_in), z, atol=1e-5)
    assert torch.allclose(tfc.forward_key(x)[0], tfc.head(z))
    # non-key with the keyframe's own shallow feature: w = 1, so z' = z_key
    _, z_nk = tfc.forward_nonkey(x, f_co, f_in_key=f_in, z_key=z)
    assert torch.allclose(z_nk, z, atol=1e-5)


def _count_calls(modules: list[torch.nn.Module]) -> list[int]:
    counts = [0]

    def hook(*_: object) -> None:
        counts[0] += 1
    for m in modules:
        m.register_forward_hook(hook)
    return counts


def test_tfc_non_key_frames_never_run_the_deep_stages():
    torch.manual_seed(0)
    model = build_tfc(config()).eval()
    deep = _count_calls([m for m in model.enc_hi.modules() if not list(m.children())])
    shallow = _count_calls([model.enc_lo])
    engine = StreamEngine(model, FixedInterval(3), "cpu")
    assert str(engine.blend.spec) == "cosine:feature"  # the model's own blend
    leaves = sum(1 for m in model.enc_hi.modules() if not list(m.children()))
    per_key = None
    for i, frame in enumerate(pan(7, shift=4)):
        before = deep[0]
        r = engine.process(frame)
        ran = deep[0] - before
        assert r.is_keyframe == (i % 3 == 0)
        if r.is_keyframe:
            assert ran >= leaves  # every deep module ran (some, e.g. activations, more than once)
            per_key = ran if per_key is None else per_key
            assert ran == per_key
        else:
            assert ran == 0, f"frame {i}: {ran} deep-stage calls on a non-key frame"
            assert r.timings_ms["enc_hi"] == 0.0
    assert shallow[0] == 7


def test_tfc_checkpoint_round_trips_as_tfc(tmp_path: Path, tfc: TFC):
    path = tmp_path / "tfc.safetensors"
    save_checkpoint(path, tfc, {"iteration": 3})
    meta = read_checkpoint_meta(path)
    assert meta["model_class"] == "TFC"
    loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, TFC) and meta["extra"]["iteration"] == 3
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded.forward_key(x)[0], tfc.forward_key(x)[0])
    half = tmp_path / "tfc16.safetensors"
    save_checkpoint(half, tfc, half=True)
    assert isinstance(load_checkpoint(half)[0], TFC)
    dcfm = tmp_path / "dcfm.safetensors"
    save_checkpoint(dcfm, build_model(config("conv")))
    assert read_checkpoint_meta(dcfm)["model_class"] == "DCFM"
    assert type(load_checkpoint(dcfm)[0]).__name__ == "DCFM"


def test_checkpoint_with_an_unknown_model_class_is_refused(tmp_path: Path, tfc: TFC):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = tmp_path / "tfc.safetensors"
    save_checkpoint(good, tfc)
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
    meta["model_class"] = "SegFormer"
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="unknown model_class 'SegFormer'"):
        load_checkpoint(bad)
    # TFC weights under a DCFM label do not load half-way either
    meta["model_class"] = "DCFM"
    save_file(load_file(str(good)), str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)


@torch.no_grad()
def test_tfc_started_from_a_dcfm_has_its_common_feature_as_keyframe_z():
    torch.manual_seed(2)
    dcfm = build_model(config("conv")).eval()
    model = build_tfc(config()).eval()
    model.init_from_dcfm(dcfm)
    x = torch.randn(1, 3, *SIZE)
    assert torch.allclose(model.forward_key(x)[2], dcfm.enc_hi(dcfm.enc_lo(x)), atol=1e-6)
    with pytest.raises(ValueError, match="needs a DCFM"):
        model.init_from_dcfm(build_tfc(config()))


def test_tfc_needs_efficientnet_lite0():
    with pytest.raises(ValueError, match="efficientnet-lite0 only"):
        build_tfc(DCFMConfig("resnet18", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE))


# --- data and training ---------------------------------------------------------------------------------

def test_labeled_pairs_augment_the_neighbour_label_like_the_label(tmp_path: Path):
    from dcfm_ros.data.datasets import dataset_spec, pair_samples
    from dcfm_ros.data.datasets.labeled_pairs import LabeledPairDataset
    from dcfm_ros.data.transforms import PairAugment

    root = make_camvid(tmp_path / "camvid")
    lut = dataset_spec("camvid").lut
    samples = pair_samples("camvid", root, "train")
    # the neighbour is the labeled frame itself: after augmentation both labels must be equal
    selfish = [type(s)(s.name, s.image, s.label, (s.image,), s.video) for s in samples]
    aug = PairAugment(crop_size=(24, 40), scale_range=(0.7, 1.4), rotate_deg=10.0)
    ds = LabeledPairDataset(selfish, lut, aug)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["label"], item["neighbour_label"])
        assert torch.equal(item["image"], item["neighbour"])
    # a real neighbour: a different (panned) label, same crop
    item = LabeledPairDataset(samples, lut, aug)[0]
    assert item["neighbour_label"].shape == item["label"].shape
    missing = [type(s)(s.name, s.image, s.label, (tmp_path / "nowhere.png",), s.video) for s in samples]
    with pytest.raises(ValueError, match="labeled neighbours"):
        LabeledPairDataset(missing, lut, aug)


def test_dcfm_train_builds_and_trains_tfc_and_dcfm_with_lambda_sim(tmp_path: Path):
    from dcfm_ros.tools.train import main

    root = make_camvid(tmp_path / "camvid")
    repo = Path(__file__).resolve().parents[1]
    common = ["--set", f"dataset.root={root}", "--set", "dataset.crop_size=[32,48]",
              "--set", "model.input_size=[32,48]", "--set", "model.pretrained=null",
              "--set", "train.batch_size=2", "--set", "train.workers=0", "--set", "threads=1",
              "--set", "train.eval_interval=0", "--iterations", "2", "--no-progress"]
    out = tmp_path / "tfc"
    assert main(["--config", str(repo / "config/train/camvid_tfc_efficientnet_lite0.yaml"),
                 "--out", str(out), *common]) == 0
    model = load_checkpoint(out / "model.safetensors")[0]
    assert isinstance(model, TFC)
    log = (out / "log.csv").read_text().splitlines()
    assert log[0].endswith("L_sim") and len(log) == 3 and float(log[1].split(",")[-1]) > 0
    out2 = tmp_path / "dcfm"
    assert main(["--config", str(repo / "config/train/camvid_efficientnet_lite0.yaml"), "--out", str(out2),
                 "--set", "loss.lambda_sim=0.5", "--set", "loss.class_weights=null", *common]) == 0
    assert float((out2 / "log.csv").read_text().splitlines()[1].split(",")[-1]) > 0
    assert type(load_checkpoint(out2 / "model.safetensors")[0]).__name__ == "DCFM"


def test_node_parameter_nonkey_blend_is_validated():
    from test_params import DEFAULTS

    from dcfm_ros.node.params import ParameterError, settings_from_values

    assert settings_from_values(dict(DEFAULTS)).nonkey_blend == "auto"
    chosen = settings_from_values({**DEFAULTS, "nonkey_blend": " Cosine:Logits "})
    assert chosen.nonkey_blend == "cosine:logits"
    with pytest.raises(ParameterError, match="nonkey_blend"):
        settings_from_values({**DEFAULTS, "nonkey_blend": "tfc"})


def test_dcfm_compare_writes_the_table_with_every_row(tmp_path: Path):
    from dcfm_ros.tools.compare import main

    root = make_camvid(tmp_path / "camvid")
    torch.manual_seed(0)
    dcfm, tfc_path = tmp_path / "dcfm.safetensors", tmp_path / "tfc.safetensors"
    save_checkpoint(dcfm, build_model(config("conv", (32, 48))))
    save_checkpoint(tfc_path, build_tfc(config("linear", (32, 48))))
    out = tmp_path / "cmp"
    assert main(["--root", str(root), "--split", "val", "--dcfm", str(dcfm), "--tfc", str(tfc_path),
                 "--tfc-untrained", "--blend", "cosine,cosine:logits", "--policies", "fixed:2,feature:0.5",
                 "--json", str(out / "r.json"), "--markdown", str(out / "t.md"), "--quiet"]) == 0
    import json

    rows = json.loads((out / "r.json").read_text())["results"]
    names = [(r["method"], r["policy"]) for r in rows]
    assert names[:2] == [("DCFM, per frame", "fixed:1"), ("TFC, per frame", "fixed:1")]
    for pol in ("fixed:2", "feature:0.5"):
        for m in ("DCFM", "DCFM + cosine blend", "DCFM + cosine:logits blend", "TFC"):
            assert (m, pol) in names
    k2 = next(r for r in rows if r["method"] == "DCFM" and r["policy"] == "fixed:2")
    assert k2["keyframe_ratio"] == 0.5 and k2["key_ms_p50"] > 0 and k2["nonkey_ms_p50"] > 0
    table = (out / "t.md").read_text()
    assert "| TFC | fixed:2 | n/t | n/t | n/t | n/t |" in table
    assert main(["--root", str(root), "--dcfm", str(dcfm), "--policies", "feature:2"]) == 2
    # one policy per process, then joined: the per-frame rows only once
    assert main(["--root", str(root), "--dcfm", str(dcfm), "--policies", "fixed:3", "--no-per-frame",
                 "--json", str(out / "more.json"), "--quiet"]) == 0
    assert main(["--root", str(root), "--dcfm", str(dcfm), "--merge", str(out / "r.json"),
                 str(out / "more.json"), "--markdown", str(out / "all.md")]) == 0
    merged = (out / "all.md").read_text()
    assert merged.count("| DCFM, per frame |") == 1 and "| DCFM | fixed:3 |" in merged
    # a second model under its own label joins the rows of its policy (grouped, not appended)
    assert main(["--root", str(root), "--dcfm", str(dcfm), "--dcfm-label", "DCFM (small)", "--policies",
                 "fixed:2", "--blend", "", "--no-per-frame", "--json", str(out / "small.json"),
                 "--quiet"]) == 0
    assert main(["--root", str(root), "--dcfm", str(dcfm), "--merge", str(out / "r.json"),
                 str(out / "small.json"), "--json", str(out / "grouped.json")]) == 0
    grouped_rows = json.loads((out / "grouped.json").read_text())["results"]
    grouped = [(r["method"], r["policy"]) for r in grouped_rows]
    assert grouped.index(("DCFM (small)", "fixed:2")) < grouped.index(("DCFM", "feature:0.5"))
    assert grouped.index(("DCFM (small)", "fixed:2")) > grouped.index(("TFC", "fixed:2"))
