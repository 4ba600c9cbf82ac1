"""MiT backbone (dcfm_ros.model.mit): split shapes, equivalence with HF SegFormer, weight layouts.

The reference is Hugging Face transformers' SegFormer (test-only dependency), built from a config
with random weights: nothing is downloaded. Its checkpoint files are written with `save_pretrained`,
which produces the same key names as the `nvidia/*` files on the Hub.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dcfm_ros.model.backbone import build_split_encoder
from dcfm_ros.model.mit import MIT_VARIANTS, MiTEncoder, build_mit, load_mit_weights, mit_variant
from dcfm_ros.model.weights import WeightLoadError

H, W = 64, 96  # small input; F_in / F_co at 16 x 24
ATOL = 1e-5


def _eval(split) -> None:
    split.enc_lo.eval()
    split.enc_hi.eval()


# ------------------------------------------------------------------------------------------------
# Shapes of every variant
# ------------------------------------------------------------------------------------------------

EXPECTED = {  # name: (C1, decoder width, (C1..C4), depths)
    "mit-b0": (32, 256, (32, 64, 160, 256), (2, 2, 2, 2)),
    "mit-b1": (64, 256, (64, 128, 320, 512), (2, 2, 2, 2)),
    "mit-b2": (64, 768, (64, 128, 320, 512), (3, 4, 6, 3)),
    "mit-b3": (64, 768, (64, 128, 320, 512), (3, 4, 18, 3)),
    "mit-b4": (64, 768, (64, 128, 320, 512), (3, 8, 27, 3)),
    "mit-b5": (64, 768, (64, 128, 320, 512), (3, 6, 40, 3)),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_variant_builds_with_documented_shapes(name: str) -> None:
    c1, width, dims, depths = EXPECTED[name]
    torch.manual_seed(0)
    split = build_split_encoder(name)  # through the generic entry point the model uses
    _eval(split)
    widths = (split.lo_channels, split.co_channels, split.co_stride, split.ffm_lo_channels)
    assert widths == (c1, width, 4, 32)
    # block counts: enc_lo holds exactly the first stage-1 block, enc_hi the rest
    assert len(split.enc_lo.block1) == 1
    assert [len(split.enc_hi.block1) + 1] + [len(getattr(split.enc_hi, f"block{s}")) for s in (2, 3, 4)] \
        == list(depths)

    h, w = (H, W) if name in ("mit-b0", "mit-b1", "mit-b2") else (32, 32)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        f_in = split.enc_lo(x)
        stages = split.enc_hi.forward_stages(f_in)
        f_co = split.enc_hi(f_in)
    assert f_in.shape == (1, c1, h // 4, w // 4)
    expected = [(1, c, h // r, w // r) for c, r in zip(dims, (4, 8, 16, 32), strict=True)]
    assert [tuple(s.shape) for s in stages] == expected
    assert f_co.shape == (1, width, h // 4, w // 4)
    assert torch.isfinite(f_co).all()
    assert (f_co >= 0).all()  # linear_fuse ends with ReLU


def test_odd_input_size_gives_ceil_quarter_resolution() -> None:
    split = build_mit("mit-b0", None)
    _eval(split)
    with torch.no_grad():
        f_in = split.enc_lo(torch.randn(2, 3, 70, 101))
        f_co = split.enc_hi(f_in)
    assert f_in.shape == (2, 32, 18, 26)
    assert f_co.shape == (2, 256, 18, 26)


def test_bad_inputs_are_named() -> None:
    split = build_mit("mit-b0", None)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        split.enc_lo(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="H and W >= 32"):
        split.enc_lo(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match=r"enc_hi expects F_in of shape \(B, 32"):
        split.enc_hi(torch.randn(1, 64, 16, 16))
    with pytest.raises(ValueError, match="unknown MiT variant 'mit-b9'"):
        build_mit("mit-b9", None)


def test_drop_path_only_in_training_and_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    encoder = MiTEncoder(mit_variant("mit-b0"), drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder(x), encoder(x))
    encoder.train()
    with torch.no_grad():
        a, b = encoder(x), encoder(x)
    assert not torch.allclose(a, b)  # per-sample residual branches dropped at random
    encoder.zero_grad()
    encoder(x).square().mean().backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None]
    assert no_grad == []  # nothing unused (DDP would complain), enc_lo included


def test_product_code_does_not_import_transformers() -> None:
    source = Path(__file__).parents[1] / "dcfm_ros" / "model" / "mit.py"
    tree = ast.parse(source.read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.split(".")[0] in ("transformers", "timm", "mmseg")]


# ------------------------------------------------------------------------------------------------
# Equivalence with Hugging Face SegFormer (MiT-B0 config, random weights)
# ------------------------------------------------------------------------------------------------


def _hf_segformer(**kw) -> nn.Module:
    """HF SegformerForSemanticSegmentation from a config; the defaults are MiT-B0, 256-wide decoder."""
    transformers = pytest.importorskip("transformers")  # test-only reference, never used by dcfm_ros
    return transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=5, **kw))


def _randomise(model: nn.Module) -> None:
    """Perturb every tensor, so zero biases / unit norms cannot hide a wrong mapping."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


