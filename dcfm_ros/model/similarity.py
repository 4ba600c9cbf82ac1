"""TFC's similarity and blend (eqs. 5-7), shared by the TFC model, the trainer's L_sim and the
engine's `nonkey_blend`: w = cos(a, b) per pixel over channels, z' = w * z_key + (1 - w) * z_t.

The shallow feature a model compares is `similarity_feature(model, F_in)`: a model may name its own
(TFC: the projected level-2 feature x^2); otherwise it is F_in itself (DCFM: enc_lo's output).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# TFC's sparse threshold: points below it are "changed since the keyframe" (paper Sec. 3.2, Fig. 2).
LOW_SIMILARITY = 0.8


def resize_to(x: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    """Bilinear (align_corners=False) to `size`; a no-op if already there."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def similarity_feature(model: nn.Module, f_in: Tensor) -> Tensor:
    """The shallow feature whose cosine similarity decides the blend and the feature policy."""
    own = getattr(model, "similarity_feature", None)
    return own(f_in) if callable(own) else f_in


def cosine_similarity_map(a: Tensor, b: Tensor) -> Tensor:
    """Per-pixel cosine over channels, (B, C, h, w) x 2 -> (B, 1, h, w), float32 (eq. 6).

    A zero vector (possible after a ReLU) has similarity 0 with everything (eps), not NaN.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"cosine_similarity_map needs two (B, C, h, w) tensors of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a.float(), b.float(), dim=1, eps=1e-6).unsqueeze(1)


def blend_by_similarity(w: Tensor, key: Tensor, current: Tensor) -> Tensor:
    """w * key + (1 - w) * current (eq. 7). `w` (B, 1, h, w), already clamped to [0, 1] by the
    caller, is resized to the features' size."""
    w = resize_to(w, key.shape[-2:]).to(current.dtype)
    return current + w * (key.to(current.dtype) - current)


def low_similarity_share(w: Tensor, threshold: float = LOW_SIMILARITY) -> float:
    """Share of pixels whose (unclamped) similarity is below `threshold`, 0..1."""
    return float((w < threshold).float().mean())
