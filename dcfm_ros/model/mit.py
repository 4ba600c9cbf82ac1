"""MiT (Mix Transformer, SegFormer's encoder) with the SegFormer all-MLP decoder, split for DCFM.

SegFormer (Xie et al., 2021): four stages, each an overlapping patch embedding (strided conv +
LayerNorm) followed by transformer blocks (efficient self-attention whose keys/values are spatially
reduced by a strided conv, then a Mix-FFN with a depthwise 3x3 conv in place of position
embeddings) and a LayerNorm. Stage i runs at 1/4, 1/8, 1/16, 1/32 of the input. The all-MLP
decoder projects each stage to `decoder_dim` channels, upsamples to 1/4, concatenates (stage 4
first) and fuses with a 1x1 conv-BN-ReLU (`linear_fuse`).

DCFM split (paper Table I "Enc_lo = 1st ViT block", and the authors' code):
    enc_lo = stage-1 patch embedding + the FIRST block of stage 1
             x (B, 3, H, W) -> F_in (B, C1, H/4, W/4), raw (no stage LayerNorm)
    enc_hi = the other stage-1 blocks + stage-1 LayerNorm + stages 2-4 + decoder up to linear_fuse
             F_in -> F_co (B, decoder_dim, H/4, W/4)
The classifier of the SegFormer decoder is not here: DCFM's own head classifies the fused feature.
(H/4 means ceil(H/4) for sizes not divisible by 4, as the 7x7/stride-4 conv with padding 3 gives.)

Module and parameter names follow the official NVlabs code (patch_embed1, block1.0.attn.q/kv/sr,
norm1, ...) so an official checkpoint maps onto this one by a prefix; Hugging Face SegFormer
checkpoints are renamed by dcfm_ros/model/mit_weights.py (`load_mit_weights`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.layers import DeepUnit, SplitEncoder
from dcfm_ros.model.mit_weights import load_mit_state
from dcfm_ros.model.weights import LoadReport

# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiTVariant:
    """Hyper-parameters of one MiT size (SegFormer paper, Table 6 / official configs)."""

    name: str
    embed_dims: tuple[int, int, int, int]  # C1..C4, channels of stages 1-4
    depths: tuple[int, int, int, int]  # transformer blocks per stage
    decoder_dim: int  # SegFormer all-MLP decoder width = F_co channels
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)  # key/value spatial reduction per stage
    mlp_ratio: int = 4  # Mix-FFN hidden width = mlp_ratio * C
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)  # overlapping patch embedding kernels
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)


MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit-b0": MiTVariant("mit-b0", (32, 64, 160, 256), (2, 2, 2, 2), decoder_dim=256),
    "mit-b1": MiTVariant("mit-b1", (64, 128, 320, 512), (2, 2, 2, 2), decoder_dim=256),
    "mit-b2": MiTVariant("mit-b2", (64, 128, 320, 512), (3, 4, 6, 3), decoder_dim=768),
    "mit-b3": MiTVariant("mit-b3", (64, 128, 320, 512), (3, 4, 18, 3), decoder_dim=768),
    "mit-b4": MiTVariant("mit-b4", (64, 128, 320, 512), (3, 8, 27, 3), decoder_dim=768),
    "mit-b5": MiTVariant("mit-b5", (64, 128, 320, 512), (3, 6, 40, 3), decoder_dim=768),
}

# The FFM concatenates F_co with the first 32 channels of F_in for every MiT (authors' code):
# all of B0's 32 stage-1 channels, half of the 64 of B1-B5.
FFM_LO_CHANNELS = 32

# LayerNorm eps of the block norms (norm1/norm2) and the stage norms in the official MiT configs
# (`partial(nn.LayerNorm, eps=1e-6)`). The patch-embedding and spatial-reduction norms are built
# with the PyTorch default (1e-5) there, and are here too.
LAYER_NORM_EPS = 1e-6

# Smallest input side: the stage-1 map (side/4) must cover stage 1's 8x8 key/value reduction.
MIN_INPUT_SIDE = 32


def mit_variant(name: str) -> MiTVariant:
    """The variant called `name` ("mit-b0".."mit-b5"), or ValueError listing the valid names."""
    try:
        return MIT_VARIANTS[name]
    except KeyError:
        valid = ", ".join(MIT_VARIANTS)
        raise ValueError(f"unknown MiT variant {name!r}; expected one of: {valid}") from None


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def tokens_to_map(x: Tensor, H: int, W: int) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) feature map (row-major tokens, as the patch embedding)."""
    B, _, C = x.shape
    return x.transpose(1, 2).reshape(B, C, H, W)


