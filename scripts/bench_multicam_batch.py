"""Does batching N cameras' frames pay on this machine? The torch backend's per-frame stages (enc_lo,
fuse with a cached common part, head) and the deep pass (enc_hi + common part) run once on a batch of
N frames and N times on one frame, interleaved, repeated; printed as medians and ratios.

    python scripts/bench_multicam_batch.py [--model FILE] [--cameras 4] [--repeats 15] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from dcfm_ros.engine.backends import make_backend
    from dcfm_ros.engine.settings import default_model_path
    from dcfm_ros.model import load_checkpoint

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(default_model_path()))
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    model, _ = load_checkpoint(args.model)
    net = make_backend("torch", model, "cpu", "fp32")
    h, w = model.config.input_size
    n = args.cameras
    xs = torch.randn(n, 3, h, w)
    with torch.inference_mode():
        common = net.common_part(net.enc_hi(net.enc_lo(xs[:1])))
        commons = common.expand(n, *common.shape[1:]).contiguous()

        def shallow(x: torch.Tensor, c: torch.Tensor) -> None:
            net.head(net.fuse(c, net.enc_lo(x)))

        def deep(x: torch.Tensor) -> None:
            net.common_part(net.enc_hi(net.enc_lo(x)))

        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[str, list[float]] = {k: [] for k in ("shallow_batch", "shallow_seq", "deep_batch",
                                                             "deep_seq")}
            for _ in range(2):  # warm-up
                shallow(xs, commons)
                deep(xs)
            for _ in range(args.repeats):
                t = time.perf_counter()
                shallow(xs, commons)
                times["shallow_batch"].append(time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(n):
                    shallow(xs[i:i + 1], common)
                times["shallow_seq"].append(time.perf_counter() - t)
                t = time.perf_counter()
                deep(xs)
                times["deep_batch"].append(time.perf_counter() - t)
                t = time.perf_counter()
                for i in range(n):
                    deep(xs[i:i + 1])
                times["deep_seq"].append(time.perf_counter() - t)
            med = {k: statistics.median(v) * 1000 for k, v in times.items()}
            sb, ss, db, ds = (med[k] for k in ("shallow_batch", "shallow_seq", "deep_batch", "deep_seq"))
            print(f"torch threads {threads}, {n} cameras at {h}x{w}: per-frame stages batch {sb:.1f} ms vs "
                  f"{n} x 1 {ss:.1f} ms (batched / sequential {sb / ss:.2f}); deep pass batch {db:.1f} ms vs "
                  f"{ds:.1f} ms ({db / ds:.2f}); median of {args.repeats}")


if __name__ == "__main__":
    main()
