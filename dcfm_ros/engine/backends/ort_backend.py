"""The ONNX Runtime backend: the exported stage graphs, one InferenceSession each.

CPU: the CPU execution provider, torch's thread count (so `--threads`, OMP_NUM_THREADS and
torch.set_num_threads govern both), tensors handed over as zero-copy numpy views. CUDA: the TensorRT
or CUDA execution provider of onnxruntime-gpu, tensors bound in place on the GPU (io binding).
Graphs come from the export cache (see cache.py); each session checks its graph's metadata against
the model, size and version it is meant for and refuses anything else. Shapes are fixed, so another
input size means another export: the size asked for at construction is prepared then, any other one
the first time a frame of that size arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dcfm_ros.engine.backends.base import (
    EXTRA_OUTPUTS,
    FrameOutputs,
    GraphIO,
    InferenceBackend,
    StageMarks,
)
from dcfm_ros.engine.backends.cache import ensure_export, ensure_int8, expected_metadata, stderr_progress
from dcfm_ros.engine.backends.calibration import Calibration, calibration_for
from dcfm_ros.engine.backends.onnx_export import (
    FRAME_EXTRAS,
    FRAME_GRAPHS,
    GraphSpec,
    Manifest,
    StaleExportError,
    baseline_graph,
    check_metadata,
    frame_variant,
    io_variant,
    model_sha256,
)
from dcfm_ros.engine.backends.quantize import int8_dtype, method_for
from dcfm_ros.engine.device import resolve_device
from dcfm_ros.engine.specs import CalibrationSpec
from dcfm_ros.model import DCFM
from dcfm_ros.model.layers import DeepState

log = logging.getLogger("dcfm_ros.engine.backends")
STAGE_GRAPHS = ("enc_lo", "enc_hi", "common", "fuse", "head")
# Opened with the backend: the stages and the two plain frame graphs of the fast path.
EAGER_GRAPHS = (*STAGE_GRAPHS, "key", "nonkey")


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_cuda_providers() -> list[str]:
    """GPU execution providers this onnxruntime build has (best first); [] for a CPU-only build."""
    if not ort_available():
        return []
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]


def _hw(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.split("x"))
    return h, w


def _feed(t: Tensor) -> np.ndarray:
    """A graph input as numpy: float32, or the camera's uint8 image as it is (zero-copy on the CPU)."""
    t = t.detach()
    return (t if t.dtype == torch.uint8 else t.to(torch.float32)).contiguous().numpy()


