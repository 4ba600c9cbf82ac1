"""The OpenVINO backend (CPU): the same exported stage graphs as onnxruntime, compiled by OpenVINO.

Kept because it beat ONNX Runtime on this project's CPU (see README "Engine and benchmarks"). The
graphs, the cache and the stale/foreign checks are the onnxruntime backend's; only opening a graph
(compile_model, fp32 inference precision, torch's thread count) and running it differ, and where a
frame graph takes the camera's image (graph I/O) its pre-processing is OpenVINO's PrePostProcessor
rather than ONNX ops; where the labels are made at the network's size (the cheap mode for large
cameras) it resizes the uint8 image before converting it (docs/fast-path.md: at a 1920x1080 camera
0.77x the node's non-key frame time of the ONNX ops, which resize in f32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import GraphIO
from dcfm_ros.engine.backends.onnx_export import (
    GraphSpec,
    StaleExportError,
    check_metadata,
    read_graph_metadata,
)
from dcfm_ros.engine.backends.ort_backend import OnnxRuntimeBackend, _feed, _GraphSet


def openvino_available() -> bool:
    return find_spec("openvino") is not None


def cpu_capabilities(core: Any = None) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU (e.g. FP32, BF16, INT8); [] without openvino."""
    if not openvino_available():
        return []
    import openvino as ov

    return [str(c) for c in (core or ov.Core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def cpu_has_bf16(core: Any = None) -> bool:
    return "BF16" in cpu_capabilities(core)


def with_preprocessing(model: Any, camera: tuple[int, int], mean: Sequence[float],
                       std: Sequence[float], resize_u8: bool = False) -> Any:
    """OpenVINO model `model` (a frame graph whose input `x` is the network's normalised NCHW float
    image) taking instead the camera's uint8 RGB image `image` (1, H, W, 3), `camera` = (H, W): f32,
    bilinear resize to x's size (where the sizes differ), mean/std of the 0..1 image, NHWC -> NCHW,
    as the engine's preprocess. `resize_u8`: resize before the f32 conversion, on the uint8 values
    (a quarter of the bytes; the resized values are rounded, which tips a few labels)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor, ResizeAlgorithm

    ppp = PrePostProcessor(model)
    x = ppp.input("x")
    x.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_spatial_static_shape(*camera)
    x.model().set_layout(ov.Layout("NCHW"))
    steps = x.preprocess()
    resize = tuple(camera) != tuple(model.input("x").get_shape()[2:])
    if resize and resize_u8:
        steps.resize(ResizeAlgorithm.RESIZE_LINEAR)
    steps.convert_element_type(ov.Type.f32)
    if resize and not resize_u8:
        steps.resize(ResizeAlgorithm.RESIZE_LINEAR)
    steps.mean([255.0 * m for m in mean]).scale([255.0 * s for s in std])
    out = ppp.build()
    out.input(0).get_tensor().set_names({"image"})
    return out


class OpenVINOBackend(OnnxRuntimeBackend):
    """Runs `model`'s exported graphs with OpenVINO on the CPU (fp32)."""

    name = "openvino"
    onnx_pre = False  # graph I/O: with_preprocessing

    def _init_runtime(self, precision: str) -> None:
        if not openvino_available():
            raise RuntimeError("backend 'openvino' needs the openvino package (pip install openvino)")
        import openvino as ov

        self._ov = ov
        if self.device.type != "cpu":
            raise RuntimeError(f"backend 'openvino' runs on the CPU here, got device {self.device}")
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"backend 'openvino' runs fp32, bf16 (its inference precision hint) or int8 "
                             f"(NNCF), got precision {precision!r}")
        self.precision = precision
        self._core = ov.Core()
        if precision == "bf16" and not cpu_has_bf16(self._core):
            raise ValueError(f"precision 'bf16' needs a CPU that computes bf16 natively (AVX512_BF16 or "
                             f"AMX); OpenVINO reports {cpu_capabilities(self._core)} here: use 'fp32' or "
                             f"'auto'")
        # fp32: the labels of the torch model. bf16: OpenVINO runs the same fp32 graphs with bf16
        # arithmetic where the CPU has it (its inference precision hint; no re-export, no calibration).
        # int8: the NNCF-quantized frame graphs (quantize.py); what stays float runs in f32.
        self._config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}

    def _open_session(self, path: Path, spec: GraphSpec, expected: dict[str, str],
                      data: bytes | None = None) -> Any:
        # `data`: a variant made from the file in memory (same metadata; checked on the file).
        check_metadata(read_graph_metadata(path), expected, f"ONNX file {path}")
        source = str(path) if data is None else self._core.read_model(data)
        if spec.inputs[0] == "image" and not self.onnx_pre:
            cfg = self.model.config
            camera = tuple(spec.input_shapes[0][1:3])
            # labels at the camera's size promise the host path's labels (float resize); labels made
            # at the network's size have given exactness up for speed, so the resize may too
            exact = tuple(spec.output_shapes[0][1:]) == camera
            source = with_preprocessing(source, camera, cfg.mean, cfg.std, resize_u8=not exact)
        compiled = self._core.compile_model(source, "CPU", self._config)
        names = tuple(p.get_any_name() for p in compiled.inputs)
        if names != spec.inputs:
            raise StaleExportError(f"ONNX file {path} has inputs {names}, its manifest says {spec.inputs}")
        return compiled.create_infer_request()

    def _run(self, graphs: _GraphSet, name: str, inputs: Sequence[Tensor],
             outputs: Sequence[str] | None = None) -> tuple[Tensor, ...]:
        spec = graphs.specs[name]
        request = graphs.session(name)
        feeds = {n: _feed(t) for n, t in zip(spec.inputs, inputs, strict=True)}
        request.infer(feeds)
        # Copies: the request's output buffers are reused by its next inference.
        return tuple(torch.from_numpy(request.get_tensor(n).data.copy())
                     for n in (spec.outputs if outputs is None else outputs))

    def raw_runner(self, name: str, camera: GraphIO | None = None) -> Callable[[dict[str, np.ndarray]], Any]:
        request = self._sets[0].session(self._raw_name(name, camera))
        return lambda feeds: request.infer(feeds)

    def describe(self) -> str:
        return f"{self.name} {self._ov.__version__.split('-')[0]} on {self.device} ({self.precision_text()})"
