"""ONNX graphs of the InferenceBackend stages, with the model's identity in their metadata.

One export folder holds, for one model and one input size (H, W) (shapes are fixed: fixed shapes let
ONNX Runtime and TensorRT plan every kernel ahead):

    enc_lo.onnx       x (1,3,H,W) normalised        -> f_in
    enc_hi.onnx       f_in                          -> f_co            (the whole deep pass)
    unit_NN.onnx      s0..sk (deep state)           -> o0..om          (one per DCFM.deep_units())
    common.onnx       f_co                          -> common          (ffm.common_part)
    fuse.onnx         common, f_in                  -> f               (ffm.fuse_with_common)
    head.onnx         f                             -> logits
    sim.onnx          f_in                          -> sim             (similarity_feature; only when
                                                                        it is not F_in itself)
    key.onnx          x                             -> logits, common  (a keyframe in one graph)
    nonkey.onnx       x, common                     -> logits          (a non-key frame in one graph)
    manifest.json     what is there; written last, so a folder without it is unfinished

Every graph's metadata_props carry the class names, palette, mean/std, input size, the model's
weights hash (`dcfm.model_sha256`, over config + tensors, so it names the weights whatever file they
came from), the source checkpoint file's sha256 when there is one, torch/opset/export versions.
Readers refuse a graph whose metadata does not match what they expect (stale or foreign file).
Files are written to a temporary name and renamed; the manifest goes last.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcfm_ros.model import DCFM

OPSET = 17
# Bump when the graphs' layout or names change: cached folders of an older version are rebuilt.
# 2: the similarity-feature graph (sim.onnx) of models that have one.
EXPORT_VERSION = 2
# The one-call-per-frame graphs of the engine's fast path. Their variants with extra outputs (F_in,
# F, the similarity feature: `frame_variant`) are made from them in memory when a backend opens them.
FRAME_GRAPHS = ("key", "nonkey")
# extra output -> the value inside the frame graphs that holds it
FRAME_EXTRAS = {"f_in": "enc_lo/f_in", "f": "fuse/f", "sim": "sim/sim"}
MANIFEST = "manifest.json"
META_PREFIX = "dcfm."


class ExportError(RuntimeError):
    """A stage could not be exported; the message names the graph, the modules and the reason."""


class StaleExportError(ValueError):
    """An ONNX/engine file or folder that does not belong to the model, size or version asked for."""


def model_sha256(model: DCFM) -> str:
    """sha256 over the config and every state-dict tensor (name, dtype, shape, bytes), in order.

    Identifies the weights themselves: the same model loaded from a copy of the file, or built in
    memory, has the same hash; any changed weight gives another.
    """
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_key(model_hash: str, size: tuple[int, int], dtype: str = "fp32") -> str:
    """The cache folder name for a model hash, input size and graph dtype."""
    return f"{model_hash[:20]}-{size[0]}x{size[1]}-{dtype}-v{EXPORT_VERSION}"


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: file name, input and output names and the fixed shapes of each."""

    name: str
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shapes: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "input_shapes": [list(s) for s in self.input_shapes],
                "output_shapes": [list(s) for s in self.output_shapes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphSpec:
        return cls(d["name"], d["file"], tuple(d["inputs"]), tuple(d["outputs"]),
                   tuple(tuple(s) for s in d["input_shapes"]), tuple(tuple(s) for s in d["output_shapes"]))


@dataclass(frozen=True)
class Manifest:
    """What an export folder holds (manifest.json)."""

    metadata: dict[str, str]  # the metadata_props every graph carries
    graphs: dict[str, GraphSpec]
    num_deep_units: int
    deep_unit_costs: tuple[float, ...]

    @property
    def model_hash(self) -> str:
        return self.metadata[META_PREFIX + "model_sha256"]

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = json.loads(self.metadata[META_PREFIX + "input_size"])
        return int(h), int(w)

    def unit(self, i: int) -> GraphSpec:
        return self.graphs[f"unit_{i:02d}"]

    def to_json(self) -> str:
        return json.dumps({"metadata": self.metadata, "num_deep_units": self.num_deep_units,
                           "deep_unit_costs": list(self.deep_unit_costs),
                           "graphs": {k: g.to_dict() for k, g in self.graphs.items()}}, indent=1)

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        try:
            d = json.loads(path.read_text())
            return cls(metadata={str(k): str(v) for k, v in d["metadata"].items()},
                       graphs={k: GraphSpec.from_dict(g) for k, g in d["graphs"].items()},
                       num_deep_units=int(d["num_deep_units"]),
                       deep_unit_costs=tuple(float(c) for c in d["deep_unit_costs"]))
        except FileNotFoundError:
            raise StaleExportError(f"{folder}: no {MANIFEST} (not an export folder, or an export that "
                                   f"did not finish)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise StaleExportError(f"{path}: unreadable manifest ({type(exc).__name__}: {exc})") from exc


def graph_metadata(model: DCFM, size: tuple[int, int], model_hash: str,
                   source_sha256: str | None = None, dtype: str = "fp32") -> dict[str, str]:
    """The metadata_props written into every graph (all values strings; lists as JSON)."""
    cfg = model.config
    return {
        META_PREFIX + "export_version": str(EXPORT_VERSION),
        META_PREFIX + "model_sha256": model_hash,
        META_PREFIX + "source_sha256": source_sha256 or "",
        META_PREFIX + "backbone": cfg.backbone,
        META_PREFIX + "class_names": json.dumps(list(cfg.class_names)),
        META_PREFIX + "palette": json.dumps([list(c) for c in cfg.palette]),
        META_PREFIX + "mean": json.dumps(list(cfg.mean)),
        META_PREFIX + "std": json.dumps(list(cfg.std)),
        META_PREFIX + "input_size": json.dumps(list(size)),
        META_PREFIX + "dtype": dtype,
        META_PREFIX + "config": json.dumps(cfg.to_dict(), sort_keys=True),
        META_PREFIX + "torch_version": torch.__version__,
        META_PREFIX + "opset": str(OPSET),
    }


def check_metadata(found: dict[str, str], expected: dict[str, str], what: str) -> None:
    """Refuse `what` when a key that identifies model, size or version differs (StaleExportError)."""
    for key in ("export_version", "model_sha256", "input_size", "dtype", "opset", "calibration_sha256"):
        k = META_PREFIX + key
        if found.get(k) != expected.get(k):
            raise StaleExportError(f"{what} is stale or foreign: {k} is {found.get(k)!r}, expected "
                                   f"{expected.get(k)!r} (re-export it, e.g. delete it to have the "
                                   f"cache rebuild it)")


class _Fn(nn.Module):
    """A stage as a module for the exporter: `fn` over `modules` (registered so their weights are in)."""

    def __init__(self, fn: Callable[..., Any], modules: Sequence[nn.Module]) -> None:
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(modules)
        # torch.onnx.export puts the module in eval mode and afterwards restores the mode it found,
        # recursively: a wrapper left in training mode would switch the model's own modules
        # (BatchNorm, DropPath) to training once the export is done.
        self.eval()

    def forward(self, *args: Tensor) -> Any:
        return self.fn(*args)


def _stages(model: DCFM, x: Tensor) -> list[tuple[str, _Fn, tuple[Tensor, ...], tuple[str, ...],
                                                   tuple[str, ...], str]]:
    """(graph name, module, example inputs, input names, output names, modules it covers) per graph."""
    ffm = model.ffm
    with torch.no_grad():
        f_in = model.enc_lo(x)
        f_co = model.enc_hi(f_in)
        common = ffm.common_part(f_co)
        f = ffm.fuse_with_common(common, f_in)
    out = [
        ("enc_lo", _Fn(model.enc_lo, [model.enc_lo]), (x,), ("x",), ("f_in",), "enc_lo"),
        ("enc_hi", _Fn(model.enc_hi, [model.enc_hi]), (f_in,), ("f_in",), ("f_co",), "enc_hi"),
        ("common", _Fn(ffm.common_part, [ffm]), (f_co,), ("f_co",), ("common",), "ffm.common_part"),
        ("fuse", _Fn(ffm.fuse_with_common, [ffm]), (common, f_in), ("common", "f_in"), ("f",),
         "ffm.fuse_with_common"),
        ("head", _Fn(model.head, [model.head]), (f,), ("f",), ("logits",), "head"),
    ]
    with torch.no_grad():
        sim = model.similarity_feature(f_in)
    if sim is not f_in:  # DCFM compares F_in itself: no graph, the backends hand F_in back as sim
        out.append(("sim", _Fn(model.similarity_feature, [model]), (f_in,), ("f_in",), ("sim",),
                    "similarity_feature"))

    state: tuple[Tensor, ...] = (f_in,)
    for i, unit in enumerate(model.deep_units()):
        names_in = tuple(f"s{j}" for j in range(len(state)))
        with torch.no_grad():
            next_state = unit(*state)
        names_out = tuple(f"o{j}" for j in range(len(next_state)))
        out.append((f"unit_{i:02d}", _Fn(unit, [unit]), state, names_in, names_out,
                    f"deep unit {i} ({unit.unit_name})"))
        state = next_state
    return out


def _rename(proto: Any, names: dict[str, str], output_order: Sequence[str]) -> Any:
    """Rename values (graph inputs/outputs and every node reference) and order the outputs."""
    g = proto.graph
    for v in (*g.input, *g.output):
        v.name = names.get(v.name, v.name)
    for node in g.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    outputs = {o.name: o for o in g.output}
    ordered = [type(g.output[0])() for _ in output_order]
    for dst, name in zip(ordered, output_order, strict=True):
        dst.CopyFrom(outputs[name])
    del g.output[:]
    g.output.extend(ordered)
    return proto


def _compose_frames(stage: dict[str, Any]) -> dict[str, Any]:
    """The keyframe and non-key graphs, wired from the stage graphs (not traced again: the same
    nodes and weights, so they compute exactly what the stages compute, at no extra export time)."""
    from onnx import compose

    p = {n: compose.add_prefix(m, prefix=f"{n}/") for n, m in stage.items()}
    lo_hi = compose.merge_models(p["enc_lo"], p["enc_hi"], io_map=[("enc_lo/f_in", "enc_hi/f_in")],
                                 outputs=["enc_lo/f_in", "enc_hi/f_co"])
    with_common = compose.merge_models(lo_hi, p["common"], io_map=[("enc_hi/f_co", "common/f_co")],
                                       outputs=["enc_lo/f_in", "common/common"])
    fused = compose.merge_models(with_common, p["fuse"],
                                 io_map=[("common/common", "fuse/common"), ("enc_lo/f_in", "fuse/f_in")],
                                 outputs=["common/common", "fuse/f"])
    key = compose.merge_models(fused, p["head"], io_map=[("fuse/f", "head/f")],
                               outputs=["head/logits", "common/common"])
    key = _rename(key, {"enc_lo/x": "x", "head/logits": "logits", "common/common": "common"},
                  ("logits", "common"))
    lo_fuse = compose.merge_models(p["enc_lo"], p["fuse"], io_map=[("enc_lo/f_in", "fuse/f_in")])
    nonkey = compose.merge_models(lo_fuse, p["head"], io_map=[("fuse/f", "head/f")])
    nonkey = _rename(nonkey, {"enc_lo/x": "x", "fuse/common": "common", "head/logits": "logits"}, ("logits",))
    # merge_models lists the inputs in graph order; the interface order is (x, common).
    inputs = {i.name: i for i in nonkey.graph.input}
    ordered = [type(nonkey.graph.input[0])() for _ in range(2)]
    ordered[0].CopyFrom(inputs["x"])
    ordered[1].CopyFrom(inputs["common"])
    del nonkey.graph.input[:]
    nonkey.graph.input.extend(ordered)
    return {"key": key, "nonkey": nonkey}


def frame_variant(folder: Path, manifest: Manifest, kind: str, extras: Sequence[str]) -> bytes:
    """Frame graph `kind` (FRAME_GRAPHS) of an export folder with `extras` (FRAME_EXTRAS keys) as
    further outputs, after its own, in that order: F_in and F are values the graph computes anyway;
    the similarity feature is the sim graph's nodes joined onto F_in (a model without a sim graph
    compares F_in itself, so "sim" is dropped here and the backend hands F_in back). One graph, one
    call: what the blend, the feature policy and the deferred schedules read comes out of the
    frame's own call. The metadata is the frame graph's, so the usual checks apply."""
    return _frame_proto(folder, manifest, kind, extras).SerializeToString()


def _frame_proto(folder: Path, manifest: Manifest, kind: str, extras: Sequence[str]) -> Any:
    import onnx
    from onnx import compose, helper

    proto = onnx.load(str(folder / manifest.graphs[kind].file))
    g = proto.graph
    shapes = {"f_in": manifest.graphs["enc_lo"].output_shapes[0],
              "f": manifest.graphs["fuse"].output_shapes[0]}
    if "sim" in extras and "sim" in manifest.graphs:
        sim = compose.add_prefix(onnx.load(str(folder / manifest.graphs["sim"].file)), prefix="sim/")
        for node in sim.graph.node:
            node.input[:] = [FRAME_EXTRAS["f_in"] if n == "sim/f_in" else n for n in node.input]
        g.node.extend(sim.graph.node)
        g.initializer.extend(sim.graph.initializer)
        shapes["sim"] = manifest.graphs["sim"].output_shapes[0]
    for name in extras:
        if name in shapes:
            g.output.append(helper.make_tensor_value_info(FRAME_EXTRAS[name], onnx.TensorProto.FLOAT,
                                                          list(shapes[name])))
    return proto


def io_variant(folder: Path, manifest: Manifest, kind: str, extras: Sequence[str],
               camera: tuple[int, int], wide_labels: bool = False,
               label_size: tuple[int, int] | None = None, pre: bool = True) -> bytes:
    """Frame graph `kind` (with `extras`, see frame_variant) with the pre- and post-processing in the
    graph, for a camera of `camera` = (H, W) pixels: in, the camera's uint8 RGB image (1, H, W, 3)
    (cast, to NCHW, bilinear resize to the network size with half-pixel centres, /255, mean/std: the
    operations and order of engine.preprocess); out, instead of the logits, `labels` (1, H, W) uint8
    (uint16: `wide_labels`) = argmax of the logits bilinearly upsampled to the camera's size (the
    engine's exact method; `label_size`: to that size instead, which the engine then scales to the
    camera's with nearest neighbours) and `top` (1, h, w), the top softmax probability at the logits' size
    (engine.confidence). So no torch op runs for the frame, and the runtime's threads do the work.
    `pre=False`: only the post-processing; the input stays the network's float `x`, for a runtime
    that puts the pre-processing in front of the graph itself (OpenVINO's PrePostProcessor)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    proto = _frame_proto(folder, manifest, kind, extras)
    g = proto.graph
    meta = manifest.metadata
    mean = np.array(json.loads(meta[META_PREFIX + "mean"]), dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(json.loads(meta[META_PREFIX + "std"]), dtype=np.float32).reshape(1, 3, 1, 1)
    h, w = manifest.input_size
    logits_shape = manifest.graphs["head"].output_shapes[0]
    big = tuple(camera)
    out_hw = tuple(label_size or big)
    inits, steps = [], []
    if pre:
        inits += [numpy_helper.from_array(mean, "io/mean"), numpy_helper.from_array(std, "io/std"),
                  numpy_helper.from_array(np.array(255.0, dtype=np.float32), "io/255")]
        # the frame graph's input x becomes an inner value
        for v in g.input:
            if v.name == "x":
                g.input.remove(v)
                break
        g.input.insert(0, helper.make_tensor_value_info("image", onnx.TensorProto.UINT8, [1, *big, 3]))
        steps += [helper.make_node("Cast", ["image"], ["io/f"], to=onnx.TensorProto.FLOAT),
                  helper.make_node("Transpose", ["io/f"], ["io/nchw"], perm=[0, 3, 1, 2])]
        src = "io/nchw"
        if big != (h, w):
            inits.append(numpy_helper.from_array(np.array([1, 3, h, w], dtype=np.int64), "io/net_size"))
            steps.append(helper.make_node("Resize", ["io/nchw", "", "", "io/net_size"], ["io/resized"],
                                          mode="linear", coordinate_transformation_mode="half_pixel"))
            src = "io/resized"
        steps += [helper.make_node("Div", [src, "io/255"], ["io/x01"]),
                  helper.make_node("Sub", ["io/x01", "io/mean"], ["io/centred"]),
                  helper.make_node("Div", ["io/centred", "io/std"], ["x"])]
    if out_hw != tuple(logits_shape[-2:]):
        inits.append(numpy_helper.from_array(np.array([1, logits_shape[1], *out_hw], dtype=np.int64),
                                             "io/label_size"))
    up = "logits"
    post = []
    if out_hw != tuple(logits_shape[-2:]):
        post.append(helper.make_node("Resize", ["logits", "", "", "io/label_size"], ["io/logits_up"],
                                     mode="linear", coordinate_transformation_mode="half_pixel"))
        up = "io/logits_up"
    label_type = onnx.TensorProto.UINT16 if wide_labels else onnx.TensorProto.UINT8
    post += [helper.make_node("ArgMax", [up], ["io/argmax"], axis=1, keepdims=0, select_last_index=0),
             helper.make_node("Cast", ["io/argmax"], ["labels"], to=label_type),
             helper.make_node("Softmax", ["logits"], ["io/prob"], axis=1),
             helper.make_node("ReduceMax", ["io/prob"], ["top"], axes=[1], keepdims=0)]
    nodes = list(g.node)
    del g.node[:]
    g.node.extend([*steps, *nodes, *post])
    g.initializer.extend(inits)
    outs = [o for o in g.output if o.name != "logits"]
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("labels", label_type, [1, *out_hw]),
                     helper.make_tensor_value_info("top", onnx.TensorProto.FLOAT,
                                                   [1, *logits_shape[-2:]]), *outs])
    return proto.SerializeToString()


def baseline_graph(folder: Path, manifest: Manifest) -> bytes:
    """The backbone's plain per-frame network, head(enc_hi(enc_lo(x))) (DCFM's keyframe without the
    FFM), as one graph wired from the stage files: what dcfm-bench compares DCFM's frames with, at
    one call a frame like them."""
    import onnx
    from onnx import compose

    p = {}
    for n in ("enc_lo", "enc_hi", "head"):
        proto = onnx.load(str(folder / manifest.graphs[n].file))
        del proto.metadata_props[:]  # each names its own graph; merge_models refuses differing values
        p[n] = compose.add_prefix(proto, prefix=f"{n}/")
    lo_hi = compose.merge_models(p["enc_lo"], p["enc_hi"], io_map=[("enc_lo/f_in", "enc_hi/f_in")])
    g = compose.merge_models(lo_hi, p["head"], io_map=[("enc_hi/f_co", "head/f")])
    g = _rename(g, {"enc_lo/x": "x", "head/logits": "logits"}, ("logits",))
    for k, v in {**manifest.metadata, META_PREFIX + "graph": "baseline"}.items():
        entry = g.metadata_props.add()
        entry.key, entry.value = k, v
    return g.SerializeToString()


def _export_one(module: nn.Module, args: tuple[Tensor, ...], input_names: tuple[str, ...],
                output_names: tuple[str, ...]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns on every shape-dependent Python branch; shapes are fixed here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, buf, input_names=list(input_names), output_names=list(output_names),
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_onnx(model: DCFM, out_dir: str | Path, size: tuple[int, int] | None = None,
                source_sha256: str | None = None, progress: Callable[[str], None] | None = None,
                dtype: str = "fp32", model_hash: str | None = None) -> Manifest:
    """Export every stage graph of `model` at `size` (default: the model's input size) into out_dir.

    dtype "fp16": graphs in half precision throughout (what a strongly typed TensorRT build takes;
    the model's L2 Norm keeps its float32 island). Raises ExportError naming the graph and modules
    that failed. The model is put in eval mode on the CPU (tracing runs there; the graphs run anywhere).
    """
    import onnx

    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"export dtype must be fp32 or fp16, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(size or model.config.input_size)  # type: ignore[assignment]
    model = model.to("cpu").float().eval()
    model_hash = model_hash or model_sha256(model)
    meta = graph_metadata(model, size, model_hash, source_sha256, dtype)  # type: ignore[arg-type]
    if dtype == "fp16":
        # Traced on the GPU when there is one: half-precision kernels are a GPU's, not every CPU's.
        model = copy.deepcopy(model).half().to("cuda" if torch.cuda.is_available() else "cpu")
    # An old manifest must not describe a folder whose files are being replaced.
    (out / MANIFEST).unlink(missing_ok=True)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    x = x.to(next(model.parameters()).device, next(model.parameters()).dtype)
    protos: dict[str, Any] = {}
    specs: dict[str, GraphSpec] = {}
    stages = _stages(model, x)
    for n, (name, module, args, names_in, names_out, covers) in enumerate(stages, 1):
        if progress is not None:
            progress(f"[{n}/{len(stages)}] {name} ({covers})")
        try:
            with torch.no_grad():
                outputs = module(*args)
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                protos[name] = onnx.load_from_string(_export_one(module, args, names_in, names_out))
        except Exception as exc:
            raise ExportError(f"cannot export graph {name!r} ({covers}) of {model.config.backbone} at "
                              f"{size[0]}x{size[1]}: {type(exc).__name__}: {exc}") from exc
        specs[name] = GraphSpec(name, f"{name}.onnx", names_in, names_out,
                                tuple(tuple(a.shape) for a in args), tuple(tuple(o.shape) for o in outputs))
    try:
        protos.update(_compose_frames({k: protos[k] for k in ("enc_lo", "enc_hi", "common", "fuse", "head")}))
    except Exception as exc:
        raise ExportError(f"cannot compose the key/nonkey graphs of {model.config.backbone}: "
                          f"{type(exc).__name__}: {exc}") from exc
    s_lo, s_co, s_head = specs["enc_lo"], specs["common"], specs["head"]
    specs["key"] = GraphSpec("key", "key.onnx", ("x",), ("logits", "common"), s_lo.input_shapes,
                             (s_head.output_shapes[0], s_co.output_shapes[0]))
    specs["nonkey"] = GraphSpec("nonkey", "nonkey.onnx", ("x", "common"), ("logits",),
                                (s_lo.input_shapes[0], s_co.output_shapes[0]), s_head.output_shapes)
    graphs: dict[str, GraphSpec] = {}
    for name, proto in protos.items():
        for k, v in {**meta, META_PREFIX + "graph": name}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        proto.producer_name = "dcfm_ros"
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(f"graph {name!r} of {model.config.backbone} fails onnx.checker: {exc}") from exc
        write_bytes_atomic(out / f"{name}.onnx", proto.SerializeToString())
        graphs[name] = specs[name]
    units = model.deep_units()
    costs = tuple(max(float(sum(p.numel() for p in u.parameters())), 1.0) for u in units)
    manifest = Manifest(metadata=meta, graphs=graphs, num_deep_units=len(units), deep_unit_costs=costs)
    write_bytes_atomic(out / MANIFEST, manifest.to_json().encode())
    return manifest


def read_graph_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
