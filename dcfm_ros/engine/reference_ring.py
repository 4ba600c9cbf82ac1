"""P mode for the multi-frame peers (MRCFA, SD-CPC): the whole network on every frame, with the
memories of earlier frames kept in a ring, as MRCFA's test procedure describes ("the reference frames
are already processed in previous steps and the corresponding features can be directly used").

A frame's references are the frames `stride`, 2 * stride, ..., R * stride before it (R = the model's
num_references = T - 1; stride 3 on a 15 Hz video gives both papers' t-3 and t-6), so the ring keeps
the last R * stride frames' memories (model.memory: MRCFA's keys and values at 1/32, SD-CPC's static
semantics S at 1/8). Only frames already output are in it: a later frame never changes an earlier
output. Missing references (the first frames of a stream) are padded as in training
(model.multiframe.pad_references). The ring is emptied on `reset()` and when the image resolution
changes (a different camera or mode: its memories describe another scene), like DCFM's common feature.

StreamEngine hands such models to `ReferenceStream` (its only hook) and wraps the returned fields in
a FrameResult: every frame is a full pass (is_keyframe True, frames_since_key 0); the keyframe policy
and the blend do not apply; schedules other than sync have nothing to move.

Backends: "torch" (eager, the default and "auto") or "onnxruntime": one ONNX graph per model and
input size, exported at start-up, `forward_stream` with the ring as graph inputs
    x (1, 3, H, W), ref{i}_{j} (memory tensor j of reference i, oldest first) -> logits, mem_{j}
The graph takes exactly R references; with none yet (a stream's first frame) it runs once for the
frame's own memory (which does not depend on the references) and again with it as the references,
as pad_references does in torch. The other graph backends export DCFM's stage interface only.
"""

from __future__ import annotations

import io
import time
import warnings
from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dcfm_ros.engine.backends.base import InferenceBackend
from dcfm_ros.engine.confidence import frame_confidence
from dcfm_ros.engine.device import StageTimer, autocast, resolve_device, resolve_precision
from dcfm_ros.engine.preprocess import FramePreprocessor, camera_shape
from dcfm_ros.model.multiframe import Memory, pad_references

_STAGES = ("preprocess", "enc_lo", "enc_hi", "ffm", "head", "network", "postprocess", "total")


def uses_reference_ring(model: nn.Module) -> bool:
    """MRCFA / SD-CPC (dcfm_ros.model.multiframe): models that read earlier frames' memories."""
    return hasattr(model, "num_references") and hasattr(model, "memory")


class ReferenceRing:
    """The memories of the last `num_references * stride` frames, newest last."""

    def __init__(self, num_references: int, stride: int) -> None:
        if int(num_references) < 1 or int(stride) < 1:
            raise ValueError(f"reference ring: num_references and stride must be >= 1, got "
                             f"{num_references}, {stride}")
        self.num_references, self.stride = int(num_references), int(stride)
        self._frames: deque[Memory] = deque(maxlen=self.num_references * self.stride)

    @property
    def capacity(self) -> int:
        return self._frames.maxlen or 0

    def __len__(self) -> int:
        return len(self._frames)

    def references(self) -> list[Memory]:
        """Memories of the frames stride * R, ..., stride * 1 before the next one (oldest first), those
        that exist."""
        n = len(self._frames)
        return [self._frames[n - self.stride * k] for k in range(self.num_references, 0, -1)
                if self.stride * k <= n]

    def push(self, memory: Memory) -> None:
        self._frames.append(memory)

    def reset(self) -> None:
        self._frames.clear()