class _GraphSet:
    """The sessions of one export folder (one input size). Besides the manifest's graphs it opens
    `key_x` / `nonkey_x`: the frame graphs with every extra output (onnx_export.frame_variant), made
    in memory, for frames that need F_in, F or the similarity feature."""

    def __init__(self, folder: Path, manifest: Manifest,
                 open_session: Callable[[Path, GraphSpec, bytes | None], Any], onnx_pre: bool = True) -> None:
        self.folder = folder
        # onnx_pre: the graph-I/O variants carry their pre-processing as ONNX ops; False for a
        # runtime that puts its own in front of the graph when it opens it (OpenVINO)
        self.onnx_pre = onnx_pre
        self.manifest = manifest
        self._open = open_session
        self.sessions: dict[str, Any] = {}
        self.specs: dict[str, GraphSpec] = dict(manifest.graphs)
        g = manifest.graphs
        self.has_sim = "sim" in g
        # the extras a frame variant returns (F_in stands in for sim where the model has no sim graph)
        self.extras = tuple(n for n in EXTRA_OUTPUTS if n != "sim" or self.has_sim)
        shapes = {"f_in": g["enc_lo"].output_shapes[0], "f": g["fuse"].output_shapes[0],
                  **({"sim": g["sim"].output_shapes[0]} if self.has_sim else {})}
        for kind in FRAME_GRAPHS:
            base = g[kind]
            self.specs[f"{kind}_x"] = GraphSpec(
                f"{kind}_x", base.file, base.inputs, (*base.outputs, *(FRAME_EXTRAS[e] for e in self.extras)),
                base.input_shapes, (*base.output_shapes, *(shapes[e] for e in self.extras)))
        self.specs["baseline"] = GraphSpec("baseline", g["enc_lo"].file, ("x",), ("logits",),
                                           g["enc_lo"].input_shapes, g["head"].output_shapes)
        for name in EAGER_GRAPHS:
            self.session(name)

    def session(self, name: str) -> Any:
        # Deep-unit sessions open on first use: only the `spread` schedule needs them, and they
        # would double the weights held in memory for every other use; so do the frame variants.
        if name not in self.sessions:
            spec = self.specs[name]
            data = None
            if name.endswith("_x"):
                data = frame_variant(self.folder, self.manifest, name.removesuffix("_x"), self.extras)
            elif name == "baseline":
                data = baseline_graph(self.folder, self.manifest)
            elif name.startswith("io:"):
                _, kind, cam, lab, wide = name.split(":")
                extras = self.extras if kind.endswith("_x") else ()
                data = io_variant(self.folder, self.manifest, kind.removesuffix("_x"), extras, _hw(cam),
                                  wide == "u16", _hw(lab), pre=self.onnx_pre)
            self.sessions[name] = self._open(self.folder / spec.file, spec, data)
        return self.sessions[name]

    def io_graph(self, kind: str, extra: bool, camera: tuple[int, int], wide: bool,
                 label_size: tuple[int, int]) -> str:
        """The name of frame graph `kind` (`extra`: its _x variant) with the I/O in the graph for a
        camera of `camera` pixels, labels made at `label_size` (onnx_export.io_variant); registered
        on first use, one per size."""
        base = f"{kind}_x" if extra else kind
        name = (f"io:{base}:{camera[0]}x{camera[1]}:{label_size[0]}x{label_size[1]}:"
                f"{'u16' if wide else 'u8'}")
        if name not in self.specs:
            spec = self.specs[base]
            image = (1, camera[0], camera[1], 3)
            logits = self.manifest.graphs["head"].output_shapes[0]
            self.specs[name] = GraphSpec(
                name, spec.file, ("image", *spec.inputs[1:]),
                ("labels", "top", *spec.outputs[1:]), (image, *spec.input_shapes[1:]),
                ((1, *label_size), (1, *logits[-2:]), *spec.output_shapes[1:]))
        return name

    def open(self, names: Sequence[str]) -> list[str]:
        """Open the graphs `names` that exist here; returns those newly opened."""
        new = [n for n in names if n in self.specs and n not in self.sessions]
        for n in new:
            self.session(n)
        return new

    def open_deep_units(self) -> None:
        for i in range(self.manifest.num_deep_units):
            self.session(f"unit_{i:02d}")

    def accepts(self, name: str, inputs: Sequence[Tensor]) -> bool:
        spec = self.specs[name]
        return len(inputs) == len(spec.inputs) and all(
            tuple(t.shape) == s for t, s in zip(inputs, spec.input_shapes, strict=True))


