"""The split encoder every backbone provides: `enc_lo` (shallow) and `enc_hi` (deep, common).

Paper Section III-A: `Enc(x) = Enc_hi(Enc_lo(x))`. A keyframe runs both; a non-key frame runs only
`enc_lo` and reuses the keyframe's common feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass
class SplitEncoder:
    """One backbone cut in two, with the widths the FFM needs.

    enc_lo: x (B, 3, H, W), normalised -> F_in (B, lo_channels, H / 4, W / 4), raw.
    enc_hi: F_in -> F_co (B, co_channels, H / co_stride, W / co_stride), raw (before Norm).
    ffm_lo_channels: how many leading channels of F_in the FFM concatenates with F_co.
    """

    enc_lo: nn.Module
    enc_hi: nn.Module
    lo_channels: int
    co_channels: int
    co_stride: int
    ffm_lo_channels: int


BACKBONES = (
    "mit-b0", "mit-b1", "mit-b2", "mit-b3", "mit-b4", "mit-b5",
    "resnet18", "resnet50", "resnet101",
    "efficientnet-lite0",
)


def build_split_encoder(name: str, pretrained: str | Path | None = None) -> SplitEncoder:
    """Build backbone `name` split as in the paper's Table I, optionally with local weights."""
    if name.startswith("mit-"):
        from dcfm_ros.model.mit import build_mit

        return build_mit(name, pretrained)
    if name.startswith("resnet"):
        from dcfm_ros.model.resnet import build_resnet

        return build_resnet(name, pretrained)
    if name == "efficientnet-lite0":
        from dcfm_ros.model.efficientnet import build_efficientnet_lite0

        return build_efficientnet_lite0(pretrained)
    raise ValueError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
