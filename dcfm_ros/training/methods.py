"""Which network and objective dcfm-train runs: DCFM (the paper's) or TFC (the comparison method).

Kept out of train.py so that the trainer's loop only asks three questions: which model
(`build_training_model`), whether the neighbour's label must be loaded (`needs_neighbour_labels`),
and the loss of a batch (`training_losses`).
"""

from __future__ import annotations

from torch import Tensor, nn

from dcfm_ros.model import CheckpointError, DCFMConfig, build_model, load_checkpoint, read_checkpoint_meta
from dcfm_ros.model.tfc import build_tfc
from dcfm_ros.training.config import TrainConfig
from dcfm_ros.training.losses import LossTerms, MeanFn, dcfm_losses, tfc_losses


def build_training_model(cfg: TrainConfig, mcfg: DCFMConfig) -> nn.Module:
    """model.pretrained: backbone weights ("package", a file), or for TFC also a dcfm_ros DCFM
    checkpoint: TFC then starts from that DCFM's backbone and decoder (TFC.init_from_dcfm)."""
    pretrained = cfg.model.pretrained
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


def training_losses(model: nn.Module, x_l: Tensor, y_l: Tensor, x_u: Tensor, y_u: Tensor | None, *,
                    cfg: TrainConfig, class_weight: Tensor | None, mean: MeanFn | None = None) -> LossTerms:
    """One batch's objective for cfg.model.method. `mean` (DDP: the global-batch mean, see losses)
    applies to DCFM's terms; TFC's terms are per-rank means (under DDP their gradients are still
    averaged over the ranks)."""
    loss, ignore = cfg.loss, cfg.dataset.ignore_index
    if cfg.model.method == "tfc":
        if y_u is None:
            raise ValueError("TFC training needs the neighbour's label")
        return tfc_losses(model, x_l, y_l, x_u, y_u, float(loss.lambda_sim), ignore, class_weight)
    return dcfm_losses(model, x_l, y_l, x_u, float(loss.lambda_b), float(loss.lambda_c),  # type: ignore[arg-type]
                       ignore, class_weight, mean=mean, lambda_sim=float(loss.lambda_sim), y_u=y_u)
