"""DCFM training losses (paper Section III-B/C, eqs. 8-12), on tensors.

- L_I = CE(y_I^l, y^l): the labeled frame as a keyframe.
- L_B = CE(y^{u->l}, y^l): the labeled frame as a NON-key frame fused with the neighbour's common
  feature F_co^u (the symmetric scheme that makes deep features reusable across frames).
- L_C = MSE(M * F^u, M * F^l), M = where argmax(y_I^u) == argmax(y_I^l): pulls the fused features of
  the two frames together where both keyframe predictions agree; it never pushes them apart.
- L = L_I + lambda_B L_B + lambda_C L_C.

Each term is a mean (over valid pixels, over masked feature elements). Under DistributedDataParallel
a rank sees only part of the global batch, and the average of per-rank means is not the mean over
the global batch when ranks hold different numbers of valid pixels; `mean` (a function of the
rank's sum and count, distributed.global_mean) makes every term the global-batch mean.
- L_sim (TFC's, optional, `loss.lambda_sim`): focal BCE (gamma 1) of the clamped cosine similarity of
  the two frames' shallow features against "label equal in both frames"; needs both labels.
- TFC's own objective (`tfc_losses`): L_seg (mean CE of keyframe and non-key frame) + lambda_sim L_sim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.similarity import blend_by_similarity, cosine_similarity_map

IGNORE_INDEX = 255
# (sum over this rank's elements, their count) -> the mean the loss term takes; None = sum / count here.
MeanFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LossTerms:
    """All terms, each a scalar tensor (l_b is 0 when lambda_B is 0 and the branch was skipped)."""

    total: Tensor
    l_i: Tensor
    l_b: Tensor
    l_c: Tensor
    mask_ratio: float  # fraction of feature pixels where the two keyframe predictions agree (logging)
    l_sim: Tensor | None = None  # TFC's focal BCE on the similarity (when lambda_sim > 0)

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "L_I": float(self.l_i.detach()),
                "L_B": float(self.l_b.detach()), "L_C": float(self.l_c.detach()),
                "mask_ratio": self.mask_ratio,
                "L_sim": 0.0 if self.l_sim is None else float(self.l_sim.detach())}


def segmentation_ce(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX,
                    weight: Tensor | None = None, mean: MeanFn | None = None) -> Tensor:
    """Pixel-wise cross-entropy; `logits` (B,C,h,w) are upsampled bilinearly to the label size (B,H,W).

    `weight` (C,) weighs each pixel by its target class (the mean is over the weights, as in
    `F.cross_entropy`). Pixels equal to `ignore_index` do not count. A batch with no valid pixel
    gives 0 (connected to the graph) instead of PyTorch's NaN, so one all-void crop cannot poison a
    run. `mean`: see the module doc (the count is the sum of the valid pixels' weights).
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if mean is not None:  # every rank must reach the reduction, even with no valid pixel
        total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index,
                                reduction="sum")
        valid = target != ignore_index
        count = weight[target[valid]].sum() if weight is not None else valid.sum().float()
        return mean(total, count)
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=ignore_index)


def agreement_mask(logits_u: Tensor, logits_l: Tensor, size: tuple[int, int]) -> Tensor:
    """M_inter (eq. 10) at feature size `size`: 1 where both keyframe predictions pick the same class.

    Predictions are resized to the feature size before the argmax (bilinear on logits). No gradient
    flows through the mask (an argmax has none anyway; `no_grad` makes it explicit and cheap).
    """
    with torch.no_grad():
        if logits_u.shape[-2:] != tuple(size):
            logits_u = F.interpolate(logits_u, size=size, mode="bilinear", align_corners=False)
            logits_l = F.interpolate(logits_l, size=size, mode="bilinear", align_corners=False)
        return (logits_u.argmax(1) == logits_l.argmax(1)).unsqueeze(1).to(torch.float32)


def consistency_loss(feat_u: Tensor, feat_l: Tensor, mask: Tensor, mean: MeanFn | None = None) -> Tensor:
    """Masked MSE (eq. 11): mean of (F^u - F^l)^2 over the masked positions and all channels.

    Averaging over masked elements only (not the whole map) keeps the scale independent of how much of
    the frame agrees; an empty mask gives 0 (still connected to the graph).
    """
    if feat_u.shape != feat_l.shape:
        raise ValueError(f"L_C needs features of one shape, got {tuple(feat_u.shape)} and "
                         f"{tuple(feat_l.shape)}")
    if mask.shape[-2:] != feat_u.shape[-2:]:
        raise ValueError(f"L_C mask size {tuple(mask.shape[-2:])} != feature size {tuple(feat_u.shape[-2:])}")
    mask = mask.to(feat_u.dtype)
    count = mask.sum() * feat_u.shape[1]
    sq = (feat_u.float() - feat_l.float()).pow(2) * mask
    if mean is not None:
        return mean(sq.sum(), count.float())
    if float(count) == 0.0:
        return sq.sum() * 0.0
    return sq.sum() / count


