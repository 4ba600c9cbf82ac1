"""The backbone registry: name -> SplitEncoder (`enc_lo` shallow, `enc_hi` deep/common).

Paper Section III-A: `Enc(x) = Enc_hi(Enc_lo(x))`. A keyframe runs both; a non-key frame runs only
`enc_lo` and reuses the keyframe's common feature. The split itself is described in
`dcfm_ros.model.layers.SplitEncoder`; each backbone module builds one.
"""

from __future__ import annotations

from pathlib import Path

from dcfm_ros.model.efficientnet import build_efficientnet_lite0
from dcfm_ros.model.layers import SplitEncoder
from dcfm_ros.model.mit import build_mit
from dcfm_ros.model.resnet import build_resnet

BACKBONES = (
    "mit-b0", "mit-b1", "mit-b2", "mit-b3", "mit-b4", "mit-b5",
    "resnet18", "resnet50", "resnet101",
    "efficientnet-lite0",
)


def build_split_encoder(name: str, pretrained: str | Path | None = None) -> SplitEncoder:
    """Build backbone `name` split as in the paper's Table I, optionally with local weights."""
    if name.startswith("mit-"):
        return build_mit(name, pretrained)
    if name.startswith("resnet"):
        return build_resnet(name, pretrained)
    if name == "efficientnet-lite0":
        return build_efficientnet_lite0(pretrained)
    raise ValueError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
