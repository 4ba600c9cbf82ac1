"""`dcfm-bench --latency`: per-frame latency of each keyframe schedule on a replayed camera, no ROS.

The clip's frames "arrive" at `--rate` Hz on the wall clock; the engine takes the newest frame that
has arrived whenever it is free (a live camera with drop_policy latest: frames that arrived while it
was busy are dropped and counted). Latency = labels on the host - the frame's arrival, so it
includes the wait for the engine. The schedules run one after another in one process on the same
frames, model and policy, in `--rounds` alternating rounds, so a shared machine's load hits them alike.

Reported per schedule: latency p50/p95/p99/max, engine time (process()) p50/p99, throughput
(processed frames / replay time), dropped frames, keyframes, and the distribution of common_age
(how old the common feature each frame used was).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dcfm_ros.engine.keyframe import KeyframePolicy, build_policy, make_policy
from dcfm_ros.engine.schedules import make_schedule
from dcfm_ros.engine.specs import parse_policy
from dcfm_ros.engine.stream import StreamEngine
from dcfm_ros.tools.clips import clip_paths, cpu_name, default_clip, load_clip


def replay(engine: StreamEngine, frames: Sequence[np.ndarray], rate: float) -> dict:
    """Play `frames` at `rate` Hz through `engine` (newest arrived frame first); per-frame records."""
    n = len(frames)
    lat, eng, ages = [], [], []
    keys = dropped = 0
    nxt = 0
    t0 = time.perf_counter()
    while nxt < n:
        now = time.perf_counter() - t0
        arrived = min(int(now * rate), n - 1)
        if arrived < nxt:
            time.sleep(max(0.0, nxt / rate - now))
            continue
        dropped += arrived - nxt
        r = engine.process(frames[arrived])
        lat.append((time.perf_counter() - t0 - arrived / rate) * 1000.0)
        eng.append(r.timings_ms["total"])
        ages.append(r.common_age)
        keys += r.is_keyframe
        nxt = arrived + 1
    wall = time.perf_counter() - t0
    return {"latency_ms": lat, "engine_ms": eng, "ages": ages, "keyframes": keys, "dropped": dropped,
            "wall_s": wall}


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def summarize(schedule: str, runs: Sequence[dict], rate: float) -> dict:
    lat = [v for r in runs for v in r["latency_ms"]]
    eng = [v for r in runs for v in r["engine_ms"]]
    ages = Counter(a for r in runs for a in r["ages"])
    processed = len(lat)
    wall = sum(r["wall_s"] for r in runs)
    return {
        "schedule": schedule, "rate_hz": rate, "processed": processed,
        "dropped": sum(r["dropped"] for r in runs), "keyframes": sum(r["keyframes"] for r in runs),
        "throughput_fps": processed / wall if wall else float("nan"),
        "latency_p50_ms": _pct(lat, 50), "latency_p95_ms": _pct(lat, 95), "latency_p99_ms": _pct(lat, 99),
        "latency_max_ms": max(lat) if lat else float("nan"), "latency_mean_ms": float(np.mean(lat)),
        "engine_p50_ms": _pct(eng, 50), "engine_p99_ms": _pct(eng, 99),
        "common_age": {str(k): ages[k] for k in sorted(ages)},
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-bench --latency", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="checkpoint (.safetensors); default: the shipped model")
    p.add_argument("--clip", type=Path, default=None,
                   help="directory of frames sorted by name; default ../shared/data/camvid/val")
    p.add_argument("--rate", type=float, default=15.0, help="camera rate the frames arrive at (Hz)")
    p.add_argument("--loops", type=int, default=1, help="play the clip this many times per round")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds over the schedules")
    p.add_argument("--schedules", default="sync,spread:3,background",
                   help="comma list: sync, spread:N, background")
    p.add_argument("--policy", default="fixed:2",
                   help="fixed:K or motion:THR[:MIN[:MAX]] (keyframe policy, same for every schedule)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the engine's thread")
    p.add_argument("--background-threads", type=int, default=1, help="torch threads of the background worker")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--json", action="store_true", help="one JSON object per schedule")
    return p


def _policy(text: str) -> KeyframePolicy:
    return build_policy(parse_policy(text))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate <= 0 or args.loops < 1 or args.rounds < 1:
        raise SystemExit("dcfm-bench --latency: --rate must be > 0, --loops and --rounds >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from dcfm_ros.model import load_checkpoint

    model_path = args.model
    if model_path is None:
        model_path = Path(__file__).resolve().parents[1] / "models" / "camvid_efficientnet_lite0.safetensors"
    model, _ = load_checkpoint(model_path)
    try:
        schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
        for s in schedules:
            make_schedule(s)
        policy_text = args.policy
        _policy(policy_text)
    except ValueError as exc:
        raise SystemExit(f"dcfm-bench --latency: {exc}") from exc
    clip = args.clip if args.clip is not None else default_clip()
    count = len(clip_paths(clip)) if clip is not None else 100
    frames, clip_name = load_clip(clip, count)
    frames = frames * args.loops
    warm = StreamEngine(model, make_policy("fixed", interval=2), device=args.device, precision=args.precision)
    for f in frames[:4]:  # one-off kernel set-up outside the measured replays
        warm.process(f)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {s: [] for s in schedules}
    for _ in range(args.rounds):
        for s in schedules:
            engine = StreamEngine(model, _policy(policy_text), device=args.device, precision=args.precision,
                                  schedule=make_schedule(s, threads=args.background_threads),
                                  backend=warm.backend)
            try:
                runs[s].append(replay(engine, frames, args.rate))
            finally:
                engine.close()
    info = {"clip": clip_name, "frames": len(frames), "model": str(model_path), "policy": policy_text,
            "device": str(warm.device), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "background_threads": args.background_threads,
            "torch": torch.__version__, "loadavg_1min_before_after": [load_before, os.getloadavg()[0]]}
    rows = [summarize(s, runs[s], args.rate) for s in schedules]
    sync = next((r for r in rows if r["schedule"] == "sync"), None)
    for r in rows:
        if sync is not None:
            r["p99_vs_sync"] = r["latency_p99_ms"] / sync["latency_p99_ms"]
            r["throughput_vs_sync"] = r["throughput_fps"] / sync["throughput_fps"]
        r["p99_over_p50"] = r["latency_p99_ms"] / r["latency_p50_ms"]
    if args.json:
        for r in rows:
            print(json.dumps({**info, **r}))
    else:
        print(f"dcfm-bench --latency  {info['clip']} x{args.loops}, {args.rounds} round(s) at "
              f"{args.rate} Hz  "
              f"policy {policy_text}  {info['device']} ({info['cpu']}, {info['cpu_count']} cores), torch "
              f"{info['torch']} threads {info['threads']} (+{args.background_threads} background)  "
              f"load {load_before:.1f}")
        print(f"{'schedule':14s}{'p50':>8s}{'p95':>8s}{'p99':>8s}{'max':>8s}{'p99/p50':>8s}{'fps':>7s}"
              f"{'drop':>6s}{'keys':>6s}{'p99/sync':>9s}  common_age")
        for r in rows:
            ages = " ".join(f"{k}:{v}" for k, v in r["common_age"].items())
            print(f"{r['schedule']:14s}{r['latency_p50_ms']:8.0f}{r['latency_p95_ms']:8.0f}"
                  f"{r['latency_p99_ms']:8.0f}{r['latency_max_ms']:8.0f}{r['p99_over_p50']:8.2f}"
                  f"{r['throughput_fps']:7.1f}{r['dropped']:6d}{r['keyframes']:6d}"
                  f"{r.get('p99_vs_sync', float('nan')):9.2f}  {ages}")
    sys.stdout.flush()
    return 0