class _StepGraph(nn.Module):
    """forward_stream with the references' memories as flat tensor arguments (for the export)."""

    def __init__(self, model: nn.Module, n_mem: int) -> None:
        super().__init__()
        self.model, self.n_mem = model, n_mem

    def forward(self, x: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        n, r = self.n_mem, self.model.num_references
        logits, own = self.model.forward_stream(x, [tuple(flat[i * n:(i + 1) * n]) for i in range(r)])
        return (logits, *own)


class OrtStep:
    """The ONNX Runtime session of one model's step graph at one input size (module doc)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int], threads: int | None = None) -> None:
        import onnxruntime as ort

        x = torch.zeros(1, 3, *input_size)
        with torch.no_grad():
            own = model.forward_stream(x, [])[1]
        self.n_mem, r = len(own), model.num_references
        names = ["x"] + [f"ref{i}_{j}" for i in range(r) for j in range(self.n_mem)]
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer warns on every shape-dependent branch
            torch.onnx.export(_StepGraph(model, self.n_mem).eval(), (x, *own * r), buf, input_names=names,
                              output_names=["logits"] + [f"mem_{j}" for j in range(self.n_mem)],
                              opset_version=17, do_constant_folding=True, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(buf.getvalue(), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.names, self.num_references = names, r

    def run(self, x: Tensor, refs: list[Memory]) -> tuple[Tensor, Memory]:
        def call(memories: list[Memory]) -> list[np.ndarray]:
            arrays = [x.cpu().numpy()] + [t.cpu().numpy() for m in memories for t in m]
            return self.session.run(None, dict(zip(self.names, arrays, strict=True)))

        if not refs:  # the frame's own memory first (independent of the references), then as references
            own = tuple(torch.from_numpy(a) for a in call([self._zeros()] * self.num_references)[1:])
            refs = [own] * self.num_references
        out = call(pad_references(refs, refs[0], self.num_references))
        return torch.from_numpy(out[0]), tuple(torch.from_numpy(a) for a in out[1:])

    def _zeros(self) -> Memory:
        shapes = [i.shape for i in self.session.get_inputs()[1:1 + self.n_mem]]
        return tuple(torch.zeros(*s) for s in shapes)


class ReferenceStream:
    """Runs a ring model frame by frame for StreamEngine (see the module doc)."""

    def __init__(self, model: nn.Module, device: str | torch.device = "auto", precision: str = "fp32",
                 stride: int | None = None, backend: str = "torch",
                 input_size: tuple[int, int] | None = None) -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.amp_dtype = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.ring = ReferenceRing(model.num_references, model.default_stride if stride is None else stride)
        self._shape: tuple[int, int] | None = None
        self.name = "torch" if backend in ("torch", "auto") else backend
        self._ort: OrtStep | None = None
        if self.name == "onnxruntime":
            if self.device.type != "cpu" or precision != "fp32":
                raise ValueError(f"{model.model_class} on onnxruntime: CPU fp32 only")
            self._ort = OrtStep(self.model, tuple(input_size or model.config.input_size))

    def describe(self) -> str:
        return f"{self.name} ({self.model.model_class}, references every {self.ring.stride} frames)"

    graph_io = False  # the engine converts the frame (FramePreprocessor) for both paths

    def prepare_frames(self, extras: bool = False, stages: bool = False) -> None:
        """Nothing to build per frame kind: one path (StreamEngine calls this at start-up)."""

    def prepare_deep_units(self) -> None:
        raise ValueError(f"{self.model.model_class} has no keyframes (every frame runs the whole network): "
                         "the keyframe schedule must be sync")

    def reset(self) -> None:
        self.ring.reset()
        self._shape = None

    def process(self, image_rgb: np.ndarray, pre: FramePreprocessor,
                camera: tuple[int, int] | None = None) -> dict[str, Any]:
        """One frame -> the FrameResult fields, the labels at `camera` (a reduced decode's camera
        size) or the image's. The ring takes the frame's memory only once its output exists (a
        failing frame leaves the ring as it was)."""
        t_start = time.perf_counter()
        shape = camera_shape(image_rgb, camera)
        model, timer = self.model, StageTimer(self.device)
        refs = self.ring.references() if shape == self._shape else []
        with torch.inference_mode():
            timer.start()
            x = pre.normalize(pre.upload(image_rgb))
            timer.mark("preprocess")
            if self._ort is not None:  # one graph: backbone, memory, temporal decoder, head
                logits, own = self._ort.run(x, refs)
                timer.mark("enc_hi")
            else:
                with autocast(self.device, self.amp_dtype):
                    feats, fused = model.backbone(x)
                    timer.mark("enc_hi")
                    own = model.memory(feats, fused)
                    logits = model.decode(feats, fused, pad_references(refs, own, model.num_references))
                timer.mark("ffm")  # the temporal decoder and the head: one call
            logits = logits.float()
            labels = pre.labels(logits, shape)
            confidence = frame_confidence(logits)
            timer.mark("postprocess")
        if shape != self._shape:
            self.ring.reset()
        self.ring.push(own)
        self._shape = shape
        timings = dict.fromkeys(_STAGES, 0.0)
        timings.update(timer.read())
        timings["network"] = timings["enc_hi"] + timings["ffm"]
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        return {"labels": labels, "is_keyframe": True, "frames_since_key": 0, "motion_score": 0.0,
                "timings_ms": timings, "confidence": confidence, "common_age": 0,
                "deep_pass_in_flight": False, "low_similarity": 0.0}


def reference_stream(model: nn.Module, backend: str | InferenceBackend, device: str | torch.device,
                     precision: str, stride: int | None,
                     input_size: tuple[int, int] | None = None) -> ReferenceStream | None:
    """The engine's path for a ring model (None for DCFM / TFC)."""
    if isinstance(backend, ReferenceStream):  # built by the caller (engine/settings.py)
        return backend
    if not uses_reference_ring(model):
        if stride is not None:
            raise ValueError("reference_stride applies to MRCFA / SD-CPC checkpoints only")
        return None
    name = backend if isinstance(backend, str) else getattr(backend, "name", type(backend).__name__)
    if name not in ("torch", "auto", "onnxruntime"):
        raise ValueError(f"{model.model_class} runs on the torch or onnxruntime backend (got {name!r}): the "
                         "other graph backends export DCFM's stage interface, not a reference ring "
                         "(docs/peers.md)")
    if precision == "auto":  # the peers were measured in fp32 only (docs/peers.md); bf16 is OpenVINO's
        precision = "fp32"
    return ReferenceStream(model, device, precision, stride, name, input_size)
