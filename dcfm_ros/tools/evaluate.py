"""dcfm-evaluate: the command line of dcfm_ros.evaluation.evaluate (its module doc says what is measured)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dcfm_ros.data.datasets import dataset_spec, video_frames
from dcfm_ros.engine.specs import parse_policy, parse_schedule, split_list
from dcfm_ros.engine.specs import parse_size as parse_size_hw
from dcfm_ros.evaluation import evaluate as evaluate_module
from dcfm_ros.evaluation.evaluate import evaluate, format_table
from dcfm_ros.tools.args import doc_summary


def parse_schedules(text: str) -> list[str]:
    """"sync,spread:3,lag:2" -> the names; `background` is refused (its timing-dependent result is
    what lag:L prices exactly)."""
    out = []
    for item in split_list(text.lower()):
        if item.startswith("background"):
            raise ValueError("--schedule background depends on timing; use lag:L for a cache L frames late")
        if item == "spread":
            raise ValueError("--schedule spread needs N: spread:N")
        out.append(str(parse_schedule(item, offline=True)))
    if not out:
        raise ValueError("--schedule must name at least one schedule")
    return out


def parse_size(text: str | None) -> tuple[int, int] | None:
    try:
        return None if text is None else parse_size_hw(text)
    except ValueError as exc:
        raise ValueError(f"--size: {exc}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dcfm-evaluate", description=doc_summary(evaluate_module),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint (.safetensors) written by dcfm-train")
    p.add_argument("--dataset", required=True, choices=("camvid", "cityscapes", "vspw", "folder"),
                   help="folder: your own recordings (ROOT/classes.yaml; dcfm-train's dataset.type folder)")
    p.add_argument("--root", required=True, help="dataset root folder")
    p.add_argument("--split", default="val", help="split name (val, test, ...)")
    p.add_argument("--modes", default="p,b", help="comma list of p (causal) and b (bidirectional)")
    p.add_argument("--policies", default="fixed:1,fixed:2,fixed:5",
                   help="comma list of fixed:K, motion:THR[:MIN[:MAX]] and feature:THR[:MIN[:MAX]]")
    p.add_argument("--schedule", default="sync",
                   help="comma list of keyframe schedules for P mode: sync, spread:N (deep pass in N "
                        "pieces over the following frames), lag:L (cache used L frames late: what "
                        "background amounts to); all exact and deterministic")
    p.add_argument("--blend", default="auto",
                   help="P mode's non-key blend: none | auto (the model's own: none for DCFM, cosine "
                        "for TFC) | cosine[:feature|logits][:key|prev][:strength], e.g. cosine:prev:0.5")
    p.add_argument("--size", help="network input HxW (default: the checkpoint's input_size)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--precision", default="fp32",
                   help="fp32 | fp16 | bf16 | int8 (engine precisions; int8: backend openvino or "
                        "onnxruntime, on the model's shipped calibration)")
    p.add_argument("--backend", default="auto",
                   help="auto | torch | onnxruntime | openvino | tensorrt (inference backend)")
    p.add_argument("--backend-cache-dir", default=None,
                   help="exported graphs / engines (default: $XDG_CACHE_HOME/dcfm_ros or ~/.cache/dcfm_ros)")
    p.add_argument("--videos", help="comma list of video names to restrict to (default: all)")
    p.add_argument("--max-frames", type=int, help="use at most the first N frames of each video")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--quiet", action="store_true", help="no per-video progress")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from dcfm_ros.model import load_checkpoint

        modes = [m.strip().lower() for m in args.modes.split(",") if m.strip()]
        policies = [parse_policy(t) for t in args.policies.split(",") if t.strip()]
        if not modes or not policies:
            raise ValueError("--modes and --policies must name at least one entry each")
        size = parse_size(args.size)
        schedules = parse_schedules(args.schedule)
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        model, meta = load_checkpoint(args.model)
        spec = dataset_spec(args.dataset, args.root)
        if model.config.num_classes != len(spec.class_names):
            raise ValueError(f"checkpoint predicts {model.config.num_classes} classes but {args.dataset} "
                             f"has {len(spec.class_names)}")
        videos = video_frames(args.dataset, args.root, args.split)
        if args.videos:
            wanted = [v.strip() for v in args.videos.split(",") if v.strip()]
            unknown = [v for v in wanted if v not in videos]
            if unknown:
                raise ValueError(f"unknown video(s) {unknown}; available: {sorted(videos)[:20]}")
            videos = {v: videos[v] for v in wanted}
        if args.max_frames is not None:
            if args.max_frames < 1:
                raise ValueError("--max-frames must be >= 1")
            videos = {k: v[: args.max_frames] for k, v in videos.items()}
        report = evaluate(model, videos, spec.lut, args.dataset, modes, policies, input_size=size,
                          device=args.device, precision=args.precision, progress=not args.quiet,
                          schedules=schedules, backend=args.backend,
                          backend_cache_dir=args.backend_cache_dir, nonkey_blend=args.blend)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # CheckpointError is a ValueError
        print(f"dcfm-evaluate: error: {exc}", file=sys.stderr)
        return 2
    report = {"checkpoint": str(args.model), "split": args.split,
              "checkpoint_extra": {k: v for k, v in meta["extra"].items() if k != "train_config"}, **report}
    print(format_table(report))
    for n in report["notes"]:
        print(f"note: {n}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
