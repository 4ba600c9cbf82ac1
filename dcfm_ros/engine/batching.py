"""Several streams' frames as one batched pass through the stages (several cameras, one node).

A round of a multi-camera node holds at most one frame per camera; each camera has its own stream
state, so the round mixes keyframes (the whole encoder) and non-key frames (enc_lo and the cached
common part of that camera's keyframe). Batched, the round is

    F_in   = enc_lo(x_1 .. x_N)                        every frame, one call
    F_co   = enc_hi(F_in[keys]); common = common_part(F_co)   the keyframes only, one call
    F      = fuse(common_1 .. common_N, F_in)          each frame with its own camera's common part
    logits = head(F)

so a keyframe on one camera never touches another's common part: each row of the batch carries its
own. Only a backend whose stages take a batch dimension can do this (`InferenceBackend.batches`:
torch; the exported graphs are fixed at batch 1). Whether it pays is a measurement
(docs/multicamera.md: slower than one frame at a time on a 2-core CPU, so the node turns it on only
on CUDA).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import FrameOutputs, InferenceBackend, StageMarks


@dataclass(frozen=True)
class BatchCall:
    """One frame of a batch: its normalised input (1, 3, H, W), the common part of its camera's
    keyframe (None: this frame is a keyframe, its common part is computed) and the extra outputs it
    needs (backends.base.EXTRA_OUTPUTS)."""

    x: Tensor
    common: Tensor | None
    want: Collection[str] = ()


class _AllMarks:
    """Stage boundaries reported to every frame's timer: a frame of a batch waits for all of it."""

    def __init__(self, marks: Sequence[StageMarks]) -> None:
        self._marks = marks

    def mark(self, stage: str) -> None:
        for m in self._marks:
            m.mark(stage)


def run_batch(net: InferenceBackend, calls: Sequence[BatchCall],
              marks: Sequence[StageMarks] = ()) -> list[FrameOutputs]:
    """The frames of `calls` through `net`'s stages as one batch (see the module doc); one
    FrameOutputs per call, in order, as `key_frame` / `nonkey_frame` would return them."""
    if not calls:
        return []
    if not net.batches:
        raise ValueError(f"backend {net.name} runs one frame per call (its graphs have batch 1); "
                         "run the frames one at a time")
    shapes = {tuple(c.x.shape[1:]) for c in calls}
    if len(shapes) != 1 or any(c.x.shape[0] != 1 for c in calls):
        raise ValueError(f"a batch needs (1, 3, H, W) inputs of one size, got "
                         f"{sorted(tuple(c.x.shape) for c in calls)}")
    timer = _AllMarks(marks)
    f_in = net.enc_lo(torch.cat([c.x for c in calls]))
    timer.mark("enc_lo")
    keys = [i for i, c in enumerate(calls) if c.common is None]
    new_common: dict[int, Tensor] = {}
    if keys:
        rows = f_in[keys] if len(keys) < len(calls) else f_in
        common = net.common_part(net.enc_hi(rows))
        new_common = {i: common[j:j + 1] for j, i in enumerate(keys)}
        timer.mark("enc_hi")
    commons = [new_common[i] if c.common is None else c.common for i, c in enumerate(calls)]
    f = net.fuse(torch.cat(commons), f_in)
    timer.mark("ffm")
    logits = net.head(f)
    timer.mark("head")
    want_sim = [i for i, c in enumerate(calls) if "sim" in c.want]
    sim = net.similarity_feature(f_in) if want_sim else None
    return [FrameOutputs(logits[i:i + 1], new_common.get(i), f_in[i:i + 1], f[i:i + 1],
                         sim[i:i + 1] if sim is not None and "sim" in c.want else None)
            for i, c in enumerate(calls)]