def map_to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with prob. p."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        # one Bernoulli draw per sample, broadcast over tokens and channels; rescaled so that the
        # expectation equals the eval-mode (identity) output
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class OverlapPatchEmbed(nn.Module):
    """Overlapped patch merging: strided conv with kernel > stride, then LayerNorm over channels."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stride: int) -> None:
        super().__init__()
        pad = patch_size // 2  # overlapping windows: kernel > stride, output = ceil(input / stride)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=stride, padding=pad)
        self.norm = nn.LayerNorm(dim)  # default eps 1e-5, as in the official code

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        # x: (B, C_in, H_in, W_in) -> (B, C, H, W) with H = H_in / stride
        x = self.proj(x)
        H, W = x.shape[-2:]
        return self.norm(map_to_tokens(x)), H, W  # (B, H*W, C)


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a map reduced R x R by a strided conv.

    Cost O(N^2 / R^2) instead of O(N^2) for N = H*W tokens (SegFormer eq. 2, sequence reduction).
    """

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        # keys and values in one Linear: output [k (dim) | v (dim)], the official layout
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.sr_norm = nn.LayerNorm(dim)  # "attn.norm" in the official code; default eps

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        B, N, C = x.shape  # x: (B, N = H*W, C)
        d = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, d).transpose(1, 2)  # (B, heads, N, d)
        if self.sr_ratio > 1:
            x_r = self.sr(tokens_to_map(x, H, W))  # (B, C, H/R, W/R)
            x_r = self.sr_norm(map_to_tokens(x_r))  # (B, N' = N/R^2, C)
        else:
            x_r = x  # (B, N' = N, C)
        kv = self.kv(x_r).reshape(B, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4)  # (2, B, heads, N', d)
        k, v = kv.unbind(0)  # each (B, heads, N', d)
        # softmax(q k^T / sqrt(d)) v, fused kernel where available
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C), heads concatenated
        return self.proj(out)


class MixFFN(nn.Module):
    """Mix-FFN: Linear -> depthwise 3x3 conv (positional information) -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        x = self.fc1(x)  # (B, N, 4C)
        x = map_to_tokens(self.dwconv(tokens_to_map(x, H, W)))  # (B, N, 4C)
        return self.fc2(self.act(x))  # (B, N, C)


class Block(nn.Module):
    """One MiT transformer block (pre-norm): x + attn(norm1(x)), then x + mix_ffn(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = EfficientSelfAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, H: int, W: int) -> Tensor:
        # x: (B, H*W, C) -> (B, H*W, C)
        x = x + self.drop_path(self.attn(self.norm1(x), H, W))
        return x + self.drop_path(self.mlp(self.norm2(x), H, W))


def _stage_blocks(v: MiTVariant, stage: int, indices: range, dpr: list[float]) -> list[Block]:
    """Blocks `indices` of `stage` (0-based); dpr holds the drop-path rate of every block in order."""
    first = sum(v.depths[:stage])
    return [
        Block(v.embed_dims[stage], v.num_heads[stage], v.sr_ratios[stage], v.mlp_ratio, dpr[first + j])
        for j in indices
    ]


# --------------------------------------------------------------------------------------------------
# SegFormer all-MLP decoder, up to its linear_fuse (no classifier)
# --------------------------------------------------------------------------------------------------


class LinearProjection(nn.Module):
    """Per-stage channel projection of the decoder ("MLP" in SegFormer): C_i -> decoder_dim."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]  # x: (B, C_i, h, w)
        x = self.proj(map_to_tokens(x))  # (B, h*w, E)
        return tokens_to_map(x, h, w)  # (B, E, h, w)


class ConvBNReLU(nn.Module):
    """1x1 conv (no bias; BN follows) -> BatchNorm -> ReLU: SegFormer's `linear_fuse`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MLPDecoder(nn.Module):
    """Project the four stages to E channels, upsample to stage 1's size, concat, fuse to E."""

    def __init__(self, embed_dims: tuple[int, ...], decoder_dim: int) -> None:
        super().__init__()
        self.linear_c = nn.ModuleList([LinearProjection(c, decoder_dim) for c in embed_dims])
        self.linear_fuse = ConvBNReLU(len(embed_dims) * decoder_dim, decoder_dim)

    def forward(self, stages: list[Tensor]) -> Tensor:
        # stages: (B, C1, H1, W1), (B, C2, H1/2, W1/2), (B, C3, H1/4, W1/4), (B, C4, H1/8, W1/8)
        size = stages[0].shape[-2:]
        projected = []
        for feat, linear in zip(stages, self.linear_c, strict=True):
            e = linear(feat)  # (B, E, h_i, w_i)
            if e.shape[-2:] != size:
                e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)  # (B, E, H1, W1)
            projected.append(e)
        # SegFormer concatenates deepest first: [c4, c3, c2, c1] -> (B, 4E, H1, W1)
        return self.linear_fuse(torch.cat(projected[::-1], dim=1))  # (B, E, H1, W1)