def dcfm_losses(
    model: nn.Module,
    x_l: Tensor,
    y_l: Tensor,
    x_u: Tensor,
    lambda_b: float,
    lambda_c: float,
    ignore_index: int = IGNORE_INDEX,
    class_weight: Tensor | None = None,
    mean: MeanFn | None = None,
    lambda_sim: float = 0.0,
    y_u: Tensor | None = None,
) -> LossTerms:
    """All DCFM losses for one batch of pairs. `x_l`, `x_u` normalised (B,3,H,W), `y_l` (B,H,W) int64.

    `class_weight` (C,), if given, weighs the two cross-entropies L_I and L_B (not L_C).
    `mean`: how each term averages (module doc); None = over this batch.
    `lambda_sim` > 0 adds TFC's L_sim on cos(F_in^l, F_in^u); it needs the neighbour's label `y_u`.

    Both frames go through the encoder as ONE batch (one pass, and BatchNorm sees both frames as it
    will at inference). The stages are called one by one (model.enc_lo / enc_hi / ffm / head, the
    documented decomposition of forward_key) so that the labeled frame's F_in is computed once and
    reused for its non-key pass with the neighbour's F_co.
    """
    b = x_l.shape[0]
    f_in = model.enc_lo(torch.cat([x_l, x_u], 0))
    f_co = model.enc_hi(f_in)
    fused = model.ffm(f_co, f_in)
    logits = model.head(fused)
    logits_l, logits_u = logits[:b], logits[b:]
    fused_l, fused_u = fused[:b], fused[b:]

    l_i = segmentation_ce(logits_l, y_l, ignore_index, class_weight, mean)
    if lambda_b > 0:
        # x_l as a non-key frame: its own F_in, the neighbour's (keyframe) F_co. Eq. 9.
        logits_ul = model.head(model.ffm(f_co[b:], f_in[:b]))
        l_b = segmentation_ce(logits_ul, y_l, ignore_index, class_weight, mean)
    else:
        l_b = logits.new_zeros(())  # ablation: the branch is not even computed
    mask = agreement_mask(logits_u, logits_l, tuple(fused.shape[-2:]))
    l_c = consistency_loss(fused_u, fused_l, mask, mean) if lambda_c > 0 else fused.new_zeros(())
    total = l_i + lambda_b * l_b + lambda_c * l_c
    l_sim = None
    if lambda_sim > 0:
        if y_u is None:
            raise ValueError("loss.lambda_sim > 0 needs the neighbour's label (y_u)")
        w = cosine_similarity_map(f_in[:b], f_in[b:])
        l_sim = similarity_loss(w, y_l, y_u, ignore_index)
        total = total + lambda_sim * l_sim
    return LossTerms(total, l_i, l_b, l_c, float(mask.mean()), l_sim)


class TrainingObjective(nn.Module):
    """A step's objective (`methods.training_losses`: DCFM's or TFC's) as a module.

    DistributedDataParallel synchronises gradients only for computations that go through the
    wrapped module's forward; the losses call the model's stages one by one, so the wrapper wraps
    this module, not the network. forward returns (total, L_I, L_B, L_C, mask_ratio, L_sim) as
    tensors (L_sim 0 when not computed).
    """

    def __init__(self, model: nn.Module, losses: Callable[..., LossTerms]) -> None:
        super().__init__()
        self.model = model
        self._losses = losses

    def forward(self, x_l: Tensor, y_l: Tensor, x_u: Tensor, y_u: Tensor | None = None) -> tuple[Tensor, ...]:
        t = self._losses(self.model, x_l, y_l, x_u, y_u)
        l_sim = t.l_sim if t.l_sim is not None else t.total.new_zeros(())
        return t.total, t.l_i, t.l_b, t.l_c, torch.tensor(t.mask_ratio), l_sim

    @staticmethod
    def terms(out: tuple[Tensor, ...]) -> LossTerms:
        return LossTerms(out[0], out[1], out[2], out[3], float(out[4]), out[5])


