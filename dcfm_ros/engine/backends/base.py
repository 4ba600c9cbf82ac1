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

The engine's hot path is one call per frame: `key_frame(x)` (logits and the new common part) and
`nonkey_frame(x, common)` (logits), with extra outputs only when asked for (`want`: f_in for a
deferred deep pass, f for the feature blend, sim for the blend and the feature policy). Graph
backends run one fused graph for each (onnx_export.FRAME_GRAPHS); this base class composes the
stages, which is what the torch backend runs and what every backend runs in the profiling mode
(`stages=True`), where each stage is timed on its own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor

from dcfm_ros.model.layers import DeepState

# The extra outputs a frame call may be asked for (besides logits, and common on a keyframe).
EXTRA_OUTPUTS = ("f_in", "f", "sim")


class StageMarks(Protocol):
    """What a frame call reports its stage boundaries to (engine.device.StageTimer)."""

    def mark(self, stage: str) -> None: ...


@dataclass(frozen=True)
class FrameOutputs:
    """What one frame call returns. Extras are None unless asked for (a backend may fill them anyway
    when they cost nothing)."""

    logits: Tensor | None  # (1, C, h, w) float32 at F's resolution (None with the I/O in the graph)
    common: Tensor | None = None  # the keyframe's common part (key_frame only)
    f_in: Tensor | None = None  # enc_lo's output, for a deep pass started on this frame
    f: Tensor | None = None  # the fused feature before the head (the feature blend's operand)
    sim: Tensor | None = None  # the similarity feature (engine/blend.py, feature policy)
    # with the pre/post-processing in the graph (`camera` given): the labels (1, H, W) at the
    # camera's size and the top softmax probability (1, h, w) at the logits' size
    labels: Tensor | None = None
    top: Tensor | None = None


@dataclass(frozen=True)
class GraphIO:
    """A frame call with the pre/post-processing in the graph (backends with `graph_io`): the camera
    image's (H, W) going in, and the size the labels are made at (the camera's: exact; smaller: the
    engine scales them up with nearest neighbours)."""

    camera: tuple[int, int]
    labels: tuple[int, int]


def _no_camera(net: object, camera: GraphIO | None) -> None:
    if camera is not None:
        raise ValueError(f"{type(net).__name__} runs the stages: it takes the normalised network input, "
                         f"not the camera image (graph_io)")


def _mark(marks: StageMarks | None, stage: str) -> None:
    if marks is not None:
        marks.mark(stage)