# --------------------------------------------------------------------------------------------------
# The split encoder
# --------------------------------------------------------------------------------------------------


class MiTEncLo(nn.Module):
    """enc_lo: stage-1 patch embedding + first stage-1 block. (B,3,H,W) -> F_in (B,C1,H/4,W/4)."""

    def __init__(self, v: MiTVariant, dpr: list[float]) -> None:
        super().__init__()
        self.patch_embed1 = OverlapPatchEmbed(3, v.embed_dims[0], v.patch_sizes[0], v.strides[0])
        self.block1 = nn.ModuleList(_stage_blocks(v, 0, range(1), dpr))  # official block1.0

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"enc_lo expects a (B, 3, H, W) image batch, got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIDE:
            raise ValueError(f"MiT needs H and W >= {MIN_INPUT_SIDE}, got {tuple(x.shape[-2:])}")
        t, H, W = self.patch_embed1(x)  # (B, H/4 * W/4, C1)
        for block in self.block1:
            t = block(t, H, W)
        return tokens_to_map(t, H, W).contiguous()  # F_in: (B, C1, H/4, W/4)


class MiTEncHi(nn.Module):
    """enc_hi: rest of MiT + the all-MLP decoder up to linear_fuse. F_in -> F_co (B,E,H/4,W/4)."""

    def __init__(self, v: MiTVariant, dpr: list[float]) -> None:
        super().__init__()
        self.in_channels = v.embed_dims[0]
        # Stage 1 without its first block. A ModuleDict keyed "1", "2", ... keeps the official block
        # numbers in parameter names (enc_hi.block1.1.* == official block1.1.*).
        rest = range(1, v.depths[0])
        self.block1 = nn.ModuleDict(dict(zip(map(str, rest), _stage_blocks(v, 0, rest, dpr), strict=True)))
        self.norm1 = nn.LayerNorm(v.embed_dims[0], eps=LAYER_NORM_EPS)
        for s in (1, 2, 3):  # stages 2-4 (0-based 1-3), named as in the official code
            setattr(self, f"patch_embed{s + 1}",
                    OverlapPatchEmbed(v.embed_dims[s - 1], v.embed_dims[s], v.patch_sizes[s], v.strides[s]))
            setattr(self, f"block{s + 1}", nn.ModuleList(_stage_blocks(v, s, range(v.depths[s]), dpr)))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(v.embed_dims[s], eps=LAYER_NORM_EPS))
        self.decoder = MLPDecoder(v.embed_dims, v.decoder_dim)

    def forward_stages(self, f_in: Tensor) -> list[Tensor]:
        """F_in -> the four MiT stage outputs (after each stage's LayerNorm), as feature maps.

        Returns [(B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16), (B, C4, H/32, W/32)].
        """
        if f_in.ndim != 4 or f_in.shape[1] != self.in_channels:
            raise ValueError(f"enc_hi expects F_in of shape (B, {self.in_channels}, H/4, W/4), "
                             f"got {tuple(f_in.shape)}")
        H, W = f_in.shape[-2:]
        t = map_to_tokens(f_in)  # (B, H*W, C1)
        for block in self.block1.values():
            t = block(t, H, W)
        x = tokens_to_map(self.norm1(t), H, W)  # stage 1: (B, C1, H/4, W/4)
        outs = [x]
        for s in (2, 3, 4):
            t, H, W = getattr(self, f"patch_embed{s}")(x)  # (B, H*W, C_s), H, W halved
            for block in getattr(self, f"block{s}"):
                t = block(t, H, W)
            x = tokens_to_map(getattr(self, f"norm{s}")(t), H, W)  # (B, C_s, H, W)
            outs.append(x)
        return outs

    def forward(self, f_in: Tensor) -> Tensor:
        return self.decoder(self.forward_stages(f_in))  # F_co: (B, E, H/4, W/4)

    def deep_units(self) -> list[DeepUnit]:
        """forward in pieces, one MiT block each (the decoder is the last piece).

        State between pieces: (*finished stage outputs, current stage's map (B, C_s, H_s, W_s)); a
        stage's LayerNorm runs in the first piece of the next stage (or in the decoder piece).
        """
        units = [DeepUnit(f"block1.{key}", self._block_unit(block), [block])
                 for key, block in self.block1.items()]
        for s in (2, 3, 4):
            norm_prev, embed = getattr(self, f"norm{s - 1}"), getattr(self, f"patch_embed{s}")
            blocks = getattr(self, f"block{s}")
            start = self._stage_start_unit(norm_prev, embed, blocks[0])
            units.append(DeepUnit(f"patch_embed{s}+block{s}.0", start, [norm_prev, embed, blocks[0]]))
            units += [DeepUnit(f"block{s}.{k}", self._block_unit(block), [block])
                      for k, block in enumerate(blocks) if k > 0]
        units.append(DeepUnit("norm4+decoder", self._decoder_unit(), [self.norm4, self.decoder]))
        return units

    @staticmethod
    def _block_unit(block: Block) -> Callable[..., tuple[Tensor, ...]]:
        def run(*state: Tensor) -> tuple[Tensor, ...]:
            *done, x = state
            H, W = x.shape[-2:]
            return (*done, tokens_to_map(block(map_to_tokens(x), H, W), H, W))
        return run

    @staticmethod
    def _stage_start_unit(norm_prev: nn.LayerNorm, embed: OverlapPatchEmbed,
                          block: Block) -> Callable[..., tuple[Tensor, ...]]:
        def run(*state: Tensor) -> tuple[Tensor, ...]:
            *done, x = state
            H, W = x.shape[-2:]
            finished = tokens_to_map(norm_prev(map_to_tokens(x)), H, W)
            t, H, W = embed(finished)
            return (*done, finished, tokens_to_map(block(t, H, W), H, W))
        return run

    def _decoder_unit(self) -> Callable[..., tuple[Tensor, ...]]:
        def run(*state: Tensor) -> tuple[Tensor, ...]:
            *done, x = state
            H, W = x.shape[-2:]
            return (self.decoder([*done, tokens_to_map(self.norm4(map_to_tokens(x)), H, W)]),)
        return run