def _official_eps(model: nn.Module) -> None:
    """Official MiT uses LayerNorm eps 1e-6 in blocks and stage norms; HF builds them with 1e-5."""
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) and re.search(
            r"(layernorm_before|layernorm_after|layer_norm_1|layer_norm_2|stages\.\d+\.layer_norm|"
            r"encoder\.layer_norm\.\d+)$", name
        ):
            module.eps = 1e-6


# Hub (save_pretrained) key names -> official NVlabs names, written independently of mit.py.
_HUB_TO_OFFICIAL = [
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.layer_norm\.",
     lambda m: f"patch_embed{int(m[1]) + 1}.norm."),
    (r"^segformer\.encoder\.patch_embeddings\.(\d)\.proj\.", lambda m: f"patch_embed{int(m[1]) + 1}.proj."),
    (r"^segformer\.encoder\.layer_norm\.(\d)\.", lambda m: f"norm{int(m[1]) + 1}."),
    (r"^segformer\.encoder\.block\.(\d)\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
]
_HUB_BLOCK_TO_OFFICIAL = {
    "layer_norm_1.": "norm1.", "layer_norm_2.": "norm2.", "attention.self.query.": "attn.q.",
    "attention.self.sr.": "attn.sr.", "attention.self.layer_norm.": "attn.norm.",
    "attention.output.dense.": "attn.proj.", "mlp.dense1.": "mlp.fc1.", "mlp.dense2.": "mlp.fc2.",
    "mlp.dwconv.dwconv.": "mlp.dwconv.dwconv.",
}


def _to_official(hub: dict[str, Tensor], with_decoder: bool) -> dict[str, Tensor]:
    """A synthetic mit_b0.pth (with_decoder=False) or mmseg SegFormer checkpoint (True)."""
    out: dict[str, Tensor] = {}
    for key, t in hub.items():
        if key.startswith("decode_head."):
            continue
        for pattern, build in _HUB_TO_OFFICIAL:
            m = re.match(pattern, key)
            if m:
                new = build(m) + key[m.end():]
                break
        else:
            raise AssertionError(key)
        for a, b in _HUB_BLOCK_TO_OFFICIAL.items():
            new = new.replace(a, b)
        if "attention.self.value." in new:
            continue
        if "attention.self.key." in new:  # official kv = cat(k, v) along the output dim
            value = hub[key.replace(".key.", ".value.")]
            new, t = new.replace("attention.self.key.", "attn.kv."), torch.cat([t, value], dim=0)
        out[new] = t
    assert not [k for k in out if "attention" in k or "layer_norm" in k]
    if not with_decoder:
        out["head.weight"], out["head.bias"] = torch.randn(1000, 256), torch.randn(1000)  # ImageNet head
        return out
    out = {f"backbone.{k}": t for k, t in out.items()}
    for i in range(4):
        for leaf in ("weight", "bias"):
            out[f"decode_head.linear_c{i + 1}.proj.{leaf}"] = hub[f"decode_head.linear_c.{i}.proj.{leaf}"]
    out["decode_head.linear_fuse.conv.weight"] = hub["decode_head.linear_fuse.weight"]
    for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        out[f"decode_head.linear_fuse.bn.{leaf}"] = hub[f"decode_head.batch_norm.{leaf}"]
    out["decode_head.linear_pred.weight"] = hub["decode_head.classifier.weight"]
    out["decode_head.linear_pred.bias"] = hub["decode_head.classifier.bias"]
    return out


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory):
    """HF MiT-B0 SegFormer: its weight files in several layouts and its outputs on one input."""
    torch.manual_seed(0)
    model = _hf_segformer().eval()
    _randomise(model)
    d = tmp_path_factory.mktemp("hf_b0")
    model.save_pretrained(d)  # model.safetensors with the Hub's key names
    hub = load_file(str(d / "model.safetensors"))
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in hub
    torch.save(hub, d / "pytorch_model.bin")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "v5_names.safetensors"))

    _official_eps(model)
    x = torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(2))
    fused = {}
    # the decode head's fused feature: linear_fuse -> batch_norm -> ReLU, before dropout + classifier
    hook = model.decode_head.activation.register_forward_hook(_keep(fused))
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    hook.remove()
    assert len(out.hidden_states) == 4
    return {"dir": d, "hub": hub, "x": x, "stages": out.hidden_states, "f_co": fused["f"]}