class InferenceBackend(ABC):
    """One way of running a DCFM network's stages. Subclasses set `name`, `device`, `precision`."""

    name: ClassVar[str]
    device: torch.device
    precision: str
    # whether key_frame / nonkey_frame take `camera`: the uint8 camera image in, labels out, with the
    # pre/post-processing in the graph (onnx_export.io_variant)
    graph_io: ClassVar[bool] = False
    # why precision "auto" became `precision` (backends.pick_precision); "" when it was asked for
    precision_reason: str = ""
    # whether the stages take a batch of several streams' frames (engine/batching.py); graph
    # backends run graphs exported at batch 1
    batches: ClassVar[bool] = False

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

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        """The network's similarity feature of F_in (DCFM: F_in itself)."""
        return f_in

    # -- one call per frame -------------------------------------------------------------------------

    def key_frame(self, x: Tensor, want: Collection[str] = (), marks: StageMarks | None = None,
                  deep: Callable[[Tensor], Tensor] | None = None,
                  camera: GraphIO | None = None) -> FrameOutputs:
        """A keyframe: logits and its common part (plus `want` of EXTRA_OUTPUTS). Here composed from
        the stages, each reported to `marks`; `deep` replaces enc_hi (the spread schedule times the
        deep units on forced keyframes). `camera` (graph_io backends only): x is the (1, H, W, 3)
        uint8 camera image and labels/top replace the logits."""
        _no_camera(self, camera)
        f_in = self.enc_lo(x)
        _mark(marks, "enc_lo")
        f_co = (deep or self.enc_hi)(f_in)
        _mark(marks, "enc_hi")
        common = self.common_part(f_co)
        return self._finish(f_in, common, want, marks, key=True)

    def nonkey_frame(self, x: Tensor, common: Tensor, want: Collection[str] = (),
                     marks: StageMarks | None = None, camera: GraphIO | None = None) -> FrameOutputs:
        """A non-key frame on a cached common part: logits (plus `want` of EXTRA_OUTPUTS)."""
        _no_camera(self, camera)
        f_in = self.enc_lo(x)
        _mark(marks, "enc_lo")
        return self._finish(f_in, common, want, marks, key=False)

    def key_from_f_in(self, f_in: Tensor, sim: Tensor | None, want: Collection[str] = (),
                      marks: StageMarks | None = None) -> FrameOutputs:
        """A keyframe whose F_in is already computed (the feature policy decides after a non-key
        call): the deep pass and the rest, from the stages."""
        common = self.common_part(self.enc_hi(f_in))
        _mark(marks, "enc_hi")
        out = self._finish(f_in, common, (), marks, key=True)
        return FrameOutputs(out.logits, common, f_in, out.f, sim)

    def _finish(self, f_in: Tensor, common: Tensor, want: Collection[str], marks: StageMarks | None,
                key: bool) -> FrameOutputs:
        f = self.fuse(common, f_in)
        _mark(marks, "ffm")
        logits = self.head(f)
        _mark(marks, "head")
        sim = self.similarity_feature(f_in) if "sim" in want else None
        return FrameOutputs(logits, common if key else None, f_in, f, sim)

    def baseline_logits(self, x: Tensor) -> Tensor:
        """The per-frame baseline head(enc_hi(enc_lo(x))) (dcfm-bench), one call where the backend
        can fuse it."""
        return self.head(self.enc_hi(self.enc_lo(x)))

    def prepare_frames(self, extras: bool, stages: bool) -> None:
        """Get the frame calls ready (graph backends open their graphs): `extras` the variants with
        extra outputs, `stages` the stage graphs (profiling, feature policy, deferred schedules)."""
        return

    def prepare_camera(self, camera: GraphIO, extras: bool) -> None:
        """Get the frame calls with the I/O in the graph ready for a camera size (graph_io backends
        build them per size), key and non-key together, so the first non-key frame at a new size
        does not pay for its graph. A no-op where nothing needs preparing."""
        return

    def prepare_deep_units(self) -> None:
        """Get run_deep_units ready (e.g. open its graphs), so the first piece run on a frame does not
        pay for it. A no-op where nothing needs preparing."""
        return

    def precision_text(self) -> str:
        why = self.precision_reason
        return self.precision + (f", precision auto: {why}" if why else "")

    def describe(self) -> str:
        """One line for logs and diagnostics."""
        return f"{self.name} on {self.device} ({self.precision_text()})"


class _StagePath:
    """A backend whose frame calls run its stages one call each (`InferenceBackend`'s own
    composition), each reported to the timer: the engine's profiling mode. Everything else is the
    backend's."""

    def __init__(self, net: InferenceBackend) -> None:
        self._net = net

    def __getattr__(self, name: str) -> object:
        return getattr(self._net, name)

    def key_frame(self, x: Tensor, want: Collection[str] = (), marks: StageMarks | None = None,
                  deep: Callable[[Tensor], Tensor] | None = None,
                  camera: GraphIO | None = None) -> FrameOutputs:
        return InferenceBackend.key_frame(self._net, x, want, marks, deep, camera)

    def nonkey_frame(self, x: Tensor, common: Tensor, want: Collection[str] = (),
                     marks: StageMarks | None = None, camera: GraphIO | None = None) -> FrameOutputs:
        return InferenceBackend.nonkey_frame(self._net, x, common, want, marks, camera)


def stage_path(net: InferenceBackend) -> InferenceBackend:
    """`net` with its frame calls run stage by stage (the profiling mode, engine option stages)."""
    return _StagePath(net)  # type: ignore[return-value]
