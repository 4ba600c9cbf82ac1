"""The TensorRT backend (GPU only): one engine per exported stage graph, cached on disk.

Engines are built from the ONNX graphs of the export cache, once: `<cache>/tensorrt/<key>/NAME.engine`
with the key = model hash + input size + precision + GPU name + TensorRT version, next to a
`NAME.json` that records that key. A build takes minutes for a large model, so it happens at
construction (the node's start-up), with progress on stderr, never on a frame. A cached engine whose
record names another model, size, precision, GPU or TensorRT version is refused and rebuilt.

fp16 uses graphs exported in half precision and a strongly typed network: TensorRT 11 removed the
weakly typed FP16 builder flag, and a strongly typed fp16 graph builds the same way on TensorRT 10.
int8 is TensorRT's explicit quantization: the key and nonkey engines are built (strongly typed, no
precision flags) from the symmetric QDQ graphs of quantize.py's `qdq-sym` on the calibration frames
(those given, else the ones shipped with the model); the stage graphs stay fp32. TensorRT's older
implicit calibration (an IInt8Calibrator and its calibration cache) is deprecated since TensorRT 10,
so it is not used: the calibration's hash names the int8 folder and the engines' records instead.
Engines run on torch's current CUDA stream with torch tensors bound in place (no copies).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import FrameOutputs, GraphIO, InferenceBackend, StageMarks
from dcfm_ros.engine.backends.cache import (
    ensure_export,
    ensure_int8,
    int8_key,
    resolve_cache_dir,
    stderr_progress,
)
from dcfm_ros.engine.backends.calibration import calibration_for
from dcfm_ros.engine.backends.onnx_export import (
    GraphSpec,
    StaleExportError,
    export_key,
    model_sha256,
    write_bytes_atomic,
)
from dcfm_ros.engine.device import resolve_device
from dcfm_ros.engine.specs import CalibrationSpec
from dcfm_ros.model import DCFM
from dcfm_ros.model.layers import DeepState

log = logging.getLogger("dcfm_ros.engine.backends")
STAGES = ("enc_lo", "enc_hi", "common", "fuse", "head")
# the fused frame graphs (onnx_export.FRAME_GRAPHS): one engine call per plain frame
FRAMES = ("key", "nonkey")
# the dtype of the graphs' float inputs and outputs per precision (int8: fp32 around the Q/DQ pairs)
_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "int8": torch.float32}


class TensorRTBackend(InferenceBackend):
    """Runs `model`'s stages as TensorRT engines on a CUDA device (fp16, fp32 or int8)."""

    name = "tensorrt"

    def __init__(self, model: DCFM, device: str | torch.device = "auto", precision: str = "fp16", *,
                 input_size: tuple[int, int] | None = None, cache_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = stderr_progress,
                 workspace_gb: float = 4.0, calibration: str | CalibrationSpec | None = None,
                 **_: Any) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeError("backend 'tensorrt' needs the tensorrt Python package (pip install "
                               "tensorrt) and a CUDA GPU") from exc
        self._trt = trt
        self.device = resolve_device(device)
        if self.device.type != "cuda":
            raise RuntimeError(f"backend 'tensorrt' runs on a CUDA device only, got {self.device}")
        if precision not in _DTYPES:
            raise ValueError(f"backend 'tensorrt' supports fp16, fp32 and int8, got precision {precision!r}")
        self.precision = precision
        self._dtype = _DTYPES[precision]
        self.model = model.to("cpu").float().eval()
        self.size = tuple(input_size or model.config.input_size)
        self.progress = progress
        self._workspace = int(workspace_gb * (1 << 30))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        model_hash = model_sha256(self.model)
        calib_sha = ""
        if precision == "int8":
            calib = calibration_for(calibration, model_hash)
            folder, self.manifest = ensure_int8(self.model, self.size, model_hash, cache_dir,  # type: ignore[arg-type]
                                                "qdq-sym", calib, progress)
            calib_sha = calib.sha256
            key = int8_key(model_hash, self.size, "qdq-sym", calib_sha)  # type: ignore[arg-type]
        else:
            folder, self.manifest = ensure_export(self.model, self.size, model_hash, cache_dir,  # type: ignore[arg-type]
                                                  progress, dtype=precision)
            key = export_key(model_hash, self.size, precision)  # type: ignore[arg-type]
        gpu = torch.cuda.get_device_name(self.device)
        self._record = {"model_sha256": model_hash, "input_size": list(self.size), "precision": precision,
                        "gpu": gpu, "tensorrt": trt.__version__, "calibration_sha256": calib_sha}
        tag = "".join(c if c.isalnum() else "_" for c in f"{gpu}-trt{trt.__version__}")
        self._engine_dir = resolve_cache_dir(cache_dir) / "tensorrt" / f"{key}-{tag}"
        self._onnx_dir = folder
        self._engines: dict[str, tuple[Any, Any]] = {}
        # Every engine is built (or found) now, deep units included, so no build can ever land on
        # a frame; only the stage engines are loaded now, deep units on first use.
        names = [*STAGES, *FRAMES, *(f"unit_{i:02d}" for i in range(self.manifest.num_deep_units))]
        for n, name in enumerate(names, 1):
            self._engine_file(name, f"[{n}/{len(names)}]")
        for name in (*STAGES, *FRAMES):
            self._context(name)

    # -- building and loading --------------------------------------------------------------------

    def _engine_file(self, name: str, step: str = "") -> Path:
        path = self._engine_dir / f"{name}.engine"
        record_path = path.with_suffix(".json")
        record = {**self._record, "graph": name}
        if path.is_file() and record_path.is_file():
            try:
                found = json.loads(record_path.read_text())
            except ValueError:
                found = None
            if found == record:
                return path
            log.warning("TensorRT engine %s was built for %s, not %s: refused, rebuilding", path, found,
                        record)
            if self.progress is not None:
                self.progress(f"TensorRT engine {path} is stale or foreign (built for {found}, not "
                              f"{record}): refused, rebuilding it")
        self._build(name, path, step)
        write_bytes_atomic(record_path, json.dumps(record).encode())
        return path

    def _build(self, name: str, path: Path, step: str) -> None:
        trt = self._trt
        spec = self.manifest.graphs[name]
        t0 = time.monotonic()
        if self.progress is not None:
            self.progress(f"TensorRT {step} building {name} ({self.precision}, {self._record['gpu']}); "
                          f"once per model, size and GPU")
        builder = trt.Builder(self._logger)
        flags = 0
        typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if typed is not None:
            flags |= 1 << int(typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        onnx_path = self._onnx_dir / spec.file
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} (see its log above)")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, bytes(serialized))
        if self.progress is not None:
            self.progress(f"TensorRT {step} {name} built in {time.monotonic() - t0:.0f} s -> {path}")

    def _context(self, name: str) -> tuple[Any, Any]:
        if name not in self._engines:
            path = self._engine_file(name)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise StaleExportError(f"TensorRT engine {path} cannot be loaded (corrupt, or built by "
                                       f"another TensorRT); delete it to have it rebuilt")
            self._engines[name] = (engine, engine.create_execution_context())
        return self._engines[name]

    # -- running ---------------------------------------------------------------------------------

    def _run(self, name: str, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        spec: GraphSpec = self.manifest.graphs[name]
        shapes = [tuple(t.shape) for t in inputs]
        if shapes != list(spec.input_shapes):
            raise ValueError(f"tensorrt backend: graph {name!r} takes shapes {list(spec.input_shapes)} "
                             f"(input size {self.size}), got {shapes}")
        _, context = self._context(name)
        keep = [t.detach().to(self.device, self._dtype).contiguous() for t in inputs]
        outs = [torch.empty(s, dtype=self._dtype, device=self.device) for s in spec.output_shapes]
        for n, t in zip((*spec.inputs, *spec.outputs), (*keep, *outs), strict=True):
            context.set_tensor_address(n, t.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {name!r} failed")
        return tuple(outs)

    def enc_lo(self, x: Tensor) -> Tensor:
        return self._run("enc_lo", (x,))[0]

    def enc_hi(self, f_in: Tensor) -> Tensor:
        return self._run("enc_hi", (f_in,))[0]

    @property
    def num_deep_units(self) -> int:
        return self.manifest.num_deep_units

    def deep_unit_costs(self) -> list[float]:
        return list(self.manifest.deep_unit_costs)

    def run_deep_units(self, start: int, stop: int, state: DeepState) -> DeepState:
        if not 0 <= start <= stop <= self.num_deep_units:
            raise ValueError(f"deep units {start}..{stop} outside 0..{self.num_deep_units}")
        for i in range(start, stop):
            state = self._run(f"unit_{i:02d}", state)
        return state

    def common_part(self, f_co: Tensor) -> Tensor:
        return self._run("common", (f_co,))[0]

    def fuse(self, common: Tensor, f_in: Tensor) -> Tensor:
        return self._run("fuse", (common, f_in))[0]

    def head(self, f: Tensor) -> Tensor:
        return self._run("head", (f,))[0].float()

    # -- one call per frame: the fused engines for a plain frame; extras and deep-unit timing from
    # the stages (the base class) --------------------------------------------------------------

    def key_frame(self, x: Tensor, want: Collection[str] = (), marks: StageMarks | None = None,
                  deep: Callable[[Tensor], Tensor] | None = None,
                  camera: GraphIO | None = None) -> FrameOutputs:
        if deep is not None or want or camera is not None:
            return super().key_frame(x, want, marks, deep, camera)
        logits, common = self._run("key", (x,))
        if marks is not None:
            marks.mark("network")
        return FrameOutputs(logits.float(), common)

    def nonkey_frame(self, x: Tensor, common: Tensor, want: Collection[str] = (),
                     marks: StageMarks | None = None, camera: GraphIO | None = None) -> FrameOutputs:
        if want or camera is not None:
            return super().nonkey_frame(x, common, want, marks, camera)
        (logits,) = self._run("nonkey", (x, common))
        if marks is not None:
            marks.mark("network")
        return FrameOutputs(logits.float())

    def describe(self) -> str:
        return f"{self.name} {self._trt.__version__} on {self.device} ({self.precision_text()})"
