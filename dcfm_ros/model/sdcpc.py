"""SD-CPC (Static-Dynamic Class-level Perceptual Consistency, ../shared/seeds/sdcpc-paper.txt, Sec. 3)
on EfficientNet-Lite0: the second accuracy-first peer of DCFM.

Paper (frames t, t-1, t-2; N = H_F2 W_F2 pixels at the second stage's size, C channels):
  SSEA, static semantics of ONE frame (eq. 1):
      S = LA(DCN([DS(F_1) (+) F_2 (+) US(F_3) (+) US(F_4)]))        (+) = concat, D aggregation points
  DSSA, dynamic semantics across frames, two stages:
      stage 1: interleave S^{t-1} and S^{t-2} by rows -> two convs -> attention coordinate map (H, W, 2P):
               P points of S^{t-2} per pixel of S^{t-1}; selective cross-attention -> D^{t-1};
               the same with S^t and D^{t-1} -> D^t_coarse
      stage 2: (target - reference) -> conv -> coordinates; the same attention -> D^t_fine
      selective cross-attention (eq. 2): Q = MLP(query frame), K, V = MLP(reference); the P sampled
      K/V of a pixel form its sqrt(P) x sqrt(P) window; O_w = sum_p a_p V_p within the window.
  MCP-CL (training): M^t = projection of D^t_fine into M variates of C/M channels; each variate
      predicts, the joint decision is S^t (logits). L_CE (3); prototypes P_cls from correctly
      predicted pixels (4); contrastive L_CR (5) against the other classes' prototypes; L_MF (6)
      decorrelates a class's M variate prototypes; L = L_CE + l1 L_CR + l2 L_MF (7)
      (losses: dcfm_ros.training.peer_losses).
  Implementation details: references t-3 and t-6, P = 4, D = 9, M = 4.

Shapes here (Lite0, input H x W): F_1 24 ch @ H/4, F_2 40 ch @ H/8, F_3 112 @ H/16, F_4 320 @ H/32;
S, D, M^t: C = 128 ch @ H/8; logits @ H/8 (the paper predicts at F_2's size). A frame's memory for the
ring is its S (128, H/8, W/8): SSEA sees one frame only, everything after it is recomputed per target
(D^{t-1} depends on which frames are t-1 and t-2 for this target, so it cannot be cached).

Where this departs from the paper, and why:
- Lite0 instead of MiT-B1 (the table compares methods on one backbone); C = 128 after a 1x1
  conv-BN-ReLU over the 496 concatenated channels (the paper does not give C; Lite0's fuse width).
- DCN: a single-group DCNv3-style aggregation written here with grid_sample (no torchvision / DCNv3
  op on this machine): 9 points = a 3x3 grid plus learned offsets, softmax-normalised point weights.
- LA: Katharopoulos linear attention (phi = elu + 1), 4 heads, residual.
- Eq. 2 normalises the dot products by their sum, which is undefined when that sum crosses zero; a
  softmax over the P points (scaled by 1/sqrt(C)) is used instead, the usual stable form.
- Stage 2's reference is S^{t-1} (the nearest reference's static semantics): "subtract the reference
  frame from the target frame" with target D^t_coarse. Output projections of every residual block
  start at zero and coordinate maps at the plain sqrt(P) x sqrt(P) window (spacing 2 px), so an
  untrained model starts as the static path; not stated in the paper.
- The joint decision of the M variates is the mean of their logits. tau, l1, l2 are not given:
  tau = 0.1, l1 = l2 = 1 (config/train); prototypes and features are L2-normalised per variate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.layers import init_new_layers
from dcfm_ros.model.multiframe import STAGE_CHANNELS, Memory, MultiFrameModel, pad_to

WIDTH = 128  # C
POINTS = 4  # P, attention points per pixel (a 2 x 2 window)
DCN_POINTS = 9  # D
VARIATES = 4  # M
LA_HEADS = 4


def sample_points(x: Tensor, pos: Tensor) -> Tensor:
    """x (B, C, H, W) bilinearly at pos (B, P, 2, h, w) = (x, y) pixel coordinates -> (B, C, P, h, w);
    outside the map reads zeros."""
    b, c, hh, ww = x.shape
    _, p, _, h, w = pos.shape
    gx = (pos[:, :, 0] + 0.5) / ww * 2.0 - 1.0
    gy = (pos[:, :, 1] + 0.5) / hh * 2.0 - 1.0
    grid = torch.stack([gx, gy], -1).reshape(b, p * h, w, 2).to(x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(b, c, p, h, w)


def pixel_grid(h: int, w: int, like: Tensor) -> Tensor:
    """(1, 1, 2, h, w): every pixel's own (x, y)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=like.device, dtype=torch.float32),
                            torch.arange(w, device=like.device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs, ys], 0).view(1, 1, 2, h, w)


