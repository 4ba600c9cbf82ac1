"""Inference backends behind one interface (`InferenceBackend`), chosen by name.

`torch` (eager PyTorch) is always there; others register in BACKENDS as they are added.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dcfm_ros.engine.backends.base import InferenceBackend
from dcfm_ros.engine.backends.torch_backend import TorchBackend
from dcfm_ros.model import DCFM

# name -> factory(model, device, precision)
BACKENDS: dict[str, Callable[[DCFM, str | torch.device, str], InferenceBackend]] = {
    "torch": TorchBackend,
}


def make_backend(name: str, model: DCFM, device: str | torch.device = "auto",
                 precision: str = "fp32") -> InferenceBackend:
    """Build backend `name` for `model`; an unknown name is a ValueError that lists the known ones."""
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; expected one of: {', '.join(BACKENDS)}") from None
    return factory(model, device, precision)


__all__ = ["BACKENDS", "InferenceBackend", "TorchBackend", "make_backend"]
