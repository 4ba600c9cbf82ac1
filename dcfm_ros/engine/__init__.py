"""dcfm_ros.engine: streaming P mode, offline B mode, keyframe policies, device/precision, colouring.

Depends on dcfm_ros.model only through the DCFM module interface (enc_lo, enc_hi, ffm, head,
config); never imports rclpy.
"""

from dcfm_ros.engine.backends import BACKENDS, InferenceBackend, TorchBackend, make_backend
from dcfm_ros.engine.bmode import fixed_keyframes, run_bmode, run_pmode, select_keyframes
from dcfm_ros.engine.device import PRECISIONS, resolve_device, resolve_precision
from dcfm_ros.engine.keyframe import (
    POLICIES,
    FixedInterval,
    KeyframePolicy,
    MotionThreshold,
    make_policy,
)
from dcfm_ros.engine.preprocess import validate_image
from dcfm_ros.engine.stream import TIMING_KEYS, FrameResult, StreamEngine
from dcfm_ros.engine.visualize import class_mask, colorize, overlay

__all__ = [
    "BACKENDS",
    "POLICIES",
    "PRECISIONS",
    "TIMING_KEYS",
    "FixedInterval",
    "FrameResult",
    "InferenceBackend",
    "KeyframePolicy",
    "MotionThreshold",
    "StreamEngine",
    "TorchBackend",
    "class_mask",
    "colorize",
    "fixed_keyframes",
    "make_backend",
    "make_policy",
    "overlay",
    "resolve_device",
    "resolve_precision",
    "run_bmode",
    "run_pmode",
    "select_keyframes",
    "validate_image",
]
