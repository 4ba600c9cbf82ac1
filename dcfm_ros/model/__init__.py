"""dcfm_ros.model: the DCFM network in pure PyTorch (no ROS), its config and checkpoints."""

from dcfm_ros.model.backbone import BACKBONES, build_split_encoder
from dcfm_ros.model.build import build_model
from dcfm_ros.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta, save_checkpoint
from dcfm_ros.model.config import (
    CAMVID_CLASSES,
    CAMVID_IGNORE_INDEX,
    CAMVID_PALETTE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DCFMConfig,
)
from dcfm_ros.model.dcfm import DCFM, FFM, upsample_logits
from dcfm_ros.model.layers import DeepUnit, SplitEncoder, run_deep_units
from dcfm_ros.model.weights import WeightLoadError, load_into, read_state_dict

__all__ = [
    "BACKBONES",
    "CAMVID_CLASSES",
    "CAMVID_IGNORE_INDEX",
    "CAMVID_PALETTE",
    "DCFM",
    "FFM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CheckpointError",
    "DCFMConfig",
    "DeepUnit",
    "SplitEncoder",
    "WeightLoadError",
    "build_model",
    "build_split_encoder",
    "load_checkpoint",
    "load_into",
    "read_checkpoint_meta",
    "read_state_dict",
    "run_deep_units",
    "save_checkpoint",
    "upsample_logits",
]
