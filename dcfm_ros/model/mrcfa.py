"""MRCFA (Mining Relations among Cross-Frame Affinities, ../shared/seeds/mrcfa-paper.txt, Sec. 3) on
EfficientNet-Lite0: an accuracy-first peer of DCFM that spends compute on earlier frames.

Paper, for a clip of T frames (target I_T, references I_1..I_{T-1}), L feature scales l = 1 (shallow,
largest) .. L (deepest), N_l = H_l W_l tokens:
    Q^l = f(F^l_T; W^l_query),  K^l_i = f(F^l_i; W^l_key)                        (1), (2)  (N_l, C_l)
    A^l_i = Q^l K^l_i^T                                                           (3)       (N_l, N_l)
  Selective token masking (Sec. 3.4): keys of l < L downsampled by a conv with kernel = stride =
  (H_l / H_L, W_l / W_L) to H_L x W_L (9); binary mask generation on the deepest affinity A^L_i: top-n
  over each column (10), summed to a token importance map M_i (N_L) (11); the S = p N_L most important
  key locations are kept in every scale:  A~^l_i (N_l, S).
    SAR  (5): A~ (H_l, W_l, S) -> (S, H_l, W_l), A-bar^l_i = G(A~^l_i)   (2-D convs over the first two dims)
    MAA  (6): B^L_i = A-bar^L_i,  B^l_i = G(Gamma(B^{l+1}_i) + A-bar^l_i),  l = L-1 .. 1
    retrieval (7): F-hat_i (SegFormer's fused feature) downsampled to H_L x W_L, the same S tokens
                   F~_i (S, C-hat);  O_i = B^1_i F~_i                                       (N_1, C-hat)
    merge (8): O_T = Gamma(sum_i O_i) / (T - 1) + F-hat_T;   logits = MLP decoder(O_T)
  Test period: the references' features were computed when they were targets (the engine's ring).

Shapes here (Lite0, input H x W): the L = 3 scales are the last three stages, as the paper does on
VSPW: l=1 F^2 40 ch @ H/8, l=2 F^3 112 ch @ H/16, l=3 F^4 320 ch @ H/32; F-hat = Lite0's all-MLP fuse
of the four stages (128 ch @ H/4, the shipped DCFM's F_co decoder); head = SegFormer's linear layer.
A reference's memory (what the ring keeps) is everything (1)-(11) needs of it that does not depend on
the target: K^3 (320, H_L, W_L), K-hat^1 (40, H_L, W_L), K-hat^2 (112, H_L, W_L) and F-hat
downsampled (128, H_L, W_L): all at 1/32, so a reference costs nothing to keep and nothing to reuse.

Where this departs from the paper, and why:
- Lite0 instead of MiT (the backbone the table compares on), L = 3 (VSPW's setting; Cityscapes uses 4)
  to keep the S-channel affinity maps off the 1/4 scale on a CPU; T = 3 (two references) as on
  Cityscapes; p = 0.8, the paper's ratio for its small backbone (MiT-B0).
- G (SAR and MAA): "a few 2-D conv layers" on (S, H_l, W_l). S = p H_L W_L changes with the input
  size (training crops vs. the stream's frames), so G cannot take S as its conv channels: it convolves
  every one of the S affinity slices with the same weights (the slices as a batch, 1 -> 8 -> 1
  channels, 3x3), residual with a zero-initialised last layer (starts as the identity).
- Affinities are scaled by 1/sqrt(C_l) and B^1 goes through a softmax over the S tokens before (7)
  (the paper leaves the normalisation of the retrieval weights unsaid; unnormalised weights make O's
  scale depend on S).
- Top-n of (10): n is not given; `bmg_top_n` = 8 (capped at N_L).
- The ablations (Table 4): sar=False uses A-bar = A~; maa=False replaces (6) by B^1 = A-bar^1 +
  sum_l Gamma(A-bar^l) (the scales still meet, without a learned aggregation). Same parameters.
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
from dcfm_ros.model.dcfm import build_head
from dcfm_ros.model.efficientnet import FUSE_WIDTH
from dcfm_ros.model.layers import init_new_layers
from dcfm_ros.model.multiframe import STAGE_CHANNELS, Memory, MultiFrameModel, pad_to

LEVELS = (1, 2, 3)  # indices into Lite0's stages: F^2 @1/8, F^3 @1/16, F^4 @1/32 (paper l = 1, 2, 3)
LEVEL_CHANNELS = tuple(STAGE_CHANNELS[i] for i in LEVELS)
TOKEN_RATIO = 0.8  # p for the paper's small backbone (MiT-B0)
BMG_TOP_N = 8
G_WIDTH = 8


def num_selected(n_tokens: int, ratio: float) -> int:
    """S = p H_L W_L, at least one token."""
    return max(1, min(n_tokens, round(ratio * n_tokens)))


class AffinityConv(nn.Module):
    """G: residual 2-D convs applied to every one of the S slices of an (B, S, h, w) affinity alike."""

    def __init__(self, width: int = G_WIDTH) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 1, 3, padding=1)
        init_new_layers(self)
        nn.init.zeros_(self.conv2.weight)  # the identity at the start: training begins from A~

    def forward(self, a: Tensor) -> Tensor:
        b, s, h, w = a.shape
        x = a.reshape(b * s, 1, h, w)
        return a + self.conv2(F.relu(self.conv1(x))).view(b, s, h, w)


def _gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """(B, C, h, w) and (B, S) indices into h*w -> (B, C, S)."""
    flat = x.flatten(2)
    return torch.gather(flat, 2, idx.unsqueeze(1).expand(-1, flat.shape[1], -1))


class MRCFA(MultiFrameModel):
    """MRCFA network (see the module doc). Memory = (K-hat^1, K-hat^2, K^3, F-hat @1/32)."""

    model_class = "MRCFA"

    def __init__(self, config: DCFMConfig, pretrained: str | Path | None = None, *, sar: bool = True,
                 maa: bool = True, token_ratio: float = TOKEN_RATIO, bmg_top_n: int = BMG_TOP_N) -> None:
        super().__init__(config, pretrained)
        if not 0.0 < float(token_ratio) <= 1.0:
            raise ValueError(f"MRCFA: token_ratio p must be in (0, 1], got {token_ratio!r}")
        if int(bmg_top_n) < 1:
            raise ValueError(f"MRCFA: bmg_top_n must be >= 1, got {bmg_top_n!r}")
        self.sar, self.maa = bool(sar), bool(maa)
        self.token_ratio, self.bmg_top_n = float(token_ratio), int(bmg_top_n)
        self.query = nn.ModuleList(nn.Conv2d(c, c, 1) for c in LEVEL_CHANNELS)  # W^l_query, eq. 1
        self.key = nn.ModuleList(nn.Conv2d(c, c, 1) for c in LEVEL_CHANNELS)  # W^l_key, eq. 2
        # g of eq. 9 for l < L: kernel = stride = 2^(L - l) (1/8 -> 1/32: 4, 1/16 -> 1/32: 2).
        n = len(LEVELS)
        self.key_down = nn.ModuleList(nn.Conv2d(c, c, 2 ** (n - 1 - i), stride=2 ** (n - 1 - i))
                                      for i, c in enumerate(LEVEL_CHANNELS[:-1]))
        self.sar_g = nn.ModuleList(AffinityConv() for _ in LEVELS)  # eq. 5, one G per scale
        self.maa_g = nn.ModuleList(AffinityConv() for _ in LEVELS[:-1])  # eq. 6, l = L-1 .. 1
        init_new_layers(self.query)
        init_new_layers(self.key)
        init_new_layers(self.key_down)
        self.head = build_head(config.head, FUSE_WIDTH, config.num_classes, config.dropout)

    @property
    def model_options(self) -> dict[str, Any]:
        return {"sar": self.sar, "maa": self.maa, "token_ratio": self.token_ratio,
                "bmg_top_n": self.bmg_top_n}

    def memory(self, feats: list[Tensor], fused: Tensor | None) -> Memory:
        """A frame as a reference: (K-hat^1, K-hat^2, K^3, F-hat), each (B, C, H_L, W_L)."""
        assert fused is not None
        xs = [feats[i] for i in LEVELS]
        h_l, w_l = (int(v) for v in xs[-1].shape[-2:])  # plain ints: constants in an exported graph
        keys = []
        for i, x in enumerate(xs[:-1]):
            r = self.key_down[i].stride[0]
            keys.append(self.key_down[i](pad_to(self.key[i](x), r * h_l, r * w_l)))
        keys.append(self.key[-1](xs[-1]))
        # F-hat "downsampled to H_L x W_L": the mean of each 8 x 8 cell (1/4 -> 1/32), padded like the keys
        f_small = F.avg_pool2d(pad_to(fused, 8 * h_l, 8 * w_l), 8)
        return (*keys, f_small)

    def select_tokens(self, q_deep: Tensor, k_deep: Tensor) -> tuple[Tensor, Tensor]:
        """Eqs. 3, 10, 11 at l = L: (A^L (B, N_L, N_L) scaled, indices (B, S) of the kept key tokens)."""
        c = q_deep.shape[1]
        a = torch.bmm(q_deep.flatten(2).transpose(1, 2), k_deep.flatten(2)) / math.sqrt(c)
        n_tok = int(a.shape[-1])  # a plain int: S is a constant of an exported graph (fixed input size)
        top = a.topk(min(self.bmg_top_n, n_tok), dim=1).values  # top-n of every column (keys)
        importance = top.sum(1)  # M_i, (B, N_L)
        idx = importance.topk(num_selected(n_tok, self.token_ratio), dim=1).indices
        return a, idx

    def affinities(self, qs: list[Tensor], ref: Memory) -> tuple[list[Tensor], Tensor]:
        """A~^l_i for every scale as (B, S, H_l, W_l), and the kept token indices."""
        *k_hat, k_deep, _ = ref
        a_deep, idx = self.select_tokens(qs[-1], k_deep)
        out = []
        for q, k in zip(qs[:-1], k_hat, strict=True):
            kt = _gather_tokens(k, idx)  # (B, C_l, S)
            a = torch.bmm(q.flatten(2).transpose(1, 2), kt) / math.sqrt(q.shape[1])  # (B, N_l, S)
            out.append(a.transpose(1, 2).reshape(q.shape[0], -1, *q.shape[-2:]))
        a_l = torch.gather(a_deep, 2, idx.unsqueeze(1).expand(-1, a_deep.shape[1], -1))
        out.append(a_l.transpose(1, 2).reshape(qs[-1].shape[0], -1, *qs[-1].shape[-2:]))
        return out, idx

    def refine(self, a_tilde: list[Tensor]) -> Tensor:
        """SAR (eq. 5) then MAA (eq. 6) -> B^1 (B, S, H_1, W_1)."""
        a_bar = [g(a) for g, a in zip(self.sar_g, a_tilde, strict=True)] if self.sar else a_tilde
        if not self.maa:
            size = a_bar[0].shape[-2:]
            return a_bar[0] + sum(F.interpolate(a, size=size, mode="bilinear", align_corners=False)
                                  for a in a_bar[1:])
        b = a_bar[-1]
        for level in range(len(a_bar) - 2, -1, -1):
            up = F.interpolate(b, size=a_bar[level].shape[-2:], mode="bilinear", align_corners=False)
            b = self.maa_g[level](up + a_bar[level])
        return b

    def decode(self, feats: list[Tensor], fused: Tensor | None, refs: Sequence[Memory]) -> Tensor:
        """Eqs. 1-8 for the target with its references' memories -> logits (B, classes, H/4, W/4)."""
        assert fused is not None
        qs = [q(feats[i]) for q, i in zip(self.query, LEVELS, strict=True)]
        h1, w1 = qs[0].shape[-2:]
        outs = []
        for ref in refs:
            a_tilde, idx = self.affinities(qs, ref)
            weights = self.refine(a_tilde).flatten(2).softmax(1)  # (B, S, N_1), over the S tokens
            f_tilde = _gather_tokens(ref[-1], idx)  # (B, C-hat, S)
            outs.append(torch.bmm(f_tilde, weights).view(fused.shape[0], -1, h1, w1))  # eq. 7, O_i
        o = torch.stack(outs, 0).mean(0)
        o_t = F.interpolate(o, size=fused.shape[-2:], mode="bilinear", align_corners=False) + fused  # eq. 8
        return self.head(o_t)


def build_mrcfa(config: DCFMConfig, pretrained: str | Path | None = None, **options: Any) -> MRCFA:
    """MRCFA on EfficientNet-Lite0; `pretrained` as in build_model ("package" = ImageNet weights);
    options: sar, maa, token_ratio, bmg_top_n (checkpoint `model_options`)."""
    return MRCFA(config, pretrained, **options)