def _keep(store: dict[str, Tensor]):
    return lambda module, inputs, output: store.setdefault("f", output.clone())


def _close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin", "v5_names.safetensors"])
def test_hf_weights_reproduce_segformer(hf_b0, filename: str) -> None:
    torch.manual_seed(123)  # different random init than HF: only loaded weights can match
    split = build_mit("mit-b0", hf_b0["dir"] / filename)
    _eval(split)
    x = hf_b0["x"]
    with torch.no_grad():
        f_in = split.enc_lo(x)
        stages = split.enc_hi.forward_stages(f_in)
        f_co = split.enc_hi(f_in)
    for ours, ref in zip(stages, hf_b0["stages"], strict=True):
        _close(ours, ref)
    _close(f_co, hf_b0["f_co"])  # whole enc_hi, decoder up to linear_fuse-BN-ReLU


def test_split_composes_to_full_encoder(hf_b0) -> None:
    encoder = MiTEncoder(mit_variant("mit-b0"))
    load_mit_weights(encoder, hf_b0["dir"] / "model.safetensors")
    encoder.eval()
    x = hf_b0["x"]
    with torch.no_grad():
        split_path = encoder.enc_hi(encoder.enc_lo(x))
        full = encoder(x)
        stages = encoder.forward_stages(x)
    assert torch.equal(split_path, full)
    _close(full, hf_b0["f_co"])
    _close(stages[3], hf_b0["stages"][3])
    # enc_lo / enc_hi own disjoint parameters, so a DCFM state dict has no duplicates
    lo = {id(p) for p in encoder.enc_lo.parameters()}
    assert lo.isdisjoint({id(p) for p in encoder.enc_hi.parameters()})


