"""What the two multi-frame peers (MRCFA, SD-CPC) share: EfficientNet-Lite0's four stages as their
multi-scale features, a per-frame memory that later frames use as a reference, and causal use.

Both papers segment a target frame I_t from its own features and the features of T-1 earlier
reference frames, and both say (MRCFA Sec. 3.3, test period) that a reference's features were already
computed when it was itself the target. So a model here splits into
    backbone(x)                 -> (feats, fused)      the frame's own multi-scale features
    memory(feats, fused)        -> Memory              what a LATER frame needs of this one (kept in a ring)
    decode(feats, fused, refs)  -> logits              the target with its references' memories
and `forward_stream(x, refs)` = decode of x with refs, plus x's memory for the ring. A frame's memory
depends on that frame only, so recomputing the references from their images gives the same output
as the ring (tested), and nothing a frame outputs depends on a later frame.

References are oldest first. Fewer than T-1 of them (the first frames of a stream or a clip at a
sequence start) are padded with the oldest one there is, or with the frame itself when there is none,
the same in training (clip loading) and inference (the engine's ring), so no frame is special.

Stages of Lite0 (the shipped DCFM backbone, ImageNet init from the package): F^1 24 ch @1/4,
F^2 40 ch @1/8, F^3 112 ch @1/16, F^4 320 ch @1/32 (the papers take MiT's four stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.dcfm import DCFM, upsample_logits
from dcfm_ros.model.efficientnet import build_efficientnet_lite0

Memory = tuple[Tensor, ...]  # one frame's tensors a later target reads, each (B, C, h, w)
STAGE_CHANNELS = (24, 40, 112, 320)


def pad_to(x: Tensor, h: int, w: int) -> Tensor:
    """Replicate-pad (B, C, h0, w0) at the bottom/right to (h, w): Lite0's SAME padding rounds every
    stage's size up, so a k x k pooling from one stage to a deeper one needs k * (deeper size)."""
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    return x if dh == 0 and dw == 0 else F.pad(x, (0, dw, 0, dh), mode="replicate")


def pad_references(refs: Sequence[Memory], own: Memory, n: int) -> list[Memory]:
    """Exactly `n` references, oldest first: the last n of `refs`; fewer are padded in front with the
    oldest one, none at all with the frame's own memory."""
    refs = list(refs)[-n:] if n > 0 else []
    if not refs:
        return [own] * n
    return [refs[0]] * (n - len(refs)) + refs


class MultiFrameModel(nn.Module):
    """Base of MRCFA and SD-CPC: enc_lo / enc_hi are DCFM's Lite0 halves (same weights, same
    names, so the optimizer's encoder/decoder split and the ImageNet loading apply unchanged)."""

    model_class = "?"
    num_references = 2  # T - 1: MRCFA uses T = 3 on Cityscapes, SD-CPC frames t-3 and t-6
    # Frames between two references on a 15 Hz video: both papers use t-3 (and t-6) on VSPW.
    default_stride = 3
    uses_fused = True  # False: enc_hi's all-MLP fuse is not part of the model (SD-CPC has SSEA)
    default_blend = "none"  # the engine's nonkey_blend "auto": these models have no non-key frames

    def __init__(self, config: DCFMConfig, pretrained: str | Path | None = None) -> None:
        super().__init__()
        if config.backbone != "efficientnet-lite0":
            raise ValueError(f"{self.model_class} is built on efficientnet-lite0 only, got backbone "
                             f"{config.backbone!r}")
        self.config = config
        enc = build_efficientnet_lite0(pretrained)
        self.enc_lo, self.enc_hi = enc.enc_lo, enc.enc_hi
        if not self.uses_fused:
            del self.enc_hi.proj, self.enc_hi.fuse
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    normalize_input = DCFM.normalize_input

    @property
    def model_options(self) -> dict[str, Any]:
        """Switches that change what the network computes (ablations), stored in the checkpoint."""
        return {}

    # --- to implement ------------------------------------------------------------------------------
    def memory(self, feats: list[Tensor], fused: Tensor | None) -> Memory:
        raise NotImplementedError

    def decode(self, feats: list[Tensor], fused: Tensor | None, refs: Sequence[Memory]) -> Tensor:
        raise NotImplementedError

    def decode_aux(self, feats: list[Tensor], fused: Tensor | None,
                   refs: Sequence[Memory]) -> tuple[Tensor, Tensor | None]:
        """(logits, the feature a training loss needs besides them, or None)."""
        return self.decode(feats, fused, refs), None

    # --- shared ------------------------------------------------------------------------------------
    def backbone(self, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
        """x normalised (B, 3, H, W) -> ([F^1..F^4], SegFormer's fused feature or None)."""
        return self.enc_hi.stages(self.enc_lo(x), fuse=self.uses_fused)

    def forward_stream(self, x: Tensor, refs: Sequence[Memory]) -> tuple[Tensor, Memory]:
        """One frame with the memories of its earlier references (oldest first, any number; padded as
        the module doc says). Returns (logits at the decoder's resolution, this frame's memory)."""
        feats, fused = self.backbone(x)
        own = self.memory(feats, fused)
        return self.decode(feats, fused, pad_references(refs, own, self.num_references)), own

    def forward_clip(self, x_t: Tensor, x_refs: Tensor) -> Tensor:
        """Training: the target's logits (see forward_clip_aux)."""
        return self.forward_clip_aux(x_t, x_refs)[0]

    def forward_clip_aux(self, x_t: Tensor, x_refs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Training: target (B, 3, H, W) and its references (B, R, 3, H, W), oldest first, all
        normalised. One backbone pass over all B * (R + 1) frames (BatchNorm sees the clip as the
        stream will), then the target decoded with the references' memories. Returns its logits and
        the auxiliary feature of `decode_aux`."""
        if x_refs.dim() != 5 or x_refs.shape[0] != x_t.shape[0] or x_refs.shape[2:] != x_t.shape[1:]:
            raise ValueError(f"{self.model_class}.forward_clip: references must be (B, R, 3, H, W) matching "
                             f"the target {tuple(x_t.shape)}, got {tuple(x_refs.shape)}")
        b, r = x_refs.shape[:2]
        frames = torch.cat([x_refs.transpose(0, 1).reshape(b * r, *x_t.shape[1:]), x_t], 0)
        feats, fused = self.backbone(frames)
        mem = self.memory([f[: b * r] for f in feats], None if fused is None else fused[: b * r])
        refs = [tuple(m[i * b:(i + 1) * b] for m in mem) for i in range(r)]
        t_feats = [f[b * r:] for f in feats]
        t_fused = None if fused is None else fused[b * r:]
        own = self.memory(t_feats, t_fused) if r == 0 else refs[0]  # used only when r == 0
        return self.decode_aux(t_feats, t_fused, pad_references(refs, own, self.num_references))

    def forward_key(self, x: Tensor) -> tuple[Tensor, None, None]:
        """A frame without history (its own memory as every reference): the trainer's periodic val."""
        return self.forward_stream(x, [])[0], None, None

    def forward(self, x: Tensor) -> Tensor:
        """A single frame without history: logits upsampled to x's size."""
        return upsample_logits(self.forward_key(x)[0], x.shape[-2:])