def window(points: int, spacing: float) -> Tensor:
    """A sqrt(P) x sqrt(P) window of (dx, dy) offsets centred on the pixel, (P * 2,) as conv bias."""
    k = math.isqrt(points)
    if k * k != points:
        raise ValueError(f"the number of points must be a square (a window), got {points}")
    steps = (torch.arange(k, dtype=torch.float32) - (k - 1) / 2) * spacing
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([dx.flatten(), dy.flatten()], 1).flatten()


class DeformableAggregation(nn.Module):
    """DCN of eq. 1: each pixel aggregates D points (3x3 grid + learned offsets), weights softmax."""

    def __init__(self, channels: int, points: int = DCN_POINTS) -> None:
        super().__init__()
        self.points = points
        self.offset = nn.Conv2d(channels, 2 * points, 3, padding=1)
        self.weight = nn.Conv2d(channels, points, 3, padding=1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        init_new_layers(self)
        for m in (self.offset, self.weight, self.out):
            nn.init.zeros_(m.weight)
        with torch.no_grad():
            self.offset.bias.copy_(window(points, 1.0))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        pos = pixel_grid(h, w, x) + self.offset(x).float().view(b, self.points, 2, h, w)
        v = sample_points(self.value(x), pos)  # (B, C, D, h, w)
        a = self.weight(x).softmax(1).unsqueeze(1)
        return x + self.out((v * a).sum(2))


class LinearAttention(nn.Module):
    """LA of eq. 1: softmax-free global attention, O(N C^2): phi(Q) (phi(K)^T V) / (phi(Q) sum phi(K))."""

    def __init__(self, channels: int, heads: int = LA_HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        init_new_layers(self)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).float().view(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d)
        z = 1.0 / (torch.einsum("bhdn,bhd->bhn", q, k.sum(-1)) + 1e-6)
        o = torch.einsum("bhdn,bhde,bhn->bhen", q, kv, z).reshape(b, c, h, w)
        return x + self.out(o.to(x.dtype))


class SelectiveCrossAttention(nn.Module):
    """DSSA's cross-frame selective cross-attention: each query pixel attends to P points of the
    reference, placed by a coordinate map computed from the two frames' perceptual difference
    ("interleave": rows of both frames interleaved, stage 1; "difference": query - reference, stage 2)."""

    def __init__(self, channels: int, points: int = POINTS, mode: str = "interleave") -> None:
        super().__init__()
        if mode not in ("interleave", "difference"):
            raise ValueError(f"mode must be interleave or difference, got {mode!r}")
        self.points, self.mode = points, mode
        stride = (2, 1) if mode == "interleave" else (1, 1)  # 2H interleaved rows -> H
        self.coord = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, stride=stride, padding=1),
                                   nn.ReLU(inplace=True), nn.Conv2d(channels // 2, 2 * points, 3, padding=1))
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        init_new_layers(self)
        nn.init.zeros_(self.coord[2].weight)
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.coord[2].bias.copy_(window(points, 2.0))

    def coordinates(self, query: Tensor, ref: Tensor) -> Tensor:
        """The attention coordinate map (B, P, 2, H, W): absolute (x, y) in the reference."""
        b, c, h, w = query.shape
        if self.mode == "interleave":
            diff = torch.stack([query, ref], 3).reshape(b, c, 2 * h, w)  # rows q0, r0, q1, r1, ...
        else:
            diff = query - ref
        return pixel_grid(h, w, query) + self.coord(diff).float().view(b, self.points, 2, h, w)

    def forward(self, query: Tensor, ref: Tensor) -> Tensor:
        if query.shape != ref.shape:
            raise ValueError(f"cross-frame attention needs two maps of one shape, got {tuple(query.shape)} "
                             f"and {tuple(ref.shape)}")
        c = query.shape[1]
        kv = sample_points(self.kv(ref), self.coordinates(query, ref))  # (B, 2C, P, H, W)
        k, v = kv[:, :c], kv[:, c:]
        a = ((self.q(query).unsqueeze(2) * k).sum(1) / math.sqrt(c)).softmax(1)  # (B, P, H, W) per window
        return query + self.out((v * a.unsqueeze(1)).sum(2))


class SSEA(nn.Module):
    """Static semantic efficient aggregation (eq. 1) of one frame -> S (B, C, H/8, W/8)."""

    def __init__(self, channels: int = WIDTH) -> None:
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(sum(STAGE_CHANNELS), channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        init_new_layers(self.fuse)
        self.dcn = DeformableAggregation(channels)
        self.la = LinearAttention(channels)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = tuple(int(v) for v in feats[1].shape[-2:])  # plain ints: constants in an exported graph
        ds = F.avg_pool2d(pad_to(feats[0], 2 * size[0], 2 * size[1]), 2)  # 2 x 2 means, 1/4 -> 1/8
        us = [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[2:]]
        return self.la(self.dcn(self.fuse(torch.cat([ds, feats[1], *us], 1))))


class SDCPC(MultiFrameModel):
    """SD-CPC network (module doc). Memory = (S,). decode_aux also returns M^t (B, M, C/M, h, w)."""

    model_class = "SDCPC"
    uses_fused = False  # SSEA replaces SegFormer's all-MLP fuse

    def __init__(self, config: DCFMConfig, pretrained: str | Path | None = None, *,
                 points: int = POINTS, variates: int = VARIATES) -> None:
        super().__init__(config, pretrained)
        if WIDTH % int(variates) != 0:
            raise ValueError(f"SD-CPC: {WIDTH} channels do not split into {variates} variates")
        self.points, self.variates = int(points), int(variates)
        self.ssea = SSEA()
        self.stage1_ref = SelectiveCrossAttention(WIDTH, self.points, "interleave")  # S^{t-1} <- S^{t-2}
        self.stage1_tgt = SelectiveCrossAttention(WIDTH, self.points, "interleave")  # S^t <- D^{t-1}
        self.stage2 = SelectiveCrossAttention(WIDTH, self.points, "difference")  # D^t_coarse <- S^{t-1}
        self.variate_proj = nn.Conv2d(WIDTH, WIDTH, 1)  # D^t_fine -> M^t
        self.drop = nn.Dropout2d(config.dropout)
        # one classifier per variate (grouped conv): variate m predicts from its C/M channels only
        self.classifier = nn.Conv2d(WIDTH, self.variates * config.num_classes, 1, groups=self.variates)
        init_new_layers(self.variate_proj)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def model_options(self) -> dict[str, Any]:
        return {"points": self.points, "variates": self.variates}

    def memory(self, feats: list[Tensor], fused: Tensor | None) -> Memory:
        return (self.ssea(feats),)

    def decode(self, feats: list[Tensor], fused: Tensor | None, refs: Sequence[Memory]) -> Tensor:
        return self.decode_aux(feats, fused, refs)[0]

    def decode_aux(self, feats: list[Tensor], fused: Tensor | None,
                   refs: Sequence[Memory]) -> tuple[Tensor, Tensor]:
        """(logits S^t (B, classes, H/8, W/8), M^t (B, M, C/M, H/8, W/8)); refs = (t-2, t-1) memories."""
        if len(refs) != 2:
            raise ValueError(f"SD-CPC aggregates two references (t-2, t-1), got {len(refs)}")
        s_t = self.ssea(feats)
        (s_2,), (s_1,) = refs
        d_1 = self.stage1_ref(s_1, s_2)  # D^{t-1}
        d_coarse = self.stage1_tgt(s_t, d_1)
        d_fine = self.stage2(d_coarse, s_1)
        m_t = self.variate_proj(d_fine)
        b, _, h, w = m_t.shape
        logits = self.classifier(self.drop(m_t)).view(b, self.variates, -1, h, w).mean(1)
        return logits, m_t.view(b, self.variates, -1, h, w)


def build_sdcpc(config: DCFMConfig, pretrained: str | Path | None = None, **options: Any) -> SDCPC:
    """SD-CPC on EfficientNet-Lite0; `pretrained` as in build_model; options: points, variates."""
    return SDCPC(config, pretrained, **options)