def focal_bce(p: Tensor, target: Tensor, valid: Tensor | None = None, gamma: float = 1.0,
              eps: float = 1e-6) -> Tensor:
    """Binary focal loss (Lin et al.) on probabilities: mean over valid pixels of
    -(1 - p_t)^gamma log(p_t), p_t = p where target is 1, 1 - p where it is 0.

    TFC supervises the clamped cosine similarity with it (gamma 1) because "label unchanged" is the
    large majority of pixels between close frames; the (1 - p_t) factor lets the rare changed pixels
    count. p is clamped to [eps, 1 - eps] so log never sees 0. No valid pixel gives 0 (in the graph).
    """
    p = p.float().clamp(eps, 1.0 - eps)
    t = target.to(p.dtype)
    p_t = p * t + (1.0 - p) * (1.0 - t)
    loss = -((1.0 - p_t) ** gamma) * torch.log(p_t)
    if valid is None:
        return loss.mean()
    valid = valid.to(p.dtype)
    count = valid.sum()
    if float(count) == 0.0:
        return (loss * valid).sum()
    return (loss * valid).sum() / count


def same_label_mask(y_a: Tensor, y_b: Tensor, size: tuple[int, int] | torch.Size,
                    ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor]:
    """("label equal in both frames", valid) at `size`, both (B, 1, h, w) float; labels are taken
    nearest (a label is a class, not a quantity) and a pixel void in either frame is not valid."""
    with torch.no_grad():
        ab = torch.stack([y_a, y_b], 1).float()
        if ab.shape[-2:] != tuple(size):
            ab = F.interpolate(ab, size=tuple(size), mode="nearest")
        a, b = ab[:, :1], ab[:, 1:]
        valid = (a != ignore_index) & (b != ignore_index)
        return (a == b).float(), valid.float()


def similarity_loss(w: Tensor, y_a: Tensor, y_b: Tensor, ignore_index: int = IGNORE_INDEX,
                    gamma: float = 1.0) -> Tensor:
    """L_sim: focal BCE of clamp(w, 0, 1) (B, 1, h, w) against same_label_mask(y_a, y_b)."""
    same, valid = same_label_mask(y_a, y_b, w.shape[-2:], ignore_index)
    return focal_bce(w.clamp(0.0, 1.0), same, valid, gamma)


def tfc_losses(model: nn.Module, x_l: Tensor, y_l: Tensor, x_u: Tensor, y_u: Tensor, lambda_sim: float,
               ignore_index: int = IGNORE_INDEX, class_weight: Tensor | None = None) -> LossTerms:
    """TFC's objective (eq. 12) on a labeled pair: the neighbour x_u is the keyframe, x_l the non-key
    frame that recomputes levels 1-2, reuses the keyframe's F_co and blends z by the similarity.

    L = (CE(key) + CE(non-key)) / 2 + lambda_sim L_sim. Reported as L_I = CE(key), L_B = CE(non-key)
    (the non-key frame's loss, as DCFM's L_B is), L_C = 0; mask_ratio = share of "label unchanged".
    """
    b = x_l.shape[0]
    f_in = model.enc_lo(torch.cat([x_u, x_l], 0))  # one pass: BatchNorm sees both frames
    f_in_k, f_in_t = f_in[:b], f_in[b:]
    f_co_k = model.enc_hi(f_in_k)
    z = model.ffm(torch.cat([f_co_k, f_co_k], 0), f_in)
    z_k, z_t = z[:b], z[b:]
    w = cosine_similarity_map(model.similarity_feature(f_in_k), model.similarity_feature(f_in_t))
    z_t = blend_by_similarity(w.clamp(0.0, 1.0), z_k, z_t)
    logits = model.head(torch.cat([z_k, z_t], 0))
    l_key = segmentation_ce(logits[:b], y_u, ignore_index, class_weight)
    l_nonkey = segmentation_ce(logits[b:], y_l, ignore_index, class_weight)
    same, valid = same_label_mask(y_u, y_l, w.shape[-2:], ignore_index)
    l_sim = focal_bce(w.clamp(0.0, 1.0), same, valid)
    total = 0.5 * (l_key + l_nonkey) + lambda_sim * l_sim
    ratio = float((same * valid).sum() / valid.sum().clamp(min=1.0))
    return LossTerms(total, l_key, l_nonkey, total.new_zeros(()), ratio, l_sim)
