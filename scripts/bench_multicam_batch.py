"""Does batching N cameras' frames pay on this machine? The torch backend's per-frame stages (enc_lo,
fuse with a cached common part, head) and the deep pass (enc_hi + common part) run once on a batch of
N frames and N times on one frame, interleaved, repeated; printed as medians and ratios. Then the
whole MultiStreamEngine (torch backend, motion policy at the node's default), N cameras each on its
own part of the CamVid val clip, a round at a time with `batch` on and off, interleaved: the time per
round and the keyframe share.

    python scripts/bench_multicam_batch.py [--model FILE] [--cameras 4] [--repeats 15] [--threads 1 2]
                                           [--rounds 24] [--device cuda]
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
    p.add_argument("--rounds", type=int, default=24, help="engine rounds per setting (0: skip)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (the GPU figure)")
    args = p.parse_args()
    model, _ = load_checkpoint(args.model)
    net = make_backend("torch", model, args.device, "fp32")
    h, w = model.config.input_size
    n = args.cameras
    xs = torch.randn(n, 3, h, w, device=net.device)
    sync = torch.cuda.synchronize if net.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        common = net.common_part(net.enc_hi(net.enc_lo(xs[:1])))
        commons = common.expand(n, *common.shape[1:]).contiguous()

        def shallow(x: torch.Tensor, c: torch.Tensor) -> None:
            net.head(net.fuse(c, net.enc_lo(x)))
            sync()

        def deep(x: torch.Tensor) -> None:
            net.common_part(net.enc_hi(net.enc_lo(x)))
            sync()

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
    if args.rounds:
        engine_rounds(model, n, args.rounds, args.threads, args.device)


def engine_rounds(model: torch.nn.Module, n: int, rounds: int, threads: list[int], device: str) -> None:
    import cv2

    from dcfm_ros.engine import MotionThreshold
    from dcfm_ros.engine.backends import make_backend
    from dcfm_ros.engine.multistream import MultiStreamEngine
    from dcfm_ros.tools.clips import clip_paths, default_clip

    clip = default_clip()
    if clip is None:
        raise SystemExit("no CamVid val clip next to the repository (../shared/data/camvid/val)")
    paths = clip_paths(clip)
    part = len(paths) // n  # camera c plays its own part of the clip
    frames = [[cv2.cvtColor(cv2.imread(str(paths[c * part + i % part])), cv2.COLOR_BGR2RGB)
               for i in range(rounds)] for c in range(n)]
    cams = [f"cam{c}" for c in range(n)]
    for t in threads:
        torch.set_num_threads(t)
        engines = {b: MultiStreamEngine(model, cams, MotionThreshold(0.1),
                                        backend=make_backend("torch", model, device, "fp32"), batch=b)
                   for b in (False, True)}
        times: dict[bool, list[float]] = {False: [], True: []}
        keys: dict[bool, int] = {False: 0, True: 0}
        for i in range(rounds):
            for b, multi in engines.items():  # interleaved: the same round with batch off, then on
                for c, cam in enumerate(cams):
                    multi.submit(cam, frames[c][i], i)
                start = time.perf_counter()
                outs = multi.step(timeout=0)
                times[b].append(time.perf_counter() - start)
                keys[b] += sum(o.result.is_keyframe for o in outs)
        for multi in engines.values():
            multi.close()
        off, on = (statistics.median(times[b][2:]) * 1000 for b in (False, True))
        print(f"engine, torch threads {t}, {n} cameras, {rounds} rounds, motion 0.1 (keyframes "
              f"{keys[True]}/{n * rounds} batched, {keys[False]} not): per round batched {on:.1f} ms vs "
              f"one at a time {off:.1f} ms (batched / one at a time {on / off:.2f}); median")


if __name__ == "__main__":
    main()
