"""dcfm-fleet-eval: score many recorded drives (rosbag2) with the node's engine and parameters, read straight
from the bags (rosbags: no ROS graph, no replay), serially, in N processes or on a Ray cluster.

    dcfm-fleet-eval BAG|FOLDER|GLOB ... [--list FILE] [--params FILE] [--param NAME=VALUE ...]
                    [--model FILE] [--image-topic T] [--gt-topic T] [--out DIR]
                    [--workers N | --ray [ADDRESS]] [--threads N] [--max-frames N]
                    [--export-hard N [--export-context K] [--export-dir DIR]]

Each bag's camera topic goes frame by frame, in record order, through the StreamEngine the node builds
from the same parameters (node defaults < --params file < --param, dcfm_ros.engine.settings), every frame
processed as with drop_policy none. Per bag, OUT/bags/<bag id>.json is written as the bag finishes:
frames, keyframe ratio, the node's per-frame confidence (mean, low percentile, and the time ranges where
the node's diagnostics would warn: the mean of the last confidence.window frames below
confidence.warn_below), per-class pixel shares, and mIoU / mVC where the bag has ground truth
(--gt-topic where the bag has it, else the label topic dcfm-make-bag recorded; frames matched by header
stamp, metrics as dcfm-bag-eval computes them). A rerun reuses results of the same run key (model file
bytes + scoring parameters); --rerun scores everything again. A bag that cannot be read is named in the
report and skipped; the others go on.

Then OUT/fleet_report.json / .md and plots: drives ranked by confidence (lowest first), class shares over
the fleet, accuracy where labels exist. --export-hard N writes the N lowest-confidence frames (with
--export-context frames either side) as a folder dataset (images/, empty labels/, classes.yaml) for
labelling and `dataset.type: folder` training.

Engines: serial (default, PyTorch's thread count, like the node); --workers N: N processes, one engine
each, --threads (default cores / N) torch threads each; --ray: a local Ray (cores / --threads CPUs), --ray
ADDRESS (or auto): an existing cluster, one actor per worker (--workers, default cluster CPUs /
--threads), a GPU each where the cluster has GPUs. Ray is optional: pip install 'dcfm_ros[fleet]'.
Results are the same whichever runs them (per-bag engine reset; tests compare them).

Exit status: 0 every bag scored; 1 the report is written but some bags could not be read; 2 bad input
(no bags, params, model, export folder) or an executor that failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.bag_eval.params import parse_param

LOCAL = "local"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-fleet-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bags", nargs="*", help="rosbag2 folders, .mcap/.db3 files, folders of bags, or globs")
    p.add_argument("--list", type=Path, action="append", default=[], metavar="FILE",
                   help="a file with one bag / folder / glob a line (# comments; repeatable)")
    p.add_argument("--params", type=Path, help="node params file (e.g. config/dcfm.yaml)")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="override one node parameter (repeatable), e.g. keyframe.interval=3")
    p.add_argument("--model", help="checkpoint file (shortcut for --param model=FILE)")
    p.add_argument("--image-topic", help="camera topic; default: each bag's only camera image topic")
    p.add_argument("--gt-topic", help="ground-truth label topic (train ids, 255 = void), used in the bags "
                   "that have it; default: the label topic dcfm-make-bag recorded in a bag")
    p.add_argument("--out", type=Path, default=Path("out/fleet"), help="output folder (default out/fleet)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--workers", type=int, help="processes on this machine, one engine each")
    run.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                     help="run on Ray: no ADDRESS starts a local Ray; ADDRESS (or auto) joins a cluster")
    p.add_argument("--ray-workers", type=int, help="Ray actors (default: cluster CPUs / --threads)")
    p.add_argument("--threads", type=int, help="torch threads per engine (default: serial PyTorch's "
                   "default; --workers N: cores / N; --ray: 1)")
    p.add_argument("--max-frames", type=int, metavar="N", help="score at most the first N frames of a bag")
    p.add_argument("--low-percentile", type=float, default=5.0,
                   help="the low confidence percentile reported per bag (default 5)")
    p.add_argument("--rerun", action="store_true", help="score every bag again (ignore stored results)")
    p.add_argument("--export-hard", type=int, metavar="N", help="write the N lowest-confidence frames as a "
                   "folder dataset")
    p.add_argument("--export-context", type=int, default=1, metavar="K",
                   help="unlabelled frames either side of each hard frame (DCFM's neighbours; default 1)")
    p.add_argument("--export-dir", type=Path, help="folder dataset root (default OUT/hard_frames)")
    p.add_argument("--export-split", default="train", help="split folder name (default train)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --export-dir")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def _check(args: argparse.Namespace) -> None:
    for name in ("workers", "ray_workers", "threads", "max_frames", "export_hard"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if not 0 <= args.low_percentile <= 100:
        raise ValueError(f"--low-percentile must be in 0..100, got {args.low_percentile}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dcfm_ros.engine.settings import ParameterError, StartupError
    from dcfm_ros.evaluation.bag_eval.errors import BagEvalError
    from dcfm_ros.evaluation.fleet import aggregate, executors
    from dcfm_ros.evaluation.fleet.bags import FleetInputError, expand_bags
    from dcfm_ros.evaluation.fleet.hard import ExportError, export_hard
    from dcfm_ros.evaluation.fleet.results import ResultStore
    from dcfm_ros.evaluation.fleet.run_spec import make_spec

    def say(text: str) -> None:
        if not args.quiet:
            print(f"dcfm-fleet-eval: {text}", file=sys.stderr)

    cores = os.cpu_count() or 1
    try:
        _check(args)
        bags = expand_bags(args.bags, args.list)
        kind = "ray" if args.ray is not None else "processes" if args.workers else "serial"
        threads = args.threads
        if threads is None and kind == "processes":
            threads = max(1, cores // args.workers)
        elif threads is None and kind == "ray":
            threads = 1
        overrides = list(args.param) + ([("model", args.model)] if args.model else [])
        spec = make_spec(args.params, overrides, image_topic=args.image_topic, gt_topic=args.gt_topic,
                         max_frames=args.max_frames, low_percentile=args.low_percentile, threads=threads)
        store = ResultStore(args.out)
        results: dict[Path, dict[str, Any]] = {}
        if not args.rerun:
            for b in bags:
                doc = store.done(b, spec.key)
                if doc is not None:
                    results[b] = doc
        reused = len(results)
        todo = [b for b in bags if b not in results]
        say(f"{len(bags)} bags: {reused} done already (same model and parameters), {len(todo)} to score "
            f"({kind}{f', {args.workers} workers' if args.workers else ''}, threads "
            f"{threads or 'default'}); results in {store.dir}")
        by_str = {str(b): b for b in todo}
        frames_now = 0

        def on_result(r: dict[str, Any]) -> None:
            nonlocal frames_now
            store.write(r)
            results[by_str[r["bag"]]] = r
            k = len(results) - reused
            if r["status"] == "ok":
                frames_now += r["frames"]
                c = r["confidence"]["mean"]
                say(f"[{k}/{len(todo)}] {r['bag']}: {r['frames']} frames, confidence "
                    f"{'n/a' if c is None else f'{c:.3f}'}, {r['timing']['fps'] or 0:.1f} frames/s")
            else:
                say(f"[{k}/{len(todo)}] SKIPPED {r['bag']}: {r['error']}")

        t0 = time.perf_counter()
        used: dict[str, Any] = {}
        if todo:
            if kind == "serial":
                executors.run_serial(todo, spec, on_result)
            elif kind == "processes":
                executors.run_processes(todo, spec, args.workers, on_result)
            else:
                address = None if args.ray == LOCAL else args.ray
                used = executors.run_ray(todo, spec, on_result, address=address, workers=args.ray_workers,
                                         local_cpus=None if address else max(1, cores // threads) * threads)
        wall = time.perf_counter() - t0
        executor = {"kind": kind, "workers": args.workers, "threads": threads, "wall_s": wall,
                    "frames_scored": frames_now, "frames_per_s": frames_now / wall if todo and wall > 0
                    else None, **({"ray": used} if used else {})}
        ordered = [results[b] for b in bags]
        rep = aggregate.write_report(args.out, aggregate.build_report(ordered, spec, reused=reused,
                                                                      executor=executor))
        if args.export_hard:
            ok = [r for r in ordered if r.get("status") == "ok"]
            root = args.export_dir or args.out / "hard_frames"
            m = export_hard(ok, args.export_hard, root, class_names=spec.class_names, palette=spec.palette,
                            context=args.export_context, split=args.export_split, overwrite=args.overwrite)
            say(f"{m['hard_frames']} hard frames ({m['frames_written']} with context) written to {root}")
    except (FleetInputError, BagEvalError, ParameterError, StartupError, ExportError, ValueError,
            executors.ExecutorError) as exc:
        print(f"dcfm-fleet-eval: error: {exc}", file=sys.stderr)
        return 2
    b = rep["bags"]
    print(f"{b['given']} bags ({b['scored']} scored, {b['reused']} reused, {b['failed']} failed), "
          f"{rep['frames']} frames; {frames_now} scored in {wall:.1f} s"
          + (f" ({frames_now / wall:.1f} frames/s)" if frames_now and wall > 0 else ""))
    for f in rep["failed"]:
        print(f"failed: {f['bag']}: {f['error']}")
    if rep["accuracy"]:
        a = rep["accuracy"]
        print(f"mIoU {a['miou']:.4f} over {a['frames']} labelled frames in {a['bags']} bags")
    print(f"report: {args.out / 'fleet_report.md'}  ({args.out / 'fleet_report.json'})")
    return 1 if rep["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
