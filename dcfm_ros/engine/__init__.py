"""dcfm_ros.engine: streaming P mode, offline B mode, keyframe policies, schedules, backends,
device/precision, colouring.

Depends on dcfm_ros.model only through the network interface (enc_lo, enc_hi, ffm, head, config);
never imports rclpy. The names below load on first use (PEP 562), so a torch-free submodule
(`dcfm_ros.engine.specs`: names and spec grammars) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BACKENDS": "backends", "InferenceBackend": "backends", "TorchBackend": "backends",
    "make_backend": "backends",
    "fixed_keyframes": "bmode", "run_bmode": "bmode", "run_pmode": "bmode", "select_keyframes": "bmode",
    "PRECISIONS": "device", "resolve_device": "device", "resolve_precision": "device",
    "POLICIES": "keyframe", "FixedInterval": "keyframe", "KeyframePolicy": "keyframe",
    "MotionThreshold": "keyframe", "make_policy": "keyframe", "build_policy": "keyframe",
    "validate_image": "preprocess",
    "TIMING_KEYS": "stream", "FrameResult": "stream", "StreamEngine": "stream",
    "class_mask": "visualize", "colorize": "visualize", "overlay": "visualize",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
