"""MiT / SegFormer weight files -> dcfm_ros.model.mit.MiTEncoder: the key renaming (official NVlabs,
mmseg and Hugging Face layouts), the key/value merge, and the variant check. Kept apart from the
network so mit.py reads as the architecture; it knows the encoder only by its parameter names.

Every file is first renamed to the official names (HF -> official), then mapped onto the encoder
(official -> ours).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcfm_ros.model.weights import LoadReport, WeightLoadError, load_into, read_state_dict

log = logging.getLogger(__name__)

# Official names, for reference:
#   patch_embed{s}.proj/norm, block{s}.{j}.norm1/norm2, block{s}.{j}.attn.q/kv/proj/sr/norm,
#   block{s}.{j}.mlp.fc1/fc2/dwconv.dwconv, norm{s} (s = 1..4), head.* (ImageNet classifier);
#   an mmseg SegFormer adds backbone. and decode_head.linear_c{s}.proj, decode_head.linear_fuse.conv/bn,
#   decode_head.linear_pred / conv_seg (classifier).
# HF names (stage i = s - 1), checkpoint files on the Hub / transformers >= 5 in memory:
#   encoder.patch_embeddings.{i}.proj|layer_norm      stages.{i}.patch_embeddings.proj|layer_norm
#   encoder.block.{i}.{j}.<part>                        stages.{i}.blocks.{j}.<part>
#   encoder.layer_norm.{i}                              stages.{i}.layer_norm
#   decode_head.linear_c.{i}.proj                       decode_head.linear_projections.{i}.proj
#   decode_head.linear_fuse (conv), decode_head.batch_norm, decode_head.classifier (ignored)
# with an optional "segformer." prefix, and keys and values in two Linears (k + v = official kv).

# HF part of a block -> official part. Two spellings each: Hub files / transformers >= 5.
_HF_BLOCK_PARTS: dict[str, str] = {
    "layer_norm_1": "norm1",
    "layernorm_before": "norm1",
    "layer_norm_2": "norm2",
    "layernorm_after": "norm2",
    "attention.self.query": "attn.q",
    "attention.q_proj": "attn.q",
    "attention.self.key": "attn.k",  # k and v are concatenated into attn.kv below
    "attention.k_proj": "attn.k",
    "attention.self.value": "attn.v",
    "attention.v_proj": "attn.v",
    "attention.self.sr": "attn.sr",
    "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.sequence_reduction.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.dense1": "mlp.fc1",
    "mlp.fc1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
    "mlp.fc2": "mlp.fc2",
}

# A renaming rule builds the new key from the regex match (None: a part this module does not know).
_Rename = Callable[[re.Match[str]], str | None]

# (pattern on an HF key without its model prefix, builder of the official key from the match)
_HF_RULES: list[tuple[re.Pattern[str], _Rename]] = [
    (re.compile(r"^(?:encoder\.block\.(\d+)\.|stages\.(\d+)\.blocks\.)(\d+)\.(.+)\.(weight|bias)$"),
     lambda m: (f"block{int(m[1] or m[2]) + 1}.{m[3]}.{_HF_BLOCK_PARTS[m[4]]}.{m[5]}"
                if m[4] in _HF_BLOCK_PARTS else None)),
    (re.compile(r"^(?:encoder\.patch_embeddings\.(\d+)|stages\.(\d+)\.patch_embeddings)\.(proj|layer_norm)\.(.+)$"),
     lambda m: f"patch_embed{int(m[1] or m[2]) + 1}.{'proj' if m[3] == 'proj' else 'norm'}.{m[4]}"),
    (re.compile(r"^(?:encoder\.layer_norm\.(\d+)|stages\.(\d+)\.layer_norm)\.(weight|bias)$"),
     lambda m: f"norm{int(m[1] or m[2]) + 1}.{m[3]}"),
    (re.compile(r"^decode_head\.(?:linear_c|linear_projections)\.(\d+)\.proj\.(weight|bias)$"),
     lambda m: f"decode_head.linear_c{int(m[1]) + 1}.proj.{m[2]}"),
    (re.compile(r"^decode_head\.linear_fuse\.weight$"), lambda m: "decode_head.linear_fuse.conv.weight"),
    (re.compile(r"^decode_head\.batch_norm\.(.+)$"), lambda m: f"decode_head.linear_fuse.bn.{m[1]}"),
]

# Official key -> key in MiTEncoder. Block 0 of stage 1 is enc_lo, everything else enc_hi.
_OFFICIAL_RULES: list[tuple[re.Pattern[str], _Rename]] = [
    (re.compile(r"^(patch_embed1\..+|block1\.0\..+)$"), lambda m: f"enc_lo.{m[1]}"),
    (re.compile(r"^((?:patch_embed[2-4]|block[1-4]|norm[1-4])\..+)$"), lambda m: f"enc_hi.{m[1]}"),
    (re.compile(r"^decode_head\.linear_c([1-4])\.proj\.(weight|bias)$"),
     lambda m: f"enc_hi.decoder.linear_c.{int(m[1]) - 1}.proj.{m[2]}"),
    (re.compile(r"^decode_head\.linear_fuse\.(conv|bn)\.(.+)$"),
     lambda m: f"enc_hi.decoder.linear_fuse.{m[1]}.{m[2]}"),
]
# Parts named differently inside a block: (official, ours).
_OFFICIAL_PART_RENAMES = ((".attn.norm.", ".attn.sr_norm."), (".mlp.dwconv.dwconv.", ".mlp.dwconv."))

# Classifiers this encoder does not have (official head, mmseg linear_pred/conv_seg, HF classifiers).
_IGNORED = re.compile(r"^(head|classifier|decode_head\.(linear_pred|conv_seg|classifier))\.")

# Decoder tensors a file may leave out (HF/old files without BN's step counter; unused in eval).
_OPTIONAL = ("enc_hi.decoder.linear_fuse.bn.num_batches_tracked",)


def _detect_layout(state: Mapping[str, Tensor], source: str) -> tuple[str, str]:
    """Return (layout, model prefix): "official" or "hf", e.g. ("hf", "segformer.")."""
    probes = (
        ("official", re.compile(r"^(.*?)patch_embed1\.proj\.weight$")),
        ("hf", re.compile(r"^(.*?)encoder\.patch_embeddings\.0\.proj\.weight$")),
        ("hf", re.compile(r"^(.*?)stages\.0\.patch_embeddings\.proj\.weight$")),
    )
    for layout, pattern in probes:
        for key in state:
            m = pattern.match(key)
            if m:
                return layout, m[1]
    sample = ", ".join(sorted(state)[:5]) or "(no tensors)"
    raise WeightLoadError(
        f"{source}: not a MiT/SegFormer weight file: no key patch_embed1.proj.weight (official NVlabs "
        f"mit_b*.pth) or encoder.patch_embeddings.0.proj.weight / stages.0.patch_embeddings.proj.weight "
        f"(Hugging Face SegFormer); first keys: {sample}"
    )


def _hf_to_official(state: Mapping[str, Tensor], prefix: str, source: str) -> dict[str, Tensor]:
    """Rename HF keys to official ones and merge each block's key/value Linears into `kv`."""
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # official key -> file key, for error messages
    for key, value in state.items():
        name = key[len(prefix):] if prefix and key.startswith(prefix) else key
        new = None
        for pattern, build in _HF_RULES:
            m = pattern.match(name)
            if m:
                new = build(m)
                break
        # Unknown keys keep their file name, so the load reports them as unexpected.
        new = new or key
        out[new] = value
        origin[new] = key
    # official attn.kv = [k; v] along the output dimension (it is reshaped as (2, heads, d) later)
    for k_key in [k for k in out if ".attn.k." in k]:
        v_key = k_key.replace(".attn.k.", ".attn.v.")
        if v_key not in out:
            raise WeightLoadError(f"{source}: key {origin[k_key]} has no matching value tensor "
                                  f"(a {_partner(origin[k_key])} key is missing)")
        out[k_key.replace(".attn.k.", ".attn.kv.")] = torch.cat([out.pop(k_key), out.pop(v_key)], dim=0)
    for v_key in [k for k in out if ".attn.v." in k]:
        raise WeightLoadError(f"{source}: key {origin[v_key]} has no matching key tensor "
                              f"(a {_partner(origin[v_key])} key is missing)")
    return out


