"""StreamNetwork: what a network must offer for StreamEngine (and the backends) to run it.

The engine and the backends call the paper's stages by name (enc_lo, enc_hi, ffm.common_part /
ffm.fuse_with_common, head, the deep units) and ask the network two things about itself: which
shallow feature its similarity (blend, feature policy) compares, and whether its fused feature F is
unit length (the feature blend renormalises a mix of unit vectors). DCFM and TFC satisfy it; a new
model joins by providing these members, not by the engine testing its class name.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class StreamNetwork(Protocol):
    """The network a stream runs (dcfm_ros.model.DCFM, dcfm_ros.model.tfc.TFC)."""

    config: Any  # DCFMConfig: num_classes, class_names, palette, input_size, mean, std
    enc_lo: Any  # x -> F_in
    enc_hi: Any  # F_in -> F_co (the deep pass)
    ffm: Any  # common_part(F_co), fuse_with_common(common, F_in) -> F
    head: Any  # F -> logits
    model_class: str  # written into checkpoints
    default_blend: str  # the nonkey_blend "auto" stands for (engine/blend.py)
    unit_feature: bool  # F leaves the FFM L2-normalised (DCFM), so a blended F is normalised again

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        """The shallow feature whose cosine similarity the blend and the feature policy use."""
        ...

    def deep_units(self) -> list[Any]:
        """enc_hi in pieces (the spread schedule)."""
        ...


def check_network(model: object) -> StreamNetwork:
    """`model` if it satisfies StreamNetwork, else a ValueError naming what it lacks."""
    if isinstance(model, StreamNetwork):
        return model
    members = ("config", "enc_lo", "enc_hi", "ffm", "head", "model_class", "default_blend",
               "unit_feature", "similarity_feature", "deep_units")
    missing = [m for m in members if not hasattr(model, m)]
    raise ValueError(f"{type(model).__name__} is not a network the stream engine can run: it lacks "
                     f"{', '.join(missing)} (see dcfm_ros.engine.network.StreamNetwork)")