class MiTEncoder(nn.Module):
    """enc_lo and enc_hi together: the unit weights are loaded into, and a full-frame path."""

    def __init__(self, variant: MiTVariant, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        self.variant = variant
        n = sum(variant.depths)
        # stochastic depth rate grows linearly over all blocks, 0 for the first (official rule)
        dpr = [drop_path_rate * i / (n - 1) for i in range(n)]
        self.enc_lo = MiTEncLo(variant, dpr)
        self.enc_hi = MiTEncHi(variant, dpr)
        self.apply(_init_weights)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Image (B, 3, H, W) -> the four stage outputs (see MiTEncHi.forward_stages)."""
        return self.enc_hi.forward_stages(self.enc_lo(x))

    def forward(self, x: Tensor) -> Tensor:
        """Image (B, 3, H, W) -> F_co (B, E, H/4, W/4), i.e. enc_hi(enc_lo(x))."""
        return self.enc_hi(self.enc_lo(x))


def _init_weights(m: nn.Module) -> None:
    """Random init as in the official MiT (normal(0, 0.02) Linear, fan-out normal conv)."""
    if isinstance(m, nn.Linear):
        # The official code calls trunc_normal_(std=.02) with the default bounds +-2, i.e. +-100 std:
        # the same distribution as a plain normal, which is several times faster to draw (B5 has 85M).
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def load_mit_weights(encoder: MiTEncoder, path: str | Path) -> LoadReport:
    """Load a local MiT/SegFormer weight file (official NVlabs, mmseg or Hugging Face layout, detected
    from the keys) into `encoder`; dcfm_ros.model.mit_weights says what is taken from which file.
    Any mismatch raises WeightLoadError naming the file."""
    return load_mit_state(encoder, encoder.variant, path, MIT_VARIANTS)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def build_mit(
    name: str, pretrained: str | Path | None = None, *, drop_path_rate: float = 0.1
) -> SplitEncoder:
    """Build MiT `name` ("mit-b0".."mit-b5") split into enc_lo / enc_hi, with optional local weights.

    enc_lo: (B, 3, H, W) -> F_in (B, C1, H/4, W/4); C1 = 32 (B0) or 64 (B1-B5).
    enc_hi: F_in -> F_co (B, E, H/4, W/4); E = decoder width, 256 (B0, B1) or 768 (B2-B5).
    pretrained: a local official or Hugging Face weight file (see `load_mit_weights`); never downloaded.
    drop_path_rate: stochastic depth of the last block (0 for the first); only active in training.
    """
    variant = mit_variant(name)
    encoder = MiTEncoder(variant, drop_path_rate=drop_path_rate)
    if pretrained is not None:
        load_mit_weights(encoder, pretrained)
    return SplitEncoder(
        enc_lo=encoder.enc_lo,
        enc_hi=encoder.enc_hi,
        lo_channels=variant.embed_dims[0],
        co_channels=variant.decoder_dim,
        co_stride=4,
        ffm_lo_channels=FFM_LO_CHANNELS,
    )
