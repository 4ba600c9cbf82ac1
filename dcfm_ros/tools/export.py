"""dcfm-export: a checkpoint's stage graphs to ONNX (dcfm_ros.engine.backends.onnx_export does the work)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from dcfm_ros.engine.backends.onnx_export import OPSET, ExportError, export_onnx, file_sha256
from dcfm_ros.engine.specs import parse_size
from dcfm_ros.model import CheckpointError, load_checkpoint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-export", description="Export a DCFM checkpoint's stages "
                                "(enc_lo, enc_hi, deep units, common, fuse, head, key, nonkey) to ONNX.")
    p.add_argument("model", type=Path, help="checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--size", default=None, help="network input HxW (default: the checkpoint's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        size = parse_size(args.size) if args.size else None
    except ValueError as exc:
        print(f"dcfm-export: --size: {exc}", file=sys.stderr)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
