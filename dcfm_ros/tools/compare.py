"""dcfm-compare: the command line of dcfm_ros.evaluation.compare (its module doc says what is compared)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dcfm_ros.engine.specs import parse_policy
from dcfm_ros.evaluation import compare as compare_module
from dcfm_ros.evaluation.compare import Method, compare, markdown_table, merge_reports, write_atomic
from dcfm_ros.tools.args import doc_summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dcfm-compare", description=doc_summary(compare_module),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="CamVid root (SegNet layout)")
    p.add_argument("--split", default="val", help="val (dense 15 Hz clip) or test (1 Hz)")
    p.add_argument("--dcfm", required=True, help="DCFM checkpoint (rows DCFM and DCFM + cosine blend)")
    p.add_argument("--tfc", help="TFC checkpoint (row TFC)")
    p.add_argument("--reuse", help="DCFM trained without L_B (row feature reuse)")
    p.add_argument("--dcfm-label", default="DCFM",
                   help="name of the --dcfm rows, e.g. 'DCFM (700 it)' next to the shipped model's")
    p.add_argument("--blend", default="cosine",
                   help="nonkey_blend of the DCFM + blend rows; a comma list gives one row each")
    p.add_argument("--peer", action="append", default=[], metavar="LABEL=CKPT",
                   help="a multi-frame peer's checkpoint (MRCFA / SD-CPC, e.g. 'MRCFA=runs/mrcfa/model."
                        "safetensors'), one row each; repeatable (ablations)")
    p.add_argument("--tfc-untrained", action="store_true",
                   help="the TFC checkpoint is not trained: report only its times (accuracy n/t)")
    p.add_argument("--policies", default="fixed:2,fixed:5,motion:0.1,feature:0.75",
                   help="comma list: fixed:K, motion:THR[:MIN[:MAX]], feature:THR[:MIN[:MAX]]")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--markdown", help="write the markdown table here")
    p.add_argument("--no-per-frame", action="store_true", help="leave out the per-frame rows")
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="only join the rows of earlier --json reports (one split) into one table")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        policies = [parse_policy(t) for t in args.policies.split(",") if t.strip()]
        methods = []
        if args.reuse:
            methods.append(Method("feature reuse (DCFM without L_B)", args.reuse, "none"))
        methods.append(Method(args.dcfm_label, args.dcfm, "none"))
        for blend in (b.strip() for b in args.blend.split(",") if b.strip()):
            methods.append(Method(f"{args.dcfm_label} + {blend} blend", args.dcfm, blend))
        if args.tfc:
            methods.append(Method("TFC", args.tfc, "auto", trained=not args.tfc_untrained))
        for text in args.peer:
            label, sep, ckpt = text.partition("=")
            if not sep or not label.strip() or not ckpt.strip():
                raise ValueError(f"--peer expects LABEL=CKPT, got {text!r}")
            methods.append(Method(label.strip(), ckpt.strip(), "none"))
        if args.merge:
            report = merge_reports(args.merge)
        else:
            def save(partial: dict[str, Any]) -> None:
                if args.json:
                    write_atomic(args.json, json.dumps(partial, indent=2))
            report = compare(methods, policies, args.root, args.split, device=args.device,
                             progress=not args.quiet, per_frame_rows=not args.no_per_frame, on_row=save)
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"dcfm-compare: error: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(report)
    print(table)
    if args.json:
        write_atomic(args.json, json.dumps(report, indent=2))
    if args.markdown:
        write_atomic(args.markdown, table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