def test_imagenet_only_hf_file_leaves_decoder_random(hf_b0, tmp_path: Path) -> None:
    # an nvidia/mit-b0 style file: encoder + ImageNet classifier, no decode_head
    hub = {k: v for k, v in hf_b0["hub"].items() if not k.startswith("decode_head.")}
    hub["classifier.weight"], hub["classifier.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "mit-b0.safetensors"
    save_file(hub, str(path))
    torch.manual_seed(5)
    encoder = MiTEncoder(mit_variant("mit-b0"))
    decoder_before = {k: v.clone() for k, v in encoder.enc_hi.decoder.state_dict().items()}
    report = load_mit_weights(encoder, path)
    assert not [k for k in report.loaded if ".decoder." in k]
    for k, v in encoder.enc_hi.decoder.state_dict().items():
        assert torch.equal(v, decoder_before[k]), k
    encoder.eval()
    with torch.no_grad():
        stages = encoder.forward_stages(hf_b0["x"])
    for ours, ref in zip(stages, hf_b0["stages"], strict=True):
        _close(ours, ref)


def test_official_layouts_load_the_same_features(hf_b0, tmp_path: Path) -> None:
    x = hf_b0["x"]
    # NVlabs ImageNet mit_b0.pth: encoder only, kv fused, head.* ignored
    path = tmp_path / "mit_b0.pth"
    torch.save(_to_official(hf_b0["hub"], with_decoder=False), path)
    split = build_mit("mit-b0", path)
    _eval(split)
    with torch.no_grad():
        stages = split.enc_hi.forward_stages(split.enc_lo(x))
    for ours, ref in zip(stages, hf_b0["stages"], strict=True):
        _close(ours, ref)

    # mmseg SegFormer checkpoint ({"state_dict": ...}, backbone. prefix, linear_c1..4, linear_fuse.conv/bn)
    path = tmp_path / "segformer.b0.pth"
    torch.save({"state_dict": _to_official(hf_b0["hub"], with_decoder=True)}, path)
    split = build_mit("mit-b0", path)
    _eval(split)
    with torch.no_grad():
        _close(split.enc_hi(split.enc_lo(x)), hf_b0["f_co"])


# ------------------------------------------------------------------------------------------------
# Files that do not fit fail clearly
# ------------------------------------------------------------------------------------------------


def test_wrong_variant_names_file_and_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    b2 = _hf_segformer(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768)
    b2.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    with pytest.raises(WeightLoadError) as err:
        build_mit("mit-b0", path)
    message = str(err.value)
    assert str(path) in message
    assert "mit-b2" in message and "patch_embed1.proj.weight" in message

    # same widths, other depths: B2 weights into B1
    with pytest.raises(WeightLoadError, match=r"weights are for mit-b2 .* model is mit-b1"):
        build_mit("mit-b1", path)


def test_decoder_width_mismatch_is_a_shape_error(hf_b0, tmp_path: Path) -> None:
    # a B0 encoder with a 768-wide decoder does not fit mit-b0's 256-wide one
    hub = dict(hf_b0["hub"])
    for i, c in enumerate((32, 64, 160, 256)):
        hub[f"decode_head.linear_c.{i}.proj.weight"] = torch.zeros(768, c)
    path = tmp_path / "wide.safetensors"
    save_file(hub, str(path))
    expected = r"shape mismatch.*linear_c\.0\.proj\.weight \(file \(768, 32\)"
    with pytest.raises(WeightLoadError, match=expected):
        build_mit("mit-b0", path)


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ("segformer.encoder.block.1.0.mlp.dense1.weight", "enc_hi.block2.0.mlp.fc1.weight"),
        ("segformer.encoder.block.0.0.attention.self.key.bias",
         "segformer.encoder.block.0.0.attention.self.value.bias"),
        ("decode_head.batch_norm.running_var", "enc_hi.decoder.linear_fuse.bn.running_var"),
    ],
)
def test_missing_key_names_file_and_key(hf_b0, tmp_path: Path, drop: str, expected: str) -> None:
    hub = {k: v for k, v in hf_b0["hub"].items() if k != drop}
    path = tmp_path / "incomplete.safetensors"
    save_file(hub, str(path))
    with pytest.raises(WeightLoadError) as err:
        build_mit("mit-b0", path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_unknown_key_and_foreign_file_are_rejected(hf_b0, tmp_path: Path) -> None:
    hub = dict(hf_b0["hub"])
    hub["segformer.encoder.block.0.0.attention.self.rel_pos"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    save_file(hub, str(path))
    with pytest.raises(WeightLoadError, match=r"unexpected key.*segformer\.encoder\.block\.0\.0\.attention"):
        build_mit("mit-b0", path)

    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(WeightLoadError, match=r"resnet\.pth: not a MiT/SegFormer weight file.*conv1\.weight"):
        build_mit("mit-b0", path)

    with pytest.raises(WeightLoadError, match="not found"):
        build_mit("mit-b0", tmp_path / "absent.safetensors")


def test_variant_table_matches_expectations() -> None:
    for name, (c1, width, dims, depths) in EXPECTED.items():
        v = MIT_VARIANTS[name]
        assert (v.embed_dims[0], v.decoder_dim, v.embed_dims, v.depths) == (c1, width, dims, depths)
        assert v.num_heads == (1, 2, 5, 8) and v.sr_ratios == (8, 4, 2, 1) and v.mlp_ratio == 4
        # every stage's attention heads are C1 wide (32 for B0, 64 for B1-B5), as in SegFormer
        assert [d / h for d, h in zip(v.embed_dims, v.num_heads, strict=True)] == [c1] * 4
