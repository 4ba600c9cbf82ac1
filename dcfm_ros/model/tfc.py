"""TFC (Temporal Feature Correlation, ../shared/seeds/tfc-paper.txt) on EfficientNet-Lite0: the
comparison method beside DCFM, with the same stage interface so the engine runs it unchanged.

Paper (Sec. 3, SegFormer decoder, eqs. 1-7):
    keyframe k:  (x1, x2, x3, x4) = encoder(I_k);  z_k = FC(concat(resize(FC(x))));  y_k = head(z_k)
    non-key t:   x1, x2 recomputed, x3, x4 reused from k;  z_t = the same decoder on (x1_t, x2_t, x3_k, x4_k)
                 w = clamp(cos(x^2_k, x^2_t), 0, 1) per pixel on the projected, resized level-2 feature;
                 z'_t = w * z_k + (1 - w) * z_t;  y_t = head(z'_t)
The blend itself is the engine's (`dcfm_ros.engine.blend`, `TFC.default_blend`), the same code DCFM's
`nonkey_blend: cosine` option runs; this module provides the network and `similarity_feature`.

Mapped onto the stage names the engine calls (enc_lo, enc_hi, ffm.common_part / fuse_with_common, head):
- enc_lo = stem + blocks 0-4 (levels 1 and 2: 24 ch at 1/4, 40 ch at 1/8). Its output F_in is ONE
  tensor at 1/4: [x1 | x2 repeated 2x2], 64 ch. Nearest 2x repetition is undone exactly by taking
  every second pixel, so enc_hi and the decoder get x2 back bit for bit, and every engine schedule and
  backend keeps handing a single tensor around.
- enc_hi = blocks 5-15 (levels 3, 4) + their decoder projections, resized to 1/4: F_co = [x^3 | x^4],
  256 ch. This is what a non-key frame reuses.
- ffm = the rest of the decoder: projections of levels 1, 2 and the fuse (1x1 conv, BN, ReLU). Its
  conv over the four projected levels splits like DCFM's FFM: common_part(F_co) = W_34 * F_co is the
  keyframe-only half, fuse_with_common adds W_12 * [x^1, x^2] of the current frame.
- head = SegFormer's linear prediction (dropout + 1x1 conv) by default (config.head).

Departures from the paper: EfficientNet-Lite0 instead of MiT (the only ImageNet weights here), so
levels 1-2 are Lite0's stride-4 and stride-8 stages; no sparse MSDA (the non-key frame is reuse +
interpolation only, the paper's "linear interpolation" row); trained on CamVid's 1 Hz labeled pairs
(neighbour as keyframe, labeled frame as non-key) instead of VSPW clips of 4 frames.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.dcfm import DCFM, build_head
from dcfm_ros.model.efficientnet import (
    BN_MOMENTUM,
    DROP_CONNECT_RATE,
    FUSE_WIDTH,
    NUM_BLOCKS,
    EfficientNetLo,
    load_efficientnet_lite0_weights,
    packaged_weights_path,
)
from dcfm_ros.model.layers import DeepUnit, init_new_layers
from dcfm_ros.model.similarity import blend_by_similarity, cosine_similarity_map, resize_to

SHALLOW_BLOCKS = 5  # blocks 0-4: the stride-4 (24 ch) and stride-8 (40 ch) stages, levels 1 and 2
LEVEL_CHANNELS = (24, 40, 112, 320)  # x1 @1/4, x2 @1/8, x3 @1/16, x4 @1/32
X3_BLOCK = 10  # package block index that ends level 3
F_IN_CHANNELS = LEVEL_CHANNELS[0] + LEVEL_CHANNELS[1]
CO_CHANNELS = 2 * FUSE_WIDTH  # [x^3 | x^4]
Z_CHANNELS = FUSE_WIDTH


def pack_shallow(x1: Tensor, x2: Tensor) -> Tensor:
    """[x1 | x2 repeated 2x2, cropped to x1's size] -> one (B, 64, H/4, W/4) tensor."""
    h, w = x1.shape[-2:]
    up = x2.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w]
    return torch.cat([x1, up.to(x1.dtype)], dim=1)


