"""DCFM model core: config, split encoders, FFM, heads, key/non-key paths, backbone weight loading.

Real PyTorch on tiny inputs (64x96, batch 1). Each backbone must honour the SplitEncoder contract
the engine relies on: F_in at 1/4, F_co at co_stride, a non-key frame never touching enc_hi.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from dcfm_ros.model import (
    CAMVID_CLASSES,
    CAMVID_PALETTE,
    DCFM,
    FFM,
    DCFMConfig,
    WeightLoadError,
    build_model,
    load_into,
    read_state_dict,
)
from dcfm_ros.model.efficientnet import packaged_weights_path
from dcfm_ros.model.resnet import build_resnet

H, W = 64, 96

# (backbone, lo_channels, co_channels, co_stride, ffm_lo_channels)
EXPECTED = [
    ("efficientnet-lite0", 24, 128, 4, 12),
    ("resnet18", 64, 320, 8, 32),
    ("resnet50", 256, 1280, 8, 128),
    ("resnet101", 256, 1280, 8, 128),
]
# The MiT backbone is written separately; exercise it through the same contract when present.
if importlib.util.find_spec("dcfm_ros.model.mit") is not None:
    EXPECTED.append(("mit-b0", 32, 256, 4, 32))


def make_config(backbone: str = "efficientnet-lite0", **kw) -> DCFMConfig:
    return DCFMConfig(backbone=backbone, num_classes=11, class_names=CAMVID_CLASSES,
                      palette=CAMVID_PALETTE, input_size=(H, W), **kw)


def build(backbone: str, **kw) -> DCFM:
    torch.manual_seed(0)
    return build_model(make_config(backbone, **kw)).eval()


# ----------------------------------------------------------------------------------------------- config
def test_config_round_trips_through_json() -> None:
    cfg = make_config(head="linear", dropout=0.2)
    again = DCFMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.palette[0], tuple) and isinstance(again.input_size, tuple)
    # Lists (as YAML/JSON give them) are normalised to tuples.
    listed = DCFMConfig(backbone="resnet18", num_classes=2, class_names=["a", "b"],
                        palette=[[0, 0, 0], [255, 255, 255]], input_size=[8, 8])
    assert listed.palette == ((0, 0, 0), (255, 255, 255)) and listed.input_size == (8, 8)


@pytest.mark.parametrize(("change", "message"), [
    ({"backbone": "vgg16"}, "backbone"),
    ({"class_names": CAMVID_CLASSES[:-1]}, "class_names has 10"),
    ({"palette": CAMVID_PALETTE[:-1]}, "palette has 10"),
    ({"palette": ((256, 0, 0), *CAMVID_PALETTE[1:])}, r"palette\[0\]"),
    ({"palette": ((1, 2), *CAMVID_PALETTE[1:])}, r"palette\[0\]"),
    ({"input_size": (0, 96)}, "input_size"),
    ({"input_size": (64,)}, "input_size"),
    ({"head": "mlp"}, "head"),
    ({"dropout": 1.5}, "dropout"),
    ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"num_classes": 0}, "num_classes"),
])
def test_config_rejects_bad_values(change: dict, message: str) -> None:
    d = make_config().to_dict()
    d.update(change)
    with pytest.raises(ValueError, match=message):
        DCFMConfig.from_dict(d)


def test_config_from_dict_rejects_unknown_and_missing_keys() -> None:
    d = make_config().to_dict()
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        DCFMConfig.from_dict({**d, "colour": 1})
    del d["num_classes"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['num_classes'\]"):
        DCFMConfig.from_dict(d)


# ----------------------------------------------------------------------------------------- backbones
@pytest.mark.parametrize(("backbone", "lo", "co", "stride", "take"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_split_contract(backbone: str, lo: int, co: int, stride: int, take: int) -> None:
    model = build(backbone)
    widths = (model.lo_channels, model.co_channels, model.co_stride, model.ffm_lo_channels)
    assert widths == (lo, co, stride, take)
    torch.manual_seed(1)
    x = torch.randn(1, 3, H, W)
    x_next = torch.randn(1, 3, H, W)

    hi_calls = []
    handle = model.enc_hi.register_forward_hook(lambda *_: hi_calls.append(1))
    with torch.no_grad():
        f_in = model.enc_lo(x)
        logits, f_co, f = model.forward_key(x)
        assert len(hi_calls) == 1
        logits_nk, f_nk = model.forward_nonkey(x_next, f_co)
        assert len(hi_calls) == 1, "a non-key frame must not run enc_hi"
        # The engines' path: the keyframe's cached common part instead of F_co, same answer.
        common = model.ffm.common_part(f_co)
        cached_f = model.ffm.fuse_with_common(common, model.enc_lo(x_next))
        cached_nk = model.head(cached_f)
        assert len(hi_calls) == 1, "a non-key frame must not run enc_hi"
        full_key = model(x)
        full_nonkey = model(x_next, f_co)
    handle.remove()
    assert common.shape == f_co.shape
    torch.testing.assert_close(cached_nk, logits_nk, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached_f, f_nk, atol=1e-5, rtol=1e-5)

    assert f_in.shape == (1, lo, H // 4, W // 4)
    assert f_co.shape == (1, co, H // stride, W // stride)
    assert f.shape == f_co.shape and f_nk.shape == f_co.shape
    assert logits.shape == (1, 11, H // stride, W // stride)
    assert full_key.shape == (1, 11, H, W)
    # F is unit length per pixel (Norm after the FFM); F_co is returned raw (not normalised).
    torch.testing.assert_close(f.norm(dim=1), torch.ones(1, H // stride, W // stride))
    torch.testing.assert_close(f_nk.norm(dim=1), torch.ones(1, H // stride, W // stride))
    assert not torch.allclose(f_co.norm(dim=1), torch.ones(()))
    # forward() is the two paths plus the upsampling.
    up = nn.functional.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(full_key, up)
    torch.testing.assert_close(full_nonkey,
                               nn.functional.interpolate(logits_nk, size=(H, W), mode="bilinear",
                                                         align_corners=False))
    # The non-key path with the frame's own F_co is exactly the key path; with another frame's
    # F_co it differs (F_co is really used, and F_in really comes from the current frame).
    with torch.no_grad():
        same, _ = model.forward_nonkey(x, f_co)
        other, _ = model.forward_nonkey(x_next, model.forward_key(x_next)[1])
    torch.testing.assert_close(same, logits)
    assert not torch.allclose(other, logits_nk)
    # The four stages callable one by one give the same answer (engine timing breakdown).
    with torch.no_grad():
        staged = model.head(model.ffm(model.enc_hi(model.enc_lo(x)), model.enc_lo(x)))
    torch.testing.assert_close(staged, logits)


def test_backward_through_both_paths() -> None:
    model = build("efficientnet-lite0").train()
    x = torch.randn(2, 3, H, W)
    logits_k, f_co, f_k = model.forward_key(x)
    logits_n, f_n = model.forward_nonkey(x.flip(0), f_co)
    (logits_k.mean() + logits_n.mean() + (f_k - f_n).pow(2).mean()).backward()
    for name in ("enc_lo", "enc_hi", "ffm", "head"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_only_plain_batchnorm() -> None:
    for backbone in ("efficientnet-lite0", "resnet18"):
        model = build(backbone)
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
        assert any(type(m) is nn.BatchNorm2d for m in model.enc_hi.modules())


def test_forward_nonkey_rejects_wrong_f_co() -> None:
    model = build("efficientnet-lite0")
    x = torch.randn(1, 3, H, W)
    with pytest.raises(ValueError, match=r"f_co must be \(B, 128"):
        model.forward_nonkey(x, torch.zeros(1, 64, 16, 24))


# ----------------------------------------------------------------------------------------- FFM, head, input
def test_ffm_matches_definition() -> None:
    torch.manual_seed(0)
    ffm = FFM(co_channels=16, lo_channels=8, lo_take=4).eval()
    f_co = torch.randn(2, 16, 4, 6)
    f_in = torch.randn(2, 8, 8, 12)
    with torch.no_grad():
        out = ffm(f_co, f_in)
        n_co = nn.functional.normalize(f_co, dim=1)
        n_in = nn.functional.normalize(f_in, dim=1)
        n_in = nn.functional.interpolate(n_in, size=(4, 6), mode="bilinear", align_corners=False)[:, :4]
        ref = nn.functional.normalize(ffm.relu(ffm.bn(ffm.conv(torch.cat([n_co, n_in], 1)))), dim=1)
        # Norm on both inputs: the scale of either feature does not matter.
        scaled = ffm(f_co * 7.0, f_in * 0.01)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(scaled, out)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 4, 6))
    assert ffm.conv.bias is not None and ffm.conv.in_channels == 20 and ffm.conv.out_channels == 16


# (co_channels, lo_channels, lo_take, co_stride) of the FFM in each backbone's DCFM (see EXPECTED).
FFM_SHAPES = {
    "efficientnet-lite0": (128, 24, 12, 4),
    "resnet18": (320, 64, 32, 8),
    "mit-b0": (256, 32, 32, 4),
}


def _ffm_with_real_bn(co: int, lo: int, take: int) -> FFM:
    """An FFM whose BN is not the identity (random affine and running stats), so the split is
    checked through a real per-channel affine, not just the conv."""
    ffm = FFM(co_channels=co, lo_channels=lo, lo_take=take)
    with torch.no_grad():
        ffm.bn.weight.uniform_(0.5, 1.5)
        ffm.bn.bias.normal_(0.0, 0.2)
        ffm.bn.running_mean.normal_(0.0, 0.1)
        ffm.bn.running_var.uniform_(0.5, 2.0)
        ffm.conv.bias.normal_(0.0, 0.1)  # init zeroes it; the bias must land in the common part
    return ffm


@pytest.mark.parametrize("backbone", list(FFM_SHAPES))
def test_ffm_split_equals_forward(backbone: str) -> None:
    co, lo, take, stride = FFM_SHAPES[backbone]
    torch.manual_seed(0)
    ffm = _ffm_with_real_bn(co, lo, take).eval()
    f_co = torch.randn(2, co, H // stride, W // stride) * 5.0  # raw enc_hi scale, not unit length
    f_in = torch.randn(2, lo, H // 4, W // 4)  # resized inside when co_stride != 4 (resnet18)
    f_in_next = torch.randn(2, lo, H // 4, W // 4)
    with torch.no_grad():
        common = ffm.common_part(f_co)
        kept = common.clone()
        want, want_next = ffm(f_co, f_in), ffm(f_co, f_in_next)
        got, got_next = ffm.fuse_with_common(common, f_in), ffm.fuse_with_common(common, f_in_next)
        # the F_co half by hand: W_co * Norm(F_co) + bias
        w_co = ffm.conv.weight[:, :co, 0, 0]
        by_hand = torch.einsum("oc,bchw->bohw", w_co, nn.functional.normalize(f_co, dim=1))
        by_hand = by_hand + ffm.conv.bias.view(1, -1, 1, 1)
    assert common.shape == f_co.shape
    torch.testing.assert_close(common, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_next, want_next, atol=1e-5, rtol=1e-5)  # one cache, many frames
    assert torch.equal(common, kept), "fuse_with_common must not modify the cached common part"
    assert not torch.allclose(want, want_next)  # F_in really enters the fused feature
    # Same in train mode (BN on batch statistics) and differentiable w.r.t. the same parameters.
    ffm.train()
    want_t = ffm(f_co, f_in)
    got_t = ffm.fuse_with_common(ffm.common_part(f_co), f_in)
    torch.testing.assert_close(got_t, want_t, atol=1e-5, rtol=1e-5)
    g_want = torch.autograd.grad(want_t.pow(3).sum(), ffm.conv.weight)[0]
    g_got = torch.autograd.grad(got_t.pow(3).sum(), ffm.conv.weight)[0]
    torch.testing.assert_close(g_got, g_want, atol=1e-4, rtol=1e-4)
    # The split reads the conv's parameters: the state dict keeps its names.
    assert set(ffm.state_dict()) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                     "bn.running_var", "bn.num_batches_tracked"}


def test_ffm_split_rejects_wrong_shapes() -> None:
    ffm = FFM(co_channels=16, lo_channels=8, lo_take=4).eval()
    with pytest.raises(ValueError, match=r"common_part: f_co must be \(B, 16"):
        ffm.common_part(torch.zeros(1, 20, 4, 6))
    common = ffm.common_part(torch.randn(1, 16, 4, 6))
    with pytest.raises(ValueError, match=r"common must be \(B, 16"):
        ffm.fuse_with_common(torch.zeros(1, 20, 4, 6), torch.zeros(1, 8, 8, 12))
    with pytest.raises(ValueError, match=r"f_in must be \(1, 8"):
        ffm.fuse_with_common(common, torch.zeros(1, 4, 8, 12))
    with pytest.raises(ValueError, match=r"f_in must be \(1, 8"):
        ffm.fuse_with_common(common, torch.zeros(2, 8, 8, 12))


def test_ffm_float16_stays_finite_on_zero_pixels() -> None:
    ffm = FFM(co_channels=8, lo_channels=4, lo_take=2).eval().half()
    with torch.no_grad():
        out = ffm(torch.zeros(1, 8, 2, 2, dtype=torch.float16), torch.full((1, 4, 2, 2), 300.0).half())
    assert torch.isfinite(out).all()


def test_heads() -> None:
    conv = build("efficientnet-lite0", head="conv", dropout=0.3).head
    kinds = [type(m) for m in conv.modules()]
    assert nn.BatchNorm2d in kinds and nn.Dropout2d in kinds and conv.conv.bias is None
    assert conv.drop.p == pytest.approx(0.3) and conv.cls.out_channels == 11
    linear = build("efficientnet-lite0", head="linear").head
    assert [type(m) for m in linear.children()] == [nn.Dropout2d, nn.Conv2d]
    assert linear.cls.in_channels == 128 and linear.cls.out_channels == 11


def test_normalize_input() -> None:
    model = build("efficientnet-lite0")
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    a = model.normalize_input(img)
    b = model.normalize_input(img.float() / 255.0)
    torch.testing.assert_close(a, b)
    mean = torch.tensor(model.config.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.std).view(1, 3, 1, 1)
    torch.testing.assert_close(a, (img.float() / 255.0 - mean) / std)
    assert a.dtype == torch.float32
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.normalize_input(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="uint8 or a float"):
        model.normalize_input(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


# ----------------------------------------------------------------------------------------- weights
def test_efficientnet_package_weights_load_completely() -> None:
    path = packaged_weights_path()
    file_state = read_state_dict(path)
    torch.manual_seed(0)
    random_model = build_model(make_config())
    model = build_model(make_config(), pretrained="package").eval()
    # Every backbone tensor came from the file (load_into raises on any missing key), e.g. the stem,
    # a shallow block and the last block.
    torch.testing.assert_close(model.enc_lo.conv_stem.weight, file_state["_conv_stem.weight"])
    torch.testing.assert_close(model.enc_lo.blocks[2]._project_conv.weight,
                               file_state["_blocks.2._project_conv.weight"])
    torch.testing.assert_close(model.enc_hi.blocks[12]._bn2.running_var,
                               file_state["_blocks.15._bn2.running_var"])
    assert not torch.allclose(random_model.enc_lo.conv_stem.weight, model.enc_lo.conv_stem.weight)

    # enc_lo is exactly the package network's stem + blocks 0-2 with those weights.
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(file_state)
    ref.eval()
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        y = ref._swish(ref._bn0(ref._conv_stem(x)))
        for block in ref._blocks[:3]:
            y = block(y)
        torch.testing.assert_close(model.enc_lo(x), y)

    # The same file given by path loads the same weights.
    by_path = build_model(make_config(), pretrained=path)
    torch.testing.assert_close(by_path.enc_hi.blocks[0]._expand_conv.weight,
                               model.enc_hi.blocks[0]._expand_conv.weight)


def _torchvision_layout(backbone_seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(backbone_seed)
    enc = build_resnet("resnet18")
    state = {k: v.clone() for k, v in enc.enc_lo.state_dict().items()}
    state.update({k: v.clone() for k, v in enc.enc_hi.state_dict().items() if k.startswith("layer")})
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    return state


def test_resnet_loads_torchvision_layout_and_ignores_fc(tmp_path: Path) -> None:
    state = _torchvision_layout(3)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    enc = build_resnet("resnet18", pretrained=path)
    torch.testing.assert_close(enc.enc_lo.conv1.weight, state["conv1.weight"])
    torch.testing.assert_close(enc.enc_hi.layer4[1].bn2.running_mean, state["layer4.1.bn2.running_mean"])
    torch.testing.assert_close(enc.enc_hi.layer3[0].downsample[0].weight,
                               state["layer3.0.downsample.0.weight"])
    # Same through safetensors.
    from safetensors.torch import save_file

    st_path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    enc2 = build_resnet("resnet18", pretrained=st_path)
    torch.testing.assert_close(enc2.enc_hi.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])


def test_weight_file_with_wrong_key_or_shape_fails_naming_file_and_key(tmp_path: Path) -> None:
    state = _torchvision_layout(4)
    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    bad_key = tmp_path / "extra_key.pth"
    torch.save(extra, bad_key)
    with pytest.raises(WeightLoadError,
                       match=re.escape(str(bad_key)) + r".*unexpected.*layer5\.0\.conv1\.weight"):
        build_resnet("resnet18", pretrained=bad_key)

    missing = dict(state)
    del missing["layer2.1.bn1.weight"]
    bad_missing = tmp_path / "missing_key.pth"
    torch.save(missing, bad_missing)
    with pytest.raises(WeightLoadError, match=r"missing.*enc_hi\.layer2\.1\.bn1\.weight"):
        build_resnet("resnet18", pretrained=bad_missing)

    shape = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save(shape, bad_shape)
    with pytest.raises(WeightLoadError, match=re.escape(str(bad_shape)) + r".*shape.*enc_lo\.conv1\.weight"):
        build_resnet("resnet18", pretrained=bad_shape)

    # The effnet loader uses the same checks: a file in the wrong layout names the offending keys.
    with pytest.raises(WeightLoadError, match=re.escape(str(bad_shape)) + ".*missing"):
        build_model(make_config(), pretrained=bad_shape)


def test_weights_module_errors(tmp_path: Path) -> None:
    nowhere = tmp_path / "nope.pth"
    with pytest.raises(WeightLoadError, match=re.escape(str(nowhere))):
        read_state_dict(nowhere)
    with pytest.raises(WeightLoadError, match="no packaged weights"):
        build_resnet("resnet50", pretrained="package")
    # A pickle holding an arbitrary object is refused (weights_only), not executed.
    pickled = tmp_path / "object.pth"
    torch.save({"w": torch.zeros(1), "cfg": nn.ReLU()}, pickled)
    with pytest.raises(WeightLoadError, match="cannot read weight file"):
        read_state_dict(pickled)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01" * 50)
    with pytest.raises(WeightLoadError, match=re.escape(str(garbage))):
        read_state_dict(garbage)

    # A failed load leaves the module untouched; wrappers and "module." prefixes are understood.
    lin = nn.Linear(2, 2)
    before = lin.weight.clone()
    with pytest.raises(WeightLoadError, match=r"src\.pth.*shape.*weight"):
        load_into(lin, {"weight": torch.ones(3, 2), "bias": torch.ones(2)}, "src.pth")
    torch.testing.assert_close(lin.weight, before)
    wrapped = tmp_path / "wrapped.pth"
    inner = {"module.weight": torch.ones(2, 2), "module.bias": torch.ones(2)}
    torch.save({"state_dict": inner, "epoch": 3}, wrapped)
    report = load_into(lin, read_state_dict(wrapped), str(wrapped))
    assert sorted(report.loaded) == ["bias", "weight"] and torch.equal(lin.weight, torch.ones(2, 2))
