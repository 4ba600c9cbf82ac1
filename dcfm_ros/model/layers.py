"""Pieces every backbone and the DCFM network share; below both, so imports point one way.

`backbone` (the registry) -> `mit`, `resnet`, `efficientnet` -> `layers`; `dcfm` -> `layers`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

# A piece of the deep pass: the state is a tuple of tensors, (F_in,) before the first piece and
# (F_co,) after the last; what lies in between is each backbone's own (e.g. the stage outputs an
# all-MLP decoder still needs).
DeepState = tuple[Tensor, ...]


class DeepUnit(nn.Module):
    """One piece of `enc_hi`, `state -> state`, over modules owned by the enc_hi it was cut from.

    Units are built on demand by `enc_hi.deep_units()` and are not registered as submodules of
    enc_hi, so the state dict (and every checkpoint) is the same with or without them.
    """

    def __init__(self, name: str, fn: Callable[..., DeepState], modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.unit_name = name
        self._fn = fn
        # Registered here (not on enc_hi) so .to() / .eval() / export see the weights a unit uses.
        self.parts = nn.ModuleList(modules)

    def forward(self, *state: Tensor) -> DeepState:
        return self._fn(*state)

    def extra_repr(self) -> str:
        return self.unit_name


def run_deep_units(units: Sequence[nn.Module], state: DeepState) -> DeepState:
    """Apply `units` in order (a contiguous slice of enc_hi.deep_units())."""
    for unit in units:
        state = unit(*state)
    return state


@dataclass
class SplitEncoder:
    """One backbone cut in two, with the widths the FFM needs.

    enc_lo: x (B, 3, H, W), normalised -> F_in (B, lo_channels, H / 4, W / 4), raw.
    enc_hi: F_in -> F_co (B, co_channels, H / co_stride, W / co_stride), raw (before Norm).
            It also provides `deep_units() -> list[DeepUnit]`, the same computation in pieces:
            run_deep_units(enc_hi.deep_units(), (F_in,)) == (enc_hi(F_in),).
    ffm_lo_channels: how many leading channels of F_in the FFM concatenates with F_co.
    """

    enc_lo: nn.Module
    enc_hi: nn.Module
    lo_channels: int
    co_channels: int
    co_stride: int
    ffm_lo_channels: int


def init_new_layers(module: nn.Module) -> None:
    """Initialise layers no pretrained file provides (FFM, head, PPM, fuse): He convs, identity BN."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
