"""dcfm-train: the command line of dcfm_ros.training.train (its module doc says what a run does).

    dcfm-train --config config/train/camvid_efficientnet_lite0.yaml [--set key=value ...]
               [--out DIR] [--resume CKPT] [--ablate-lb] [--iterations N]
    torchrun --nproc_per_node N -m dcfm_ros.tools.train --config ...    # DDP (training/distributed.py)
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from dcfm_ros.tools.args import doc_summary
from dcfm_ros.training import distributed
from dcfm_ros.training import train as train_module
from dcfm_ros.training.config import ConfigError, load_config
from dcfm_ros.training.train import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dcfm-train", description=doc_summary(train_module),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training YAML (config/train/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted, value parsed as YAML (repeatable), "
                        "e.g. --set train.iterations=100 --set optim.lr_encoder=0.005")
    p.add_argument("--out", help="output directory (default: train.out_dir from the config)")
    p.add_argument("--resume", help="checkpoint written by dcfm-train (its .state.pt must sit next to it)")
    p.add_argument("--ablate-lb", action="store_true",
                   help="train without L_B (lambda_B = 0; the Table VI ablation)")
    p.add_argument("--iterations", type=int, help="shortcut for --set train.iterations=N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if distributed.launched_by_torchrun():
        # A rank's uncaught exception goes, with its traceback, into torchrun's failure summary.
        return record(_main, error_handler=distributed.AtomicErrorHandler())(argv)
    return _main(argv)


def _main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.ablate_lb:
        overrides.append("loss.lambda_b=0")
    if args.iterations is not None:
        overrides.append(f"train.iterations={args.iterations}")
    try:
        cfg = load_config(args.config, overrides)
        trainer = Trainer(cfg, args.out, args.resume, progress=not args.no_progress)
        final = trainer.run()
    except (ConfigError, FileNotFoundError, ValueError) as exc:  # DistributedError, LabelError: ValueErrors
        if torch.distributed.is_initialized():  # a start-up error after joining the process group
            torch.distributed.destroy_process_group()
        rank = os.environ.get("RANK")
        print(f"dcfm-train: {f'rank {rank}: ' if rank is not None else ''}error: {exc}", file=sys.stderr)
        return 2
    if not trainer.is_main:
        return 0
    best = trainer.best_miou
    note = f" (best val mIoU {100 * best:.2f})" if best >= 0 and math.isfinite(best) else ""
    print(f"dcfm-train: wrote {final}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
