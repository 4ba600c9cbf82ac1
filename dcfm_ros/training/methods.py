"""Which network and objective dcfm-train runs: DCFM (the paper's), or a comparison method: TFC
(pairs), MRCFA and SD-CPC (clips of a target and its earlier references, datasets/clips.py).

Kept out of train.py so that the trainer's loop only asks four questions: which model
(`build_training_model`), which training set (`training_set`), how a batch's frames are normalised
(`normalize_frames`), and the loss of a batch (`training_losses`).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn
from torch.utils.data import Dataset

from dcfm_ros.data.datasets import PairDataset, pair_samples
from dcfm_ros.data.datasets.clips import ClipDataset, clip_samples
from dcfm_ros.data.datasets.labeled_pairs import LabeledPairDataset
from dcfm_ros.data.transforms import PairAugment
from dcfm_ros.model import CheckpointError, DCFMConfig, build_model, load_checkpoint, read_checkpoint_meta
from dcfm_ros.model.mrcfa import build_mrcfa
from dcfm_ros.model.sdcpc import build_sdcpc
from dcfm_ros.model.tfc import build_tfc
from dcfm_ros.training.config import TrainConfig
from dcfm_ros.training.losses import LossTerms, MeanFn, dcfm_losses, tfc_losses
from dcfm_ros.training.peer_losses import mrcfa_losses, sdcpc_losses

CLIP_METHODS = {"mrcfa": build_mrcfa, "sdcpc": build_sdcpc}  # T - 1 = model.num_references references


def build_training_model(cfg: TrainConfig, mcfg: DCFMConfig) -> nn.Module:
    """model.pretrained: backbone weights ("package", a file), or for TFC also a dcfm_ros DCFM
    checkpoint: TFC then starts from that DCFM's backbone and decoder (TFC.init_from_dcfm)."""
    pretrained = cfg.model.pretrained
    if cfg.model.method in CLIP_METHODS:
        return CLIP_METHODS[cfg.model.method](mcfg, pretrained, **cfg.model.options)
    if cfg.model.method == "tfc":
        if pretrained not in (None, "package") and _is_checkpoint(pretrained):
            model = build_tfc(mcfg, None)
            model.init_from_dcfm(load_checkpoint(pretrained)[0])
            return model
        return build_tfc(mcfg, pretrained)
    return build_model(mcfg, pretrained)


def _is_checkpoint(path: str) -> bool:
    try:
        read_checkpoint_meta(path)
    except CheckpointError:
        return False
    return True


def needs_neighbour_labels(cfg: TrainConfig) -> bool:
    return cfg.model.method == "tfc" or float(cfg.loss.lambda_sim) > 0


def training_set(cfg: TrainConfig, model: nn.Module, lut: np.ndarray, augment: PairAugment) -> Dataset:
    """Pairs (DCFM, TFC: labeled neighbours when needed) or clips (MRCFA, SD-CPC: the target and
    its model.num_references earlier frames of the train split's frame list, 1 apart)."""
    d = cfg.dataset
    if cfg.model.method in CLIP_METHODS:
        return ClipDataset(clip_samples(d.type, d.root, d.train_split, int(model.num_references)), lut,
                           augment)
    pairs = pair_samples(d.type, d.root, d.train_split, d.neighbour_offsets)
    dataset = LabeledPairDataset if needs_neighbour_labels(cfg) else PairDataset  # L_sim, TFC
    return dataset(pairs, lut, augment)


def normalize_frames(model: nn.Module, x: Tensor) -> Tensor:
    """model.normalize_input for (B, 3, H, W) frames or (B, R, 3, H, W) clips of references."""
    if x.dim() == 5:
        return model.normalize_input(x.flatten(0, 1)).view(*x.shape[:2], *x.shape[2:]).contiguous()
    return model.normalize_input(x)


def training_losses(model: nn.Module, x_l: Tensor, y_l: Tensor, x_u: Tensor, y_u: Tensor | None, *,
                    cfg: TrainConfig, class_weight: Tensor | None, mean: MeanFn | None = None) -> LossTerms:
    """One batch's objective for cfg.model.method. `mean` (DDP: the global-batch mean, see losses)
    applies to DCFM's terms; TFC's terms are per-rank means (under DDP their gradients are still
    averaged over the ranks)."""
    loss, ignore = cfg.loss, cfg.dataset.ignore_index
    if cfg.model.method == "mrcfa":
        return mrcfa_losses(model, x_l, y_l, x_u, ignore, class_weight)
    if cfg.model.method == "sdcpc":
        return sdcpc_losses(model, x_l, y_l, x_u, loss.lambda_cr, loss.lambda_mf, loss.tau, ignore,
                            class_weight)
    if cfg.model.method == "tfc":
        if y_u is None:
            raise ValueError("TFC training needs the neighbour's label")
        return tfc_losses(model, x_l, y_l, x_u, y_u, float(loss.lambda_sim), ignore, class_weight)
    return dcfm_losses(model, x_l, y_l, x_u, float(loss.lambda_b), float(loss.lambda_c),  # type: ignore[arg-type]
                       ignore, class_weight, mean=mean, lambda_sim=float(loss.lambda_sim), y_u=y_u)
