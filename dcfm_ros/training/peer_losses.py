"""Training objectives of the two multi-frame peers (dcfm_ros.model.mrcfa, dcfm_ros.model.sdcpc) on a
clip: the labeled target x_t and its references (B, R, 3, H, W), oldest first.

- MRCFA (paper Sec. 3.3): "typical cross-entropy loss" on the target's logits.
- SD-CPC (paper eqs. 3-7): L = L_CE + lambda_1 L_CR + lambda_2 L_MF on the target, with
    G_mask = pixels whose joint prediction equals the label (at the variates' resolution, labels
    taken nearest), P_cls (M, C/M) = mean of M^t over the G_mask pixels of class cls, per frame (4);
    L_CR = mean over G_mask pixels i and variates m of log(1 + sum_{p-} exp(M_im . p- / tau) /
           exp(M_im . p+ / tau)), p+ = P_{cls(i), m}, p- = P_{c, m} of the other classes present (5);
    L_MF = mean over G_mask pixels of the mean upper-triangle entry of P_cls(i) P_cls(i)^T (6).
  Features and prototypes are L2-normalised per variate (the dot products are cosines, so tau sets a
  scale as in the contrastive papers SD-CPC cites). A frame with no correct pixel gives 0 for both.
  lambda_1 = lambda_2 = 0 is the paper's "w/o MCP-CL" ablation (the prototypes are not even built).

The trainer logs every objective in the same columns (LossTerms): for these methods
L_I = the target's cross-entropy, L_B = L_CR, L_C = L_MF, mask_ratio = share of labeled pixels
predicted correctly (SD-CPC) or 0 (MRCFA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.training.losses import IGNORE_INDEX, LossTerms, segmentation_ce


def mrcfa_losses(model: nn.Module, x_t: Tensor, y_t: Tensor, x_refs: Tensor,
                 ignore_index: int = IGNORE_INDEX, class_weight: Tensor | None = None) -> LossTerms:
    logits = model.forward_clip(x_t, x_refs)
    ce = segmentation_ce(logits, y_t, ignore_index, class_weight)
    zero = ce.new_zeros(())
    return LossTerms(ce, ce, zero, zero, 0.0)


def labels_at(y: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """(B, H, W) int64 labels -> (B, h, w), nearest (a label is a class, not a quantity)."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def class_prototypes(feats: Tensor, target: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Eq. 4. feats (B, N, M, c) of the G_mask pixels' batch rows, target (B, N) class or -1 (not in
    G_mask) -> (prototypes (B, K, M, c) L2-normalised per variate, counts (B, K))."""
    onehot = F.one_hot(target.clamp(min=0), num_classes).to(feats.dtype) * (target >= 0)[..., None]
    counts = onehot.sum(1)  # (B, K)
    sums = torch.einsum("bnk,bnmc->bkmc", onehot, feats)
    protos = sums / counts.clamp(min=1.0)[..., None, None]
    return F.normalize(protos, dim=-1), counts


def prototype_losses(variates: Tensor, logits: Tensor, y: Tensor, tau: float,
                     ignore_index: int = IGNORE_INDEX) -> tuple[Tensor, Tensor, float]:
    """(L_CR, L_MF, share of labeled pixels predicted correctly) of eqs. 4-6.

    variates M^t (B, M, c, h, w), logits (B, K, h, w) at the same size, y (B, H, W) labels.
    """
    b, m, c, h, w = variates.shape
    k = logits.shape[1]
    y = labels_at(y, (h, w)).reshape(b, -1)
    with torch.no_grad():
        pred = logits.argmax(1).reshape(b, -1)
        labeled = y != ignore_index
        correct = labeled & (pred == y)  # G_mask
        share = float(correct.sum() / labeled.sum().clamp(min=1))
    target = torch.where(correct, y, torch.full_like(y, -1))
    feats = F.normalize(variates.float().permute(0, 3, 4, 1, 2).reshape(b, h * w, m, c), dim=-1)
    protos, counts = class_prototypes(feats, target, k)
    n_g = correct.sum()
    if int(n_g) == 0:
        zero = variates.sum() * 0.0
        return zero, zero, share
    # s[b, n, m, k] = M_{n,m} . P_{k,m} / tau
    s = torch.einsum("bnmc,bkmc->bnmk", feats, protos) / tau
    tgt = target.clamp(min=0)
    s_pos = torch.gather(s, 3, tgt[:, :, None, None].expand(-1, -1, m, 1))  # (B, N, M, 1)
    present = (counts > 0)[:, None, None, :]  # a class without a correct pixel has no prototype
    negative = present & (torch.arange(k, device=s.device) != tgt[..., None, None])
    ratio = (torch.exp(s - s_pos) * negative).sum(-1)  # sum_neg exp(s-)/exp(s+), (B, N, M)
    l_cl = torch.log1p(ratio)
    mask = correct[..., None].to(l_cl.dtype)
    l_cr = (l_cl * mask).sum() / (n_g * m)
    # L_MF: the mean of the upper triangle of P P^T for each G_mask pixel's class
    iu = torch.triu_indices(m, m, offset=1, device=s.device)
    gram = torch.einsum("bkic,bkjc->bkij", protos, protos)[:, :, iu[0], iu[1]].mean(-1)  # (B, K)
    per_pixel = torch.gather(gram, 1, tgt)  # (B, N)
    l_mf = (per_pixel * correct).sum() / n_g if m > 1 else l_cr * 0.0
    return l_cr, l_mf, share


def sdcpc_losses(model: nn.Module, x_t: Tensor, y_t: Tensor, x_refs: Tensor, lambda_cr: float,
                 lambda_mf: float, tau: float, ignore_index: int = IGNORE_INDEX,
                 class_weight: Tensor | None = None) -> LossTerms:
    logits, variates = model.forward_clip_aux(x_t, x_refs)
    ce = segmentation_ce(logits, y_t, ignore_index, class_weight)
    if lambda_cr <= 0 and lambda_mf <= 0:  # ablation "w/o MCP-CL"
        zero = ce.new_zeros(())
        return LossTerms(ce, ce, zero, zero, 0.0)
    l_cr, l_mf, share = prototype_losses(variates, logits, y_t, tau, ignore_index)
    total = ce + lambda_cr * l_cr + lambda_mf * l_mf
    return LossTerms(total, ce, l_cr, l_mf, share)
