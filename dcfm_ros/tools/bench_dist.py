"""Training throughput under torchrun for several process counts, side by side in one run.

    python -m dcfm_ros.tools.bench_dist --config config/train/camvid_efficientnet_lite0.yaml \\
        --set dataset.root=../shared/data/camvid --nprocs 1,2 --iterations 12 --warmup 2 --rounds 2 \\
        [--threads-total 2] [--device cpu|cuda] [--json OUT]

Each (round, N) runs `torchrun --standalone --nproc_per_node N -m dcfm_ros.tools.train` on the same
config with the same GLOBAL batch (train.batch_scope: global), no evaluation, into a temporary
folder, and reads rank 0's log.csv: the wall time of each global step (data, forward, backward,
gradient all-reduce, optimiser). Rounds alternate the process counts so that a change in the load
of a shared machine hits every N alike. Prints samples/s (pairs per second) per N and the ratio to
the first N. CPU: `--threads-total` torch threads shared out over the N processes (gloo); GPU:
one process per GPU (NCCL).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dcfm_ros.training.config import load_config


def run_one(config: str, overrides: list[str], nproc: int, iterations: int, threads: int | None,
            device: str, out: Path) -> list[float]:
    sets = [*overrides, "train.batch_scope=global", "train.eval_interval=0", "train.ckpt_interval=0",
            "dataset.val_split=null", f"train.iterations={iterations}", f"device={device}",
            "train.save_fp16=false"]
    if threads is not None:
        sets.append(f"threads={threads}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "dcfm_ros.tools.train", "--config", config, "--out", str(out), "--no-progress"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or 1)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} process(es) failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    with (out / "log.csv").open() as f:
        return [float(row["time"]) for row in csv.DictReader(f)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_dist", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nprocs", default="1,2", help="comma list of process counts (default 1,2)")
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="first iterations left out of the timing")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads-total", type=int, help="CPU: torch threads shared out over the processes")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args(argv)
    nprocs = [int(n) for n in args.nprocs.split(",") if n.strip()]
    if args.warmup >= args.iterations:
        p.error("--warmup must be smaller than --iterations")
    cfg = load_config(args.config, args.overrides)
    times: dict[int, list[float]] = {n: [] for n in nprocs}
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        for r in range(args.rounds):
            for n in nprocs:
                threads = max(1, args.threads_total // n) if args.threads_total else None
                t = run_one(args.config, args.overrides, n, args.iterations, threads, args.device,
                            Path(tmp) / f"r{r}_n{n}")
                times[n] += t[args.warmup:]
                med = statistics.median(t[args.warmup:])
                print(f"round {r + 1}, {n} process(es): median {med:.3f} s/step", file=sys.stderr, flush=True)
    batch = cfg.train.batch_size
    rows: list[dict[str, Any]] = []
    for n in nprocs:
        med = statistics.median(times[n])
        rows.append({"nproc": n, "threads_per_proc": (max(1, args.threads_total // n) if args.threads_total
                                                      else None),
                     "global_batch": batch, "per_rank_batch": batch // n, "steps_timed": len(times[n]),
                     "median_s_per_step": med, "samples_per_s": batch / med})
    base = rows[0]["samples_per_s"]
    print(f"{'procs':>5} {'threads':>7} {'batch/rank':>10} {'s/step':>8} {'samples/s':>9} {'ratio':>6}")
    for row in rows:
        row["ratio_to_first"] = row["samples_per_s"] / base
        print(f"{row['nproc']:>5} {row['threads_per_proc'] or '-':>7} {row['per_rank_batch']:>10} "
              f"{row['median_s_per_step']:>8.3f} {row['samples_per_s']:>9.2f} {row['ratio_to_first']:>6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                               "device": args.device, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