def _partner(hf_key: str) -> str:
    """The HF name of the other half of a key/value pair, for error messages."""
    for a, b in ((".self.key.", ".self.value."), (".k_proj.", ".v_proj.")):
        if a in hf_key:
            return hf_key.replace(a, b)
        if b in hf_key:
            return hf_key.replace(b, a)
    return hf_key


def _official_to_ours(name: str) -> str | None:
    """Official key -> MiTEncoder key; None for classifier weights; unchanged if unknown."""
    if _IGNORED.match(name):
        return None
    for pattern, build in _OFFICIAL_RULES:
        m = pattern.match(name)
        if m:
            new = build(m)
            assert new is not None  # the official rules always build a name
            for old, ours in _OFFICIAL_PART_RENAMES:
                new = new.replace(old, ours)
            return new
    return name


def _check_variant(state: Mapping[str, Tensor], v: Any, source: str, known: Mapping[str, Any]) -> None:
    """Fail early, and say which variant the file holds, when its widths or depths differ."""
    dims, depths = [], []
    for s in range(1, 5):
        w = state.get(f"patch_embed{s}.proj.weight")
        dims.append(int(w.shape[0]) if w is not None else None)
        blocks = {int(m[1]) for k in state if (m := re.match(rf"^block{s}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    if tuple(dims) == v.embed_dims and tuple(depths) == v.depths:
        return
    guess = [n for n, o in known.items() if o.embed_dims == tuple(dims) and o.depths == tuple(depths)]
    holds = guess[0] if guess else "an unknown variant"
    shape = state.get("patch_embed1.proj.weight")
    raise WeightLoadError(
        f"{source}: weights are for {holds} (embed dims {tuple(dims)}, depths {tuple(depths)}) but the model "
        f"is {v.name} (embed dims {v.embed_dims}, depths {v.depths}); e.g. key patch_embed1.proj.weight has "
        f"shape {tuple(shape.shape) if shape is not None else None}, model expects "
        f"({v.embed_dims[0]}, 3, {v.patch_sizes[0]}, {v.patch_sizes[0]})"
    )


def load_mit_state(encoder: nn.Module, variant: Any, path: str | Path,
                   known: Mapping[str, Any] | None = None) -> LoadReport:
    """Load a local MiT/SegFormer weight file into `encoder` (a MiTEncoder of `variant`); the layout is
    detected from the keys. `known`: the variants by name, to say which one a mismatching file holds.

    - official NVlabs ImageNet `mit_b*.pth` (or an mmseg SegFormer checkpoint): encoder weights
      (+ decoder linear_c / linear_fuse if present); the ImageNet `head.*` is ignored.
    - Hugging Face `nvidia/mit-b*` or `nvidia/segformer-b*-finetuned-*` (`model.safetensors` or
      `pytorch_model.bin`; Hub names or transformers >= 5 names): encoder, and for a finetuned
      checkpoint also decode_head.linear_c / linear_fuse / batch_norm; the classifier is ignored.
    A file without decoder weights leaves the decoder at its random initialisation. Any other
    difference (variant, missing or unknown key, shape) raises WeightLoadError naming the file.
    """
    source = str(path)
    state = read_state_dict(path)
    layout, prefix = _detect_layout(state, source)
    if layout == "hf":
        official = _hf_to_official(state, prefix, source)
    else:
        official = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): t for k, t in state.items()}
    _check_variant(official, variant, source, known or {})

    ours: dict[str, Tensor] = {}
    for name, tensor in official.items():
        new = _official_to_ours(name)
        if new is not None:
            ours[new] = tensor
    has_decoder = any(k.startswith("enc_hi.decoder.") for k in ours)
    allow_missing = _OPTIONAL if has_decoder else ("enc_hi.decoder.",)
    report = load_into(encoder, ours, source, allow_missing_prefixes=allow_missing)
    log.info("%s: loaded %d tensors (%s layout) into %s%s", source, len(report.loaded), layout,
             variant.name, "" if has_decoder else "; decoder has no weights there, left random")
    return report
