"""dcfm-export: a checkpoint's stage graphs to ONNX (dcfm_ros.engine.backends.onnx_export does the work);
with --precision int8 also the quantized frame graphs, checked against fp32 on labelled frames.

    dcfm-export MODEL --out DIR --precision int8 --calibration folder:/data/camvid/train:64 \\
        --check /data/camvid/val:/data/camvid/valannot:32 [--backend openvino] [--max-miou-drop 1.0]

int8 writes DIR/int8-<quantizer>-<calibration hash>/ next to the fp32 graphs in DIR, runs both on the
check frames (each as a keyframe and as a non-key frame on the previous check frame's common part),
prints mIoU and pixel agreement, and exits 1 (removing the int8 folder) when int8 loses more than
--max-miou-drop mIoU points on either frame kind.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcfm_ros.engine.backends.onnx_export import (
    META_PREFIX,
    OPSET,
    ExportError,
    Manifest,
    export_onnx,
    file_sha256,
)
from dcfm_ros.engine.specs import parse_size
from dcfm_ros.model import CheckpointError, load_checkpoint

DEFAULT_CHECK_FRAMES = 32


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-export", description="Export a DCFM checkpoint's stages "
                                "(enc_lo, enc_hi, deep units, common, fuse, head, key, nonkey) to ONNX; "
                                "--precision int8 also quantizes key and nonkey and checks them.")
    p.add_argument("model", type=Path, help="checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--size", default=None, help="network input HxW (default: the checkpoint's)")
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    p.add_argument("--backend", choices=("openvino", "onnxruntime"), default="openvino",
                   help="int8: the runtime the check runs the graphs with")
    p.add_argument("--quantizer", choices=("qdq", "qdq-sym", "nncf"), default="qdq",
                   help="int8: qdq (ONNX Runtime static QDQ; what openvino and onnxruntime use), qdq-sym "
                        "(the same, symmetric: what tensorrt builds its int8 engines from; checked here "
                        "on the CPU --backend) or nncf (NNCF's ONNX quantizer, for comparison; needs the "
                        "nncf package)")
    p.add_argument("--calibration", default=None,
                   help="int8: folder:DIR[:N] | video:FILE[:N] | bag:PATH:TOPIC[:N], frames of the model's "
                        "TRAINING split (default: the frames shipped with the model, if any)")
    p.add_argument("--check", default=None,
                   help="int8: IMAGES_DIR:LABELS_DIR[:N] labelled frames (labels by file stem) to compare "
                        f"fp32 and int8 on (N default {DEFAULT_CHECK_FRAMES}); e.g. "
                        f"camvid/val:camvid/valannot")
    p.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="int8: fail when int8 loses more mIoU points than this on either frame kind")
    return p


def parse_check(text: str) -> tuple[Path, Path, int]:
    parts = str(text).split(":")
    count = DEFAULT_CHECK_FRAMES
    if len(parts) == 3 and parts[2].isdigit():
        count = int(parts[2])
        parts = parts[:2]
    if len(parts) != 2 or not all(parts) or count < 1:
        raise ValueError(f"--check must be IMAGES_DIR:LABELS_DIR[:N], e.g. /data/camvid/val:"
                         f"/data/camvid/valannot:32, got {text!r}")
    images, labels = Path(parts[0]).expanduser(), Path(parts[1]).expanduser()
    for d in (images, labels):
        if not d.is_dir():
            raise ValueError(f"--check: folder {d} does not exist")
    return images, labels, count


def _check_pairs(images: Path, labels: Path, count: int) -> list[tuple[Path, Path]]:
    from dcfm_ros.engine.backends.calibration import IMAGE_SUFFIXES, _spread

    label_by_stem = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = [(p, label_by_stem[p.stem]) for p in sorted(images.iterdir())
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in label_by_stem]
    if not pairs:
        raise ValueError(f"--check: no image in {images} has a label of the same name in {labels}")
    return [pairs[i] for i in _spread(len(pairs), count)]


class _Graphs:
    """key and nonkey of one export folder, run by `backend`'s runtime on numpy inputs."""

    def __init__(self, folder: Path, manifest: Manifest, backend: str) -> None:
        import torch

        key, nonkey = (folder / manifest.graphs[k].file for k in ("key", "nonkey"))
        threads = torch.get_num_threads()
        if backend == "openvino":
            import openvino as ov

            core = ov.Core()
            cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
            reqs = [core.compile_model(str(p), "CPU", cfg).create_infer_request() for p in (key, nonkey)]

            def run(i: int, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
                reqs[i].infer(feeds)
                return [reqs[i].get_tensor(n).data.copy() for n in names]
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.log_severity_level = 3
            cpu = ["CPUExecutionProvider"]
            sess = [ort.InferenceSession(str(p), opts, providers=cpu) for p in (key, nonkey)]

            def run(i: int, feeds: dict[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
                return list(sess[i].run(list(names), feeds))
        self._run = run

    def key(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, common = self._run(0, {"x": x}, ("logits", "common"))
        return logits, common

    def nonkey(self, x: np.ndarray, common: np.ndarray) -> np.ndarray:
        return self._run(1, {"x": x, "common": common}, ("logits",))[0]


def _labels(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = F.interpolate(torch.from_numpy(logits), size=size, mode="bilinear", align_corners=False)
    return t.argmax(1)[0].numpy().astype(np.uint8)


def check_int8(fp32: tuple[Path, Manifest], int8: tuple[Path, Manifest], backend: str,
               pairs: list[tuple[Path, Path]], num_classes: int) -> dict[str, dict[str, float]]:
    """{"key"|"nonkey": {"fp32": mIoU, "int8": mIoU, "agreement": share of pixels}} in percent."""
    from dcfm_ros.data.datasets.pairs import make_lut, read_raw_label, read_rgb
    from dcfm_ros.data.metrics import ConfusionMatrix
    from dcfm_ros.engine.backends.calibration import network_inputs

    meta = fp32[1].metadata
    mean, std = json.loads(meta[META_PREFIX + "mean"]), json.loads(meta[META_PREFIX + "std"])
    runners = {"fp32": _Graphs(*fp32, backend), "int8": _Graphs(*int8, backend)}
    lut = make_lut({i: i for i in range(num_classes)})
    cms = {(k, p): ConfusionMatrix(num_classes) for k in ("key", "nonkey") for p in runners}
    same = {"key": [], "nonkey": []}
    prev: dict[str, np.ndarray] = {}
    for image, label in pairs:
        gt = lut[read_raw_label(label)]
        x = network_inputs([read_rgb(image)], fp32[1].input_size, mean, std)[0]
        got = {}
        for p, r in runners.items():
            logits, common = r.key(x)
            got["key", p] = _labels(logits, gt.shape)
            got["nonkey", p] = _labels(r.nonkey(x, prev.get(p, common)), gt.shape)
            prev[p] = common
        for k in ("key", "nonkey"):
            for p in runners:
                cms[k, p].update(got[k, p], gt)
            same[k].append(float(np.mean(got[k, "fp32"] == got[k, "int8"])))
    return {k: {"fp32": 100 * cms[k, "fp32"].miou(), "int8": 100 * cms[k, "int8"].miou(),
                "agreement": 100 * float(np.mean(same[k]))} for k in ("key", "nonkey")}


def _int8(args: argparse.Namespace, model: object, fp32_manifest: Manifest) -> int:
    from dcfm_ros.engine.backends.calibration import CalibrationError, read_calibration, shipped_calibration
    from dcfm_ros.engine.backends.quantize import quantize_folder

    say = lambda line: print(f"dcfm-export: {line}", flush=True)  # noqa: E731
    try:
        check = parse_check(args.check) if args.check else None
        spec = args.calibration or shipped_calibration(fp32_manifest.model_hash)
        if spec is None:
            raise ValueError("--precision int8 needs --calibration folder:DIR[:N] (or video:FILE[:N], "
                             "bag:PATH:TOPIC[:N]) with frames of the model's training split; no "
                             "calibration ships with this model")
        if check is None:
            raise ValueError("--precision int8 needs --check IMAGES_DIR:LABELS_DIR[:N], labelled frames "
                             "(e.g. the validation split) to compare int8 with fp32 on")
        calibration = read_calibration(spec)
        pairs = _check_pairs(*check)
    except (ValueError, CalibrationError) as exc:
        print(f"dcfm-export: {exc}", file=sys.stderr)
        return 2
    method = args.quantizer
    folder = args.out / f"int8-{method}-{calibration.sha256[:16]}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=args.out))
    try:
        say(f"int8 ({method}) on {len(calibration.frames)} calibration frames of {calibration.spec.text()}")
        manifest = quantize_folder(args.out, fp32_manifest, tmp, method, calibration, say)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(f"checking fp32 vs int8 ({args.backend}) on {len(pairs)} labelled frames of {check[0]}")
    result = check_int8((args.out, fp32_manifest), (folder, manifest), args.backend, pairs,
                        model.config.num_classes)  # type: ignore[attr-defined]
    worst = 0.0
    for kind, r in result.items():
        drop = r["fp32"] - r["int8"]
        worst = max(worst, drop)
        say(f"{kind:6s}: mIoU fp32 {r['fp32']:.2f}  int8 {r['int8']:.2f}  (drop {drop:+.2f})  "
            f"pixel agreement {r['agreement']:.2f} %")
    if worst > args.max_miou_drop:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"dcfm-export: int8 loses {worst:.2f} mIoU points, more than --max-miou-drop "
              f"{args.max_miou_drop}: the int8 graphs were removed. Try more or more varied training "
              f"frames (--calibration ...:N), the other --backend's quantizer, or precision bf16/fp32 "
              f"(or raise --max-miou-drop if that loss is acceptable)", file=sys.stderr)
        return 1
    say(f"int8 graphs -> {folder}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        print(f"dcfm-export: --size: {exc}", file=sys.stderr)
        return 2
    if args.precision == "int8" and args.calibration:
        from dcfm_ros.engine.specs import parse_calibration

        try:  # a bad spec fails before minutes of export
            parse_calibration(args.calibration)
        except ValueError as exc:
            print(f"dcfm-export: --calibration: {exc}", file=sys.stderr)
            return 2
    try:
        model, _ = load_checkpoint(args.model)
    except CheckpointError as exc:
        print(f"dcfm-export: {exc}", file=sys.stderr)
        return 1
    try:
        manifest = export_onnx(model, args.out, size, source_sha256=file_sha256(args.model),
                               progress=lambda line: print(f"dcfm-export: {line}", flush=True))
    except ExportError as exc:
        print(f"dcfm-export: {exc}", file=sys.stderr)
        return 1
    h, w = manifest.input_size
    print(f"dcfm-export: {len(manifest.graphs)} graphs ({manifest.num_deep_units} deep units) at {h}x{w}, "
          f"opset {OPSET}, model {manifest.model_hash[:12]} -> {args.out}")
    if args.precision == "int8":
        return _int8(args, model, manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