def unpack_shallow(f_in: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of pack_shallow: (x1, x2). Exact: SAME-padded stride 2 gives ceil(h/2) rows, and
    rows 0, 2, 4, ... of the repetition are x2's rows in order."""
    if f_in.dim() != 4 or f_in.shape[1] != F_IN_CHANNELS:
        raise ValueError(f"TFC: F_in must be (B, {F_IN_CHANNELS}, h, w) as returned by enc_lo, "
                         f"got shape {tuple(f_in.shape)}")
    c1 = LEVEL_CHANNELS[0]
    return f_in[:, :c1], f_in[:, c1:, ::2, ::2]


class TFCLo(nn.Module):
    """enc_lo: stem + blocks 0-4 -> packed F_in (levels 1 and 2)."""

    def __init__(self, stem: EfficientNetLo, level2: list[nn.Module], rates: list[float]) -> None:
        super().__init__()
        self.stem = stem  # stem + blocks 0-2, exactly DCFM's enc_lo on Lite0 (-> x1)
        self.blocks = nn.ModuleList(level2)
        self.drop_rates = rates

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.stem(x)
        x2 = x1
        for block, rate in zip(self.blocks, self.drop_rates, strict=True):
            x2 = block(x2, drop_connect_rate=rate)
        return pack_shallow(x1, x2)


class TFCHi(nn.Module):
    """enc_hi: blocks 5-15 from x2, projections of x3 and x4 to 1/4 -> F_co = [x^3 | x^4]."""

    def __init__(self, blocks: list[nn.Module], rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = rates
        self.x3_index = X3_BLOCK - SHALLOW_BLOCKS
        # proj[0], proj[1]: levels 3 and 4 ("proj" marks them decoder for the optimizer's 2x lr)
        self.proj = nn.ModuleList(nn.Conv2d(c, FUSE_WIDTH, kernel_size=1) for c in LEVEL_CHANNELS[2:])
        init_new_layers(self.proj)

    def forward(self, f_in: Tensor) -> Tensor:
        x = unpack_shallow(f_in)[1]
        x3 = x
        for i, (block, rate) in enumerate(zip(self.blocks, self.drop_rates, strict=True)):
            x = block(x, drop_connect_rate=rate)
            if i == self.x3_index:
                x3 = x
        return self._project(f_in, x3, x)

    def _project(self, f_in: Tensor, x3: Tensor, x4: Tensor) -> Tensor:
        size = f_in.shape[-2:]
        return torch.cat([resize_to(self.proj[0](x3), size), resize_to(self.proj[1](x4), size)], dim=1)

    def deep_units(self) -> list[DeepUnit]:
        """forward in pieces. State: (F_in, [x3], x); F_in rides along for the 1/4 output size."""
        units = [DeepUnit(f"blocks.{i}", self._block_unit(i), [b]) for i, b in enumerate(self.blocks)]
        units.append(DeepUnit("proj", self._project_unit, [self.proj]))
        return units

    def _project_unit(self, f_in: Tensor, x3: Tensor, x4: Tensor) -> tuple[Tensor]:
        return (self._project(f_in, x3, x4),)

    def _block_unit(self, i: int) -> Callable[..., tuple[Tensor, ...]]:
        block, rate = self.blocks[i], self.drop_rates[i]

        def run(*state: Tensor) -> tuple[Tensor, ...]:
            if i == 0:
                (f_in,) = state
                return (f_in, block(unpack_shallow(f_in)[1], drop_connect_rate=rate))
            *kept, x = state
            if i - 1 == self.x3_index:
                kept.append(x)
            return (*kept, block(x, drop_connect_rate=rate))
        return run


class TFCDecoder(nn.Module):
    """The per-frame half of SegFormer's decoder: project x1, x2, fuse with the keyframe's [x^3 | x^4].

    fuse conv over [x^1, x^2, x^3, x^4] = W_12 * [x^1, x^2] + W_34 * [x^3, x^4] (no bias; BN follows),
    so `common_part` caches W_34 * F_co once per keyframe, as DCFM's FFM does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proj1 = nn.Conv2d(LEVEL_CHANNELS[0], FUSE_WIDTH, kernel_size=1)
        self.proj2 = nn.Conv2d(LEVEL_CHANNELS[1], FUSE_WIDTH, kernel_size=1)
        self.conv = nn.Conv2d(4 * FUSE_WIDTH, Z_CHANNELS, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(Z_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        init_new_layers(self)
        self.co_channels = CO_CHANNELS

    def shallow(self, f_in: Tensor) -> tuple[Tensor, Tensor]:
        """(x^1, x^2): levels 1 and 2 projected, at 1/4. x^2 is TFC's similarity feature (l = 2)."""
        x1, x2 = unpack_shallow(f_in)
        return self.proj1(x1), resize_to(self.proj2(x2), x1.shape[-2:])

    def forward(self, f_co: Tensor, f_in: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(torch.cat([*self.shallow(f_in), f_co.to(f_in.dtype)], 1))))

    def common_part(self, f_co: Tensor) -> Tensor:
        if f_co.dim() != 4 or f_co.shape[1] != CO_CHANNELS:
            raise ValueError(f"TFC common_part: F_co must be (B, {CO_CHANNELS}, h, w) as returned by "
                             f"enc_hi, got shape {tuple(f_co.shape)}")
        return F.conv2d(f_co, self.conv.weight[:, 2 * FUSE_WIDTH:])

    def fuse_with_common(self, common: Tensor, f_in: Tensor) -> Tensor:
        if common.dim() != 4 or common.shape[1] != Z_CHANNELS:
            raise ValueError(f"TFC fuse_with_common: common must be (B, {Z_CHANNELS}, h, w) as returned "
                             f"by common_part, got shape {tuple(common.shape)}")
        w12 = self.conv.weight[:, : 2 * FUSE_WIDTH]
        z = F.conv2d(torch.cat(self.shallow(f_in), 1), w12.to(f_in.dtype))
        # No cast when the dtypes agree: a no-op Cast on a graph input renames it in the ONNX export.
        return self.relu(self.bn(z + (common if common.dtype == z.dtype else common.to(z.dtype))))


class TFC(nn.Module):
    """TFC network; the attributes the engine and trainer use match DCFM's (enc_lo, enc_hi, ffm, head,
    config, normalize_input, deep_units, forward_key / forward_nonkey)."""

    model_class = "TFC"  # written into checkpoints (dcfm_ros.model.checkpoint)
    default_blend = "cosine:feature"  # eq. 7 on z: part of the method, so the engine turns it on
    unit_feature = False  # z is a ReLU output of any length

    def __init__(self, config: DCFMConfig, pretrained: str | Path | None = None,
                 drop_connect_rate: float = DROP_CONNECT_RATE) -> None:
        super().__init__()
        if config.backbone != "efficientnet-lite0":
            raise ValueError(f"TFC is built on efficientnet-lite0 only, got backbone {config.backbone!r}")
        from efficientnet_lite_pytorch import EfficientNet

        self.config = config
        net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
        blocks = list(net._blocks)
        if len(blocks) != NUM_BLOCKS:
            raise RuntimeError(f"efficientnet_lite_pytorch built {len(blocks)} blocks, expected {NUM_BLOCKS}")
        rates = [drop_connect_rate * i / NUM_BLOCKS for i in range(NUM_BLOCKS)]
        stem = EfficientNetLo(net._conv_stem, net._bn0, blocks[:3], rates[:3])
        self.enc_lo = TFCLo(stem, blocks[3:SHALLOW_BLOCKS], rates[3:SHALLOW_BLOCKS])
        self.enc_hi = TFCHi(blocks[SHALLOW_BLOCKS:], rates[SHALLOW_BLOCKS:])
        for m in (*self.enc_lo.modules(), *self.enc_hi.modules()):
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = BN_MOMENTUM
        self.lo_channels = F_IN_CHANNELS
        self.co_channels = CO_CHANNELS
        self.co_stride = 4
        self.ffm = TFCDecoder()
        self.head = build_head(config.head, Z_CHANNELS, config.num_classes, config.dropout)
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        if pretrained is not None:
            self._load_backbone(packaged_weights_path() if str(pretrained) == "package" else Path(pretrained))

    def init_from_dcfm(self, src: nn.Module) -> None:
        """Take a Lite0 DCFM's backbone and all-MLP decoder (projections + fuse), so that this TFC's
        keyframe z equals that DCFM's F_co; the head stays as it is (new)."""
        if getattr(src, "model_class", "DCFM") != "DCFM" or src.config.backbone != "efficientnet-lite0":
            raise ValueError("TFC.init_from_dcfm needs a DCFM on efficientnet-lite0")
        lo, hi = src.enc_lo, src.enc_hi
        cut = SHALLOW_BLOCKS - 3  # DCFM's enc_lo ends after block 2, TFC's after block 4
        pairs = [(self.enc_lo.stem, lo), *zip(self.enc_lo.blocks, hi.blocks[:cut], strict=True),
                 *zip(self.enc_hi.blocks, hi.blocks[cut:], strict=True),
                 (self.ffm.proj1, hi.proj[0]), (self.ffm.proj2, hi.proj[1]),
                 (self.enc_hi.proj[0], hi.proj[2]), (self.enc_hi.proj[1], hi.proj[3]),
                 (self.ffm.conv, hi.fuse[0]), (self.ffm.bn, hi.fuse[1])]
        for dst, part in pairs:
            dst.load_state_dict(part.state_dict(), strict=True)

    def _load_backbone(self, path: Path) -> None:
        # The package layout maps blocks 0-2 to DCFM's enc_lo and 3-15 to its enc_hi; load through
        # views of those two halves, then the blocks are the very modules TFC holds.
        lo = nn.Module()
        lo.conv_stem, lo.bn0 = self.enc_lo.stem.conv_stem, self.enc_lo.stem.bn0
        lo.blocks = self.enc_lo.stem.blocks
        hi = nn.Module()
        hi.blocks = nn.ModuleList([*self.enc_lo.blocks, *self.enc_hi.blocks])
        load_efficientnet_lite0_weights(lo, hi, path)

    # The same input normalisation as DCFM (it reads only pixel_mean / pixel_std).
    normalize_input = DCFM.normalize_input

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        """x^2, the feature TFC's cosine similarity compares (eq. 5, l = 2), at 1/4."""
        return self.ffm.shallow(f_in)[1]

    def deep_units(self) -> list[DeepUnit]:
        return self.enc_hi.deep_units()

    def forward_key(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keyframe: (logits at 1/4, F_co, z)."""
        f_in = self.enc_lo(x)
        f_co = self.enc_hi(f_in)
        z = self.ffm(f_co, f_in)
        return self.head(z), f_co, z

    def forward_nonkey(self, x: Tensor, f_co: Tensor, f_in_key: Tensor | None = None,
                       z_key: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Non-key frame with the keyframe's F_co; with its F_in and z also the blend of eq. 7."""
        f_in = self.enc_lo(x)
        z = self.ffm(f_co, f_in)
        if f_in_key is not None and z_key is not None:
            w = cosine_similarity_map(self.similarity_feature(f_in_key), self.similarity_feature(f_in))
            z = blend_by_similarity(w.clamp(0.0, 1.0), z_key, z)
        return self.head(z), z

    def forward(self, x: Tensor) -> Tensor:
        """Every frame a keyframe: logits upsampled to x's size."""
        logits = self.forward_key(x)[0]
        return logits if logits.shape[-2:] == x.shape[-2:] else resize_to(logits, x.shape[-2:])


def build_tfc(config: DCFMConfig, pretrained: str | Path | None = None) -> TFC:
    """TFC on EfficientNet-Lite0; `pretrained` as in build_model ("package" = ImageNet weights)."""
    return TFC(config, pretrained)
