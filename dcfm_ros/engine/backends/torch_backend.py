"""The eager PyTorch backend: the model's own modules, under autocast for fp16/bf16 on CUDA.

channels_last (NHWC) weights and inputs: oneDNN's and cuDNN's convolutions run natively in that
layout, so the per-layer layout conversions of NCHW go away (measured in README "Engine and
benchmarks"). Results equal NCHW's up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import InferenceBackend
from dcfm_ros.engine.device import autocast, resolve_device, resolve_precision
from dcfm_ros.model import DCFM
from dcfm_ros.model.layers import DeepState, run_deep_units


def _count_params(module: torch.nn.Module) -> float:
    return float(sum(p.numel() for p in module.parameters()))


class TorchBackend(InferenceBackend):
    """Runs `model` in eval mode on `device` (moved there)."""

    name = "torch"
    batches = True  # the model's modules take any batch size

    def __init__(self, model: DCFM, device: str | torch.device = "auto", precision: str = "fp32", *,
                 channels_last: bool = True, **_: Any) -> None:
        self.device = resolve_device(device)
        if precision == "int8":
            raise ValueError("backend 'torch' has no int8: precision 'int8' (post-training quantization) "
                             "runs on backend 'openvino' or 'onnxruntime'; pick one of them, or precision "
                             "'fp32' / 'auto' on torch")
        self.precision = precision
        self.amp_dtype = resolve_precision(precision, self.device)
        self.channels_last = channels_last
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self._units = model.deep_units()

    @property
    def num_deep_units(self) -> int:
        return len(self._units)

    def deep_unit_costs(self) -> list[float]:
        # Parameter count is a rough stand-in for cost; a subclass or caller may time the pieces.
        return [max(_count_params(u), 1.0) for u in self._units]

    def enc_lo(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            return self.model.enc_lo(x)

    def enc_hi(self, f_in: Tensor) -> Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.model.enc_hi(f_in)

    def run_deep_units(self, start: int, stop: int, state: DeepState) -> DeepState:
        if not 0 <= start <= stop <= len(self._units):
            raise ValueError(f"deep units {start}..{stop} outside 0..{len(self._units)}")
        with autocast(self.device, self.amp_dtype):
            return run_deep_units(self._units[start:stop], state)

    def common_part(self, f_co: Tensor) -> Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.model.ffm.common_part(f_co)

    def fuse(self, common: Tensor, f_in: Tensor) -> Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.model.ffm.fuse_with_common(common, f_in)

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.model.similarity_feature(f_in)

    def head(self, f: Tensor) -> Tensor:
        with autocast(self.device, self.amp_dtype):
            return self.model.head(f).float()
