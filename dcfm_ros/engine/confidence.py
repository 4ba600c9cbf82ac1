"""Per-frame confidence: how sure the network is of its labels, to tell when a scene is out of domain.

confidence = mean over pixels of the top softmax probability, computed on the logits at the head's
output resolution (F's grid, before the upsampling to the camera size: the bilinear upsampling only
interpolates between these values, and the small grid keeps the softmax cheap). The same top
probability per pixel is kept as a small uint8 map (0..255 = 0..1), which the node scales to the
camera resolution only when someone subscribes to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Confidence:
    mean: float  # mean top softmax probability, 1/num_classes .. 1
    map_u8: np.ndarray  # (h, w) uint8 top probability * 255 at the logits' resolution


def frame_confidence(logits: Tensor) -> Confidence:
    """(1, C, h, w) logits -> Confidence (float32 softmax, also under autocast)."""
    top = logits.float().softmax(dim=1).amax(dim=1)[0]
    mean = float(top.mean().item())
    map_u8 = (top * 255.0).round_().to(torch.uint8).cpu().numpy()
    return Confidence(mean=mean, map_u8=map_u8)


def confidence_from_top(top: np.ndarray) -> Confidence:
    """Confidence from the top softmax probability map (h, w) a graph computed (graph I/O)."""
    top = np.asarray(top, dtype=np.float32)
    return Confidence(mean=float(top.mean()), map_u8=np.rint(top * 255.0).astype(np.uint8))
