"""Post-training int8 of the fast path's frame graphs (key, nonkey), from an fp32 export folder.

Both quantizers write ONNX with QuantizeLinear/DequantizeLinear pairs (QDQ), so the graphs stay
files of the same export layout: the frame variants with extra outputs and the graph-I/O variants
(onnx_export.frame_variant / io_variant) are made from them exactly as from the fp32 ones, and every
check on names, shapes and metadata applies unchanged.

    qdq   (both backends, the default): onnxruntime.quantization.quantize_static, QDQ format, uint8
          activations, per-channel int8 weights, min/max ranges. ONNX Runtime fuses the pairs into its
          int8 kernels; OpenVINO turns them into FakeQuantize and runs its int8 kernels.
    qdq-sym (tensorrt): the same, with int8 activations and weights both symmetric (zero points 0)
          and the biases left in float:
          TensorRT's explicit quantization takes only symmetric signed int8 Q/DQ, so its engines are
          built from these graphs (strongly typed: the Q/DQ pairs say where int8 runs).
    nncf  (dcfm-export --quantizer nncf, for comparison): NNCF's ONNX post-training quantization
          (default preset, fast bias correction). Measured on the shipped model it keeps only 83.5 %
          of fp32's keyframe labels on the demo drive (qdq: 98.6 %; NNCF on the OpenVINO model
          instead: 99.0 %, but that gives an OpenVINO IR, not a file the ONNX variants are made
          from), so no backend uses it by default (docs/fast-path.md "int8").

Only key and nonkey are quantized; the stage graphs (profiling mode, deferred schedules) and the
similarity graph stay fp32. The non-key graph is calibrated with each frame's own common part from
the fp32 keyframe graph. The folder's metadata says dtype int8-<method> and the calibration's hash,
so a folder made from other frames (or by the other method) is refused as stale.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.engine.backends.calibration import Calibration, network_inputs
from dcfm_ros.engine.backends.onnx_export import (
    FRAME_GRAPHS,
    MANIFEST,
    META_PREFIX,
    Manifest,
    write_bytes_atomic,
)

# backend -> quantizer (one int8 folder serves openvino and onnxruntime)
METHODS = {"openvino": "qdq", "onnxruntime": "qdq", "tensorrt": "qdq-sym"}
QUANTIZERS = ("qdq", "qdq-sym", "nncf")


def int8_dtype(method: str) -> str:
    return f"int8-{method}"


def method_for(backend: str) -> str:
    try:
        return METHODS[backend]
    except KeyError:
        raise ValueError(f"precision 'int8' runs on backend 'openvino' or 'onnxruntime' (static QDQ) or "
                         f"'tensorrt' (GPU), not {backend!r}: pass --backend openvino (or "
                         f"backend:=openvino)") from None


def int8_metadata(fp32: dict[str, str], method: str, calibration_sha256: str) -> dict[str, str]:
    return {**fp32, META_PREFIX + "dtype": int8_dtype(method),
            META_PREFIX + "calibration_sha256": calibration_sha256}


def _set_metadata(proto: Any, meta: dict[str, str], graph: str) -> None:
    del proto.metadata_props[:]
    for k, v in {**meta, META_PREFIX + "graph": graph}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def _feeds(fp32_folder: Path, manifest: Manifest,
           calibration: Calibration) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs of key (x) and nonkey (x, the fp32 keyframe graph's common of that frame)."""
    import json

    import onnxruntime as ort

    meta = manifest.metadata

    xs = network_inputs(calibration.frames, manifest.input_size, json.loads(meta[META_PREFIX + "mean"]),
                        json.loads(meta[META_PREFIX + "std"]))
    key = ort.InferenceSession(str(fp32_folder / manifest.graphs["key"].file),
                               providers=["CPUExecutionProvider"])
    commons = [key.run(["common"], {"x": x})[0] for x in xs]
    return {"key": [{"x": x} for x in xs],
            "nonkey": [{"x": x, "common": c} for x, c in zip(xs, commons, strict=True)]}


def _nncf(src: Path, feeds: list[dict[str, np.ndarray]]) -> Any:
    try:
        import nncf
    except ImportError:
        raise RuntimeError("quantizer 'nncf' needs the nncf package (pip install nncf==3.4.0); the "
                           "default quantizer 'qdq' needs only onnxruntime") from None
    import onnx

    model = onnx.load(str(src))
    return nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), fast_bias_correction=True)


def _qdq(src: Path, feeds: list[dict[str, np.ndarray]], work: Path, symmetric: bool = False) -> Any:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    # The composed frame graphs list the default opset once per merged stage; ORT's quantizer wants
    # it once.
    model = onnx.load(str(src))
    seen: dict[str, Any] = {}
    for op in model.opset_import:
        seen.setdefault(op.domain, op)
    kept = [type(model.opset_import[0])() for _ in seen]
    for dst, op in zip(kept, seen.values(), strict=True):
        dst.CopyFrom(op)
    del model.opset_import[:]
    model.opset_import.extend(kept)
    inp = work / f".{src.stem}.fp32.onnx"
    onnx.save(model, str(inp))
    out = work / f".{src.stem}.qdq.onnx"
    # the calibration sessions warn once per unused initializer of the composed graphs: noise
    ort.set_default_logger_severity(3)
    # TensorRT: symmetric int8 only, and biases left in float (it has no int32 bias dequantize)
    sym = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False} if symmetric else {}
    quantize_static(str(inp), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, extra_options=sym)
    proto = onnx.load(str(out))
    out.unlink(missing_ok=True)
    inp.unlink(missing_ok=True)
    return proto


def quantize_folder(fp32_folder: Path, manifest: Manifest, out: Path, method: str,
                    calibration: Calibration, progress: Callable[[str], None] | None = None) -> Manifest:
    """Write into `out` (an empty folder) the export of `fp32_folder` with key and nonkey quantized by
    `method` on `calibration`'s frames; the manifest is written last."""
    import onnx

    if method not in QUANTIZERS:
        raise ValueError(f"unknown int8 quantizer {method!r}; expected one of {', '.join(QUANTIZERS)}")
    meta = int8_metadata(manifest.metadata, method, calibration.sha256)
    feeds = _feeds(fp32_folder, manifest, calibration)
    for name, spec in manifest.graphs.items():
        src = fp32_folder / spec.file
        if name in FRAME_GRAPHS:
            if progress is not None:
                progress(f"int8 ({method}): quantizing {name} on {len(feeds[name])} calibration frames")
            proto = (_nncf(src, feeds[name]) if method == "nncf"
                     else _qdq(src, feeds[name], out, symmetric=method == "qdq-sym"))
        else:
            proto = onnx.load(str(src))
        _set_metadata(proto, meta, name)
        write_bytes_atomic(out / spec.file, proto.SerializeToString())
    result = Manifest(metadata=meta, graphs=dict(manifest.graphs), num_deep_units=manifest.num_deep_units,
                      deep_unit_costs=manifest.deep_unit_costs)
    write_bytes_atomic(out / MANIFEST, result.to_json().encode())
    return result