class OnnxRuntimeBackend(InferenceBackend):
    """Runs `model`'s exported graphs with ONNX Runtime (fp32)."""

    name = "onnxruntime"
    graph_io = True
    onnx_pre = True  # see _GraphSet

    def __init__(self, model: DCFM, device: str | torch.device = "auto", precision: str = "fp32", *,
                 input_size: tuple[int, int] | None = None, cache_dir: str | Path | None = None,
                 progress: Callable[[str], None] | None = stderr_progress,
                 calibration: str | CalibrationSpec | None = None, int8_method: str | None = None,
                 **_: Any) -> None:
        self.device = resolve_device(device)
        self.cache_dir = cache_dir
        # int8_method: the quantizer whose graphs run (quantize.METHODS); "qdq-sym" runs tensorrt's
        # int8 graphs on the CPU, to check them where there is no GPU
        self._int8_method = int8_method
        self._calibration_spec = calibration
        self._calibration: Calibration | None = None
        self._init_runtime(precision)
        self.model = model.to("cpu").float().eval()
        self.progress = progress
        self.model_hash = model_sha256(self.model)
        self._sets: list[_GraphSet] = []
        self.input_size: tuple[int, int] = tuple(input_size or self.model.config.input_size)  # type: ignore[assignment]
        self._prepare(self.input_size)

    # -- set-up ----------------------------------------------------------------------------------

    def _init_runtime(self, precision: str) -> None:
        if not ort_available():
            raise RuntimeError("backend 'onnxruntime' needs the onnxruntime package (pip install "
                               "onnxruntime, or onnxruntime-gpu on a CUDA machine)")
        import onnxruntime as ort

        self._ort = ort
        if precision not in ("fp32", "int8"):
            raise ValueError(f"backend 'onnxruntime' runs the fp32 graphs or int8 (static QDQ); precision "
                             f"{precision!r} needs backend 'tensorrt' or 'torch'")
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError("backend 'onnxruntime' runs int8 on the CPU here; on a GPU use backend "
                             "'tensorrt' or precision 'fp32'")
        self.precision = precision
        if self.device.type == "cuda":
            gpu = ort_cuda_providers()
            if not gpu:
                raise RuntimeError(f"backend 'onnxruntime' on {self.device}: this onnxruntime has only "
                                   f"{ort.get_available_providers()}; install onnxruntime-gpu or use "
                                   f"device 'cpu'")
            self._providers = [self._gpu_provider(p) for p in gpu]
        else:
            self._providers = ["CPUExecutionProvider"]

    def _gpu_provider(self, name: str) -> tuple[str, dict[str, Any]]:
        opts: dict[str, Any] = {"device_id": self.device.index or 0}
        if name == "TensorrtExecutionProvider":
            from dcfm_ros.engine.backends.cache import resolve_cache_dir

            opts.update(trt_engine_cache_enable=True,
                        trt_engine_cache_path=str(resolve_cache_dir(self.cache_dir) / "ort_trt"))
        return name, opts

    def _open_session(self, path: Path, spec: GraphSpec, expected: dict[str, str],
                      data: bytes | None = None) -> Any:
        """A session for graph file `path`, or for `data` (a variant made from it in memory)."""
        ort = self._ort
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.device.type == "cpu":
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path) if data is None else data, sess_options=opts,
                                       providers=self._providers)
        check_metadata(session.get_modelmeta().custom_metadata_map, expected, f"ONNX file {path}")
        names = tuple(i.name for i in session.get_inputs())
        if names != spec.inputs:
            raise StaleExportError(f"ONNX file {path} has inputs {names}, its manifest says {spec.inputs}")
        return session

    def calibration(self) -> Calibration:
        """The int8 calibration frames: those asked for, else the ones shipped with this model."""
        if self._calibration is None:
            self._calibration = calibration_for(self._calibration_spec, self.model_hash)
        return self._calibration

    def _prepare(self, size: tuple[int, int]) -> _GraphSet:
        int8 = self.precision == "int8"
        if int8:
            method, calib = self._int8_method or method_for(self.name), self.calibration()
            expected = expected_metadata(self.model, size, self.model_hash, int8_dtype(method), calib.sha256)
        else:
            expected = expected_metadata(self.model, size, self.model_hash)
        for attempt in (0, 1):
            if int8:
                folder, manifest = ensure_int8(self.model, size, self.model_hash, self.cache_dir, method,
                                               calib, self.progress, rebuild=attempt == 1)
            else:
                folder, manifest = ensure_export(self.model, size, self.model_hash, self.cache_dir,
                                                 self.progress, rebuild=attempt == 1)
            try:
                graphs = _GraphSet(folder, manifest, lambda p, s, d: self._open_session(p, s, expected, d),
                                   onnx_pre=self.onnx_pre)
                break
            except StaleExportError as exc:
                # A graph file replaced behind the manifest's back: refuse it, export afresh once.
                log.warning("%s; rebuilding %s", exc, folder)
                if self.progress is not None:
                    self.progress(f"{exc}; rebuilding {folder}")
                if attempt == 1:
                    raise
        self._sets.append(graphs)
        self._warm_up(graphs)
        return graphs

    def _warm_up(self, graphs: _GraphSet, names: Sequence[str] = EAGER_GRAPHS) -> None:
        # First runs allocate and (TensorRT EP) build engines: do it now, not on the first frame.
        for name in names:
            spec = graphs.specs[name]
            # the graph-I/O variants take the camera's uint8 image; every other input is float
            self._run(graphs, name, [torch.zeros(s, device=self.device,
                                                 dtype=torch.uint8 if n == "image" else torch.float32)
                                     for n, s in zip(spec.inputs, spec.input_shapes, strict=True)])

    def prepare_frames(self, extras: bool, stages: bool) -> None:
        names = [*((f"{k}_x" for k in FRAME_GRAPHS) if extras else ()), *(("sim",) if stages else ())]
        for graphs in self._sets:
            self._warm_up(graphs, graphs.open(names))

    def prepare_camera(self, camera: GraphIO, extras: bool) -> None:
        graphs = self._sets[0]
        names = [self._io_name(graphs, kind, x, camera)
                 for kind in FRAME_GRAPHS for x in ((False, True) if extras else (False,))]
        self._warm_up(graphs, graphs.open(names))

    def _io_name(self, graphs: _GraphSet, kind: str, extra: bool, camera: GraphIO) -> str:
        return graphs.io_graph(kind, extra, camera.camera, self.model.config.num_classes > 255, camera.labels)

    def _graphs_for(self, name: str, inputs: Sequence[Tensor]) -> _GraphSet:
        for graphs in self._sets:
            if graphs.accepts(name, inputs):
                return graphs
        if (name == "enc_lo" or name in FRAME_GRAPHS) and inputs[0].dim() == 4:
            log.info("onnxruntime: new input size %s, exporting it", tuple(inputs[0].shape[-2:]))
            return self._prepare((int(inputs[0].shape[-2]), int(inputs[0].shape[-1])))
        raise ValueError(f"onnxruntime backend: no graph {name!r} takes inputs of shapes "
                         f"{[tuple(t.shape) for t in inputs]} (prepared sizes: "
                         f"{[g.manifest.input_size for g in self._sets]})")

    # -- running ---------------------------------------------------------------------------------

    def _run(self, graphs: _GraphSet, name: str, inputs: Sequence[Tensor],
             outputs: Sequence[str] | None = None) -> tuple[Tensor, ...]:
        """Run graph `name`; returns `outputs` (default: all of the graph's, in order)."""
        spec = graphs.specs[name]
        session = graphs.session(name)
        if self.device.type == "cpu":
            feeds = {n: _feed(t) for n, t in zip(spec.inputs, inputs, strict=True)}
            names = list(spec.outputs if outputs is None else outputs)
            return tuple(torch.from_numpy(o) for o in session.run(names, feeds))
        # GPU: bind the torch tensors where they are; outputs are allocated by torch.
        index = self.device.index or 0
        binding = session.io_binding()
        keep = [t.detach().to(torch.float32).contiguous() for t in inputs]
        for n, t in zip(spec.inputs, keep, strict=True):
            binding.bind_input(n, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        outs = [torch.empty(s, dtype=torch.float32, device=self.device) for s in spec.output_shapes]
        for n, t in zip(spec.outputs, outs, strict=True):
            binding.bind_output(n, "cuda", index, np.float32, tuple(t.shape), t.data_ptr())
        # ORT runs on its own stream: the inputs torch queued must be finished first.
        torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        if outputs is None:
            return tuple(outs)
        by_name = dict(zip(spec.outputs, outs, strict=True))
        return tuple(by_name[n] for n in outputs)

    def _stage(self, name: str, *inputs: Tensor) -> tuple[Tensor, ...]:
        return self._run(self._graphs_for(name, inputs), name, inputs)

    def enc_lo(self, x: Tensor) -> Tensor:
        return self._stage("enc_lo", x)[0]

    def enc_hi(self, f_in: Tensor) -> Tensor:
        return self._stage("enc_hi", f_in)[0]

    @property
    def num_deep_units(self) -> int:
        return self._sets[0].manifest.num_deep_units

    def deep_unit_costs(self) -> list[float]:
        return list(self._sets[0].manifest.deep_unit_costs)

    def prepare_deep_units(self) -> None:
        for graphs in self._sets:
            graphs.open_deep_units()

    def run_deep_units(self, start: int, stop: int, state: DeepState) -> DeepState:
        n = self.num_deep_units
        if not 0 <= start <= stop <= n:
            raise ValueError(f"deep units {start}..{stop} outside 0..{n}")
        if start == stop:
            return state
        graphs = self._graphs_for(f"unit_{start:02d}", state)
        for i in range(start, stop):
            state = self._run(graphs, f"unit_{i:02d}", state)
        return state

    def common_part(self, f_co: Tensor) -> Tensor:
        return self._stage("common", f_co)[0]

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        for graphs in self._sets:
            if "sim" not in graphs.manifest.graphs:
                return f_in  # the model compares F_in itself
            if graphs.accepts("sim", (f_in,)):
                return self._run(graphs, "sim", (f_in,))[0]
        raise ValueError(f"onnxruntime backend: no similarity graph takes F_in of shape {tuple(f_in.shape)}")

    # -- one call per frame ------------------------------------------------------------------------

    def _frame(self, kind: str, inputs: Sequence[Tensor], want: Collection[str],
               marks: StageMarks | None, camera: GraphIO | None = None) -> FrameOutputs:
        graphs = self._sets[0] if camera is not None else self._graphs_for(kind, inputs)
        # The extras asked for; sim is F_in itself where the model has no sim graph.
        sim_is_f_in = "sim" in want and not graphs.has_sim
        extras = [n for n in graphs.extras if n in want or (n == "f_in" and sim_is_f_in)]
        base = ["logits", "common"] if kind == "key" else ["logits"]
        name = f"{kind}_x" if extras else kind
        if camera is not None:
            name = self._io_name(graphs, kind, bool(extras), camera)
            base = ["labels", "top", *base[1:]]
        got = dict(zip([*base, *extras], self._run(graphs, name, inputs,
                                                   [*base, *(FRAME_EXTRAS[e] for e in extras)]), strict=True))
        if marks is not None:
            marks.mark("network")
        if sim_is_f_in:
            got["sim"] = got["f_in"]
        return FrameOutputs(got.get("logits"), got.get("common"), got.get("f_in"), got.get("f"),
                            got.get("sim"), got.get("labels"), got.get("top"))

    def key_frame(self, x: Tensor, want: Collection[str] = (), marks: StageMarks | None = None,
                  deep: Callable[[Tensor], Tensor] | None = None,
                  camera: GraphIO | None = None) -> FrameOutputs:
        if deep is not None:
            return super().key_frame(x, want, marks, deep, camera)
        return self._frame("key", (x,), want, marks, camera)

    def nonkey_frame(self, x: Tensor, common: Tensor, want: Collection[str] = (),
                     marks: StageMarks | None = None, camera: GraphIO | None = None) -> FrameOutputs:
        return self._frame("nonkey", (x, common), want, marks, camera)

    def raw_runner(self, name: str, camera: GraphIO | None = None) -> Callable[[dict[str, np.ndarray]], Any]:
        """Graph `name` of the first prepared size as the bare runtime call on numpy feeds, no
        conversions (dcfm-bench --overhead times the engine against it); `camera`: its variant with
        the I/O in the graph (feeds "image", uint8 (1, H, W, 3), instead of "x")."""
        session = self._sets[0].session(self._raw_name(name, camera))
        return lambda feeds: session.run(None, feeds)

    def _raw_name(self, name: str, camera: GraphIO | None) -> str:
        return name if camera is None else self._io_name(self._sets[0], name, False, camera)

    def baseline_logits(self, x: Tensor) -> Tensor:
        return self._stage("baseline", x)[0]


    def fuse(self, common: Tensor, f_in: Tensor) -> Tensor:
        return self._stage("fuse", common, f_in)[0]

    def head(self, f: Tensor) -> Tensor:
        return self._stage("head", f)[0]

    def describe(self) -> str:
        providers = [p if isinstance(p, str) else p[0] for p in self._providers]
        return (f"{self.name} {self._ort.__version__} ({', '.join(providers)}) on {self.device} "
                f"({self.precision_text()})")
