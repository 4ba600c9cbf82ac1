"""InferenceBackend: the network stages the engine calls, whatever runs them.

The engine (P mode, B mode, keyframe schedules) never touches the model's modules itself; it calls
these stages, so every schedule and every output is the same on every backend. Tensors cross the
interface as torch tensors on `device` (a backend that runs elsewhere, e.g. ONNX Runtime, converts
at its own boundary; on the CPU that is a zero-copy view).

    keyframe:      F_in = enc_lo(x); F_co = enc_hi(F_in); common = common_part(F_co)
    non-key frame: F_in = enc_lo(x); logits = head(fuse(common, F_in)) with the keyframe's common
    deep pass in pieces: run_deep_units(0, k, (F_in,)) ... run_deep_units(j, n, state) == (F_co,)

x is the preprocessed, normalised (1, 3, H, W) float32 image; logits are (1, C, h, w) at F's
resolution (upsampling and argmax are the engine's).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor

from dcfm_ros.model.layers import DeepState


class InferenceBackend(ABC):
    """One way of running a DCFM network's stages. Subclasses set `name`, `device`, `precision`."""

    name: ClassVar[str]
    device: torch.device
    precision: str

    @abstractmethod
    def enc_lo(self, x: Tensor) -> Tensor:
        """Normalised image (1, 3, H, W) -> F_in (raw)."""

    @abstractmethod
    def enc_hi(self, f_in: Tensor) -> Tensor:
        """F_in -> F_co (raw): the whole deep pass at once."""

    @property
    @abstractmethod
    def num_deep_units(self) -> int:
        """How many pieces the deep pass is cut into (>= 1)."""

    @abstractmethod
    def deep_unit_costs(self) -> list[float]:
        """Relative cost of each piece (any unit; only ratios matter), for grouping them evenly."""

    @abstractmethod
    def run_deep_units(self, start: int, stop: int, state: DeepState) -> DeepState:
        """Pieces start..stop-1 of the deep pass; (F_in,) before piece 0, (F_co,) after the last."""

    @abstractmethod
    def common_part(self, f_co: Tensor) -> Tensor:
        """The keyframe-only half of the FFM (cached until the next keyframe)."""

    @abstractmethod
    def fuse(self, common: Tensor, f_in: Tensor) -> Tensor:
        """F from the cached common part and the current frame's F_in."""

    @abstractmethod
    def head(self, f: Tensor) -> Tensor:
        """F -> logits at F's resolution, float32."""

    def prepare_deep_units(self) -> None:
        """Get run_deep_units ready (e.g. open its graphs), so the first piece run on a frame does not
        pay for it. A no-op where nothing needs preparing."""
        return

    def describe(self) -> str:
        """One line for logs and diagnostics."""
        return f"{self.name} on {self.device} ({self.precision})"
