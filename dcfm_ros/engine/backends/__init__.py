"""Inference backends behind one interface (`InferenceBackend`), chosen by name.

`torch` (eager PyTorch) is always there; `onnxruntime` and `openvino` need their packages,
`tensorrt` the tensorrt package and a CUDA GPU. `auto` picks the fastest one available for the device
(measured, see README "Engine and benchmarks"): CPU -> openvino, else onnxruntime, else torch; CUDA ->
tensorrt, else onnxruntime with a GPU provider (fp32 only), else torch.

Options every factory takes (and may ignore): input_size (H, W) the engine runs at (graph-based
backends prepare it at construction), cache_dir (where exported graphs and engines are kept).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

import torch

from dcfm_ros.engine.backends.base import InferenceBackend
from dcfm_ros.engine.backends.torch_backend import TorchBackend
from dcfm_ros.engine.device import resolve_device
from dcfm_ros.model import DCFM


def _onnxruntime(model: DCFM, device: str | torch.device, precision: str, **options: Any) -> InferenceBackend:
    from dcfm_ros.engine.backends.ort_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, device, precision, **options)


def _openvino(model: DCFM, device: str | torch.device, precision: str, **options: Any) -> InferenceBackend:
    from dcfm_ros.engine.backends.openvino_backend import OpenVINOBackend

    return OpenVINOBackend(model, device, precision, **options)


def _tensorrt(model: DCFM, device: str | torch.device, precision: str, **options: Any) -> InferenceBackend:
    from dcfm_ros.engine.backends.trt_backend import TensorRTBackend

    return TensorRTBackend(model, device, precision, **options)


# name -> factory(model, device, precision, **options)
BACKENDS: dict[str, Callable[..., InferenceBackend]] = {
    "torch": TorchBackend,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "tensorrt": _tensorrt,
}
BACKEND_CHOICES = ("auto", *BACKENDS)


def resolve_backend(name: str, device: str | torch.device = "auto", precision: str = "fp32") -> str:
    """The backend `name` stands for on `device` ("auto" -> a concrete name); others pass through."""
    if name != "auto":
        return name
    dev = resolve_device(device)
    if dev.type == "cuda":
        if find_spec("tensorrt") is not None and precision in ("auto", "fp32", "fp16"):
            return "tensorrt"
        from dcfm_ros.engine.backends.ort_backend import ort_cuda_providers

        if precision in ("auto", "fp32") and ort_cuda_providers():
            return "onnxruntime"
        return "torch"
    if precision == "bf16":
        return "openvino" if find_spec("openvino") is not None else "torch"
    if precision == "int8":  # torch refuses it with a message naming these two
        for name in ("openvino", "onnxruntime"):
            if find_spec(name) is not None:
                return name
        return "torch"
    if precision not in ("auto", "fp32"):
        return "torch"
    for name in ("openvino", "onnxruntime"):
        if find_spec(name) is not None:
            return name
    return "torch"


def pick_precision(backend: str, device: str | torch.device = "auto") -> tuple[str, str]:
    """(precision, why) that precision "auto" stands for on `backend` (a concrete name) and `device`:
    the fastest one this backend has here among those measured to keep the labels (docs/fast-path.md:
    bf16 on OpenVINO kept CamVid val mIoU within 0.1 of fp32, 99.7 % of the pixels' labels)."""
    dev = resolve_device(device)
    if backend == "openvino" and dev.type == "cpu":
        from dcfm_ros.engine.backends.openvino_backend import cpu_capabilities

        caps = ", ".join(cpu_capabilities())
        if "BF16" in caps.split(", "):
            return "bf16", f"bf16, the CPU computes it natively (OpenVINO capabilities {caps})"
        return "fp32", f"fp32, the CPU has no native bf16 (OpenVINO capabilities {caps})"
    if backend == "tensorrt":
        return "fp16", "fp16 on the GPU (TensorRT)"
    return "fp32", f"fp32, the only precision measured for backend {backend!r} on {dev.type}"


def make_backend(name: str, model: DCFM, device: str | torch.device = "auto",
                 precision: str = "fp32", **options: Any) -> InferenceBackend:
    """Build backend `name` (or "auto") for `model`; an unknown name is a ValueError that lists the known
    ones. options: input_size, cache_dir (see the module doc)."""
    resolved = resolve_backend(name, device, precision) if name == "auto" else name
    try:
        factory = BACKENDS[resolved]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of: {', '.join(BACKEND_CHOICES)}") from None
    reason = ""
    if precision == "auto":
        precision, reason = pick_precision(resolved, device)
    backend = factory(model, device, precision, **options)
    backend.precision_reason = reason
    return backend


__all__ = ["BACKENDS", "BACKEND_CHOICES", "InferenceBackend", "TorchBackend", "make_backend",
           "pick_precision", "resolve_backend"]
