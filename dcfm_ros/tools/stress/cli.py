"""dcfm-stress: soak, fuzz and fault runs through the real dcfm_node (subprocess, rclpy, reliable link).

    dcfm-stress soak   [--frames 10000] [--size 360x480] [--input-size 180x240] [--model FILE]
                       [--cameras N [--separate-nodes]]
    dcfm-stress fuzz   [--raw 1000] [--compressed 300] [--seed 0]
    dcfm-stress faults [--frames 30]
    dcfm-stress confidence

Each prints its figures (and --json one JSON object). The node runs with OMP_NUM_THREADS=--threads
(default 1: stable figures on a shared machine). Frames: the demo drive's 101 CamVid frames, cycled.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dcfm_ros.tools.args import size_type
from dcfm_ros.tools.stress.hostile import ANSWERED, REFUSED, compressed_messages, raw_messages
from dcfm_ros.tools.stress.session import NodeSession, demo_frames, image_msg


def _domain() -> int:
    return 170 + os.getpid() % 60


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _model(args: argparse.Namespace) -> str:
    from dcfm_ros.node.params import default_model_path

    return str(args.model or default_model_path())


# -- soak --------------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Frames at the engine's pace (at most --in-flight unanswered), drop_policy none."""
    frames = demo_frames(args.size)
    msgs = [image_msg(f) for f in frames]
    params: dict[str, Any] = {"model": _model(args), "device": args.device, "drop_policy": "none",
                              "qos.depth": 50}
    if args.input_size:
        params["input_size"] = list(args.input_size)
    s = NodeSession(params, tmp / "soak_node.log", _domain(), env=_threads(args))
    sent: dict[tuple[int, int], float] = {}
    order: list[tuple[int, int]] = []
    rss: dict[int, float] = {}
    try:
        s.wait_ready()
        t0 = time.perf_counter()
        for i in range(args.frames):
            s.spin_until(lambda: sum(k not in s.labels for k in order[-args.in_flight:]) < args.in_flight,
                         120.0, f"room to send frame {i}")
            key = s.send(msgs[i % len(msgs)])
            sent[key] = time.perf_counter()
            order.append(key)
            n = i + 1
            if n % args.mark == 0 or n == args.frames:
                s.spin_until(lambda k=key: k in s.labels, 120.0, f"frame {n}")
                rss[n] = s.rss_mb()
                print(f"  {n} frames, node RSS {rss[n]:.1f} MiB, {n / (time.perf_counter() - t0):.1f} fps",
                      file=sys.stderr, flush=True)
        with contextlib.suppress(RuntimeError):  # what is still missing then counts as lost
            s.spin_until(lambda: all(k in s.labels and k in s.infos for k in order), 60.0, "the last answers")
        wall = time.perf_counter() - t0
        info = s.last_info
    finally:
        rc = s.stop()
    lat = [(s.labels[k] - sent[k]) * 1000.0 for k in order if k in s.labels]
    lost = sum(k not in s.labels for k in order)
    first, last = lat[: args.mark], lat[-args.mark:]
    marks = sorted(rss)
    base = rss[marks[0]]
    return {
        "frames_sent": len(order), "frames_answered": len(lat), "frames_lost": lost,
        "node_frames_received": info.frames_received, "node_frames_dropped": info.frames_dropped,
        "fps": len(lat) / wall, "wall_s": wall, "rss_mb": rss,
        "rss_growth_pct": 100.0 * (rss[marks[-1]] - base) / base,
        "latency_ms_first": {"p50": _pct(first, 0.5), "p99": _pct(first, 0.99)},
        "latency_ms_last": {"p50": _pct(last, 0.5), "p99": _pct(last, 0.99)},
        "p99_drift_ms": _pct(last, 0.99) - _pct(first, 0.99),
        "exit_code": rc, "size": list(args.size), "input_size": params.get("input_size", "model's"),
        "model": params["model"], "in_flight": args.in_flight,
    }


def soak_cameras(args: argparse.Namespace, tmp: Path, one_node: bool) -> dict[str, Any]:
    """--cameras N: N camera streams at the engine's pace (each at most --in-flight unanswered, served
    in turn), through one node with cameras (one_node) or N single-camera nodes; drop_policy none."""
    from dcfm_ros.tools.stress.session import StreamsSession

    frames = demo_frames(args.size)
    msgs = [_jpeg_msg(f) if args.compressed else image_msg(f) for f in frames]
    params: dict[str, Any] = {"model": _model(args), "device": args.device, "drop_policy": "none",
                              "qos.depth": 50}
    if args.compressed:
        params["image_transport"] = "compressed"
    if args.input_size:
        params["input_size"] = list(args.input_size)
    s = StreamsSession(params, tmp, _domain(), args.cameras, one_node=one_node, env=_threads(args),
                       transport=args.transport, compressed=args.compressed)
    order: dict[str, list[tuple[int, int]]] = {n: [] for n in s.names}
    sent: dict[tuple[str, tuple[int, int]], float] = {}
    rss: dict[int, float] = {}
    per_camera = max(1, args.frames // args.cameras)
    try:
        s.wait_ready()
        rss[0] = s.rss_mb()
        t0 = time.perf_counter()
        for i in range(per_camera):
            for k, n in enumerate(s.names):
                s.spin_until(lambda n=n: sum(key not in s.labels[n] for key in order[n][-args.in_flight:])
                             < args.in_flight, 120.0, f"room to send frame {i} of {n}")
                msg = msgs[(i + 17 * k) % len(msgs)]  # each camera its own part of the drive
                key = s.send(n, msg)
                sent[(n, key)] = time.perf_counter()
                order[n].append(key)
            done = (i + 1) * args.cameras
            if (i + 1) % max(1, args.mark // args.cameras) == 0 or i + 1 == per_camera:
                rss[done] = s.rss_mb()
                print(f"  {done} frames, node RSS {rss[done]:.1f} MiB, "
                      f"{done / (time.perf_counter() - t0):.1f} fps", file=sys.stderr, flush=True)
        with contextlib.suppress(RuntimeError):
            s.spin_until(lambda: all(k in s.labels[n] for n in s.names for k in order[n]), 60.0,
                         "the last answers")
        wall = time.perf_counter() - t0
    finally:
        codes = s.stop()
    lat_all: list[float] = []
    cams = {}
    for n in s.names:
        lat = [(s.labels[n][k] - sent[(n, k)]) * 1000.0 for k in order[n] if k in s.labels[n]]
        lat_all += lat
        ends = [s.labels[n][k] for k in order[n] if k in s.labels[n]]
        span = (max(ends) - sent[(n, order[n][0])]) if ends else float("nan")
        cams[n] = {"sent": len(order[n]), "answered": len(lat), "lost": len(order[n]) - len(lat),
                   "fps": len(lat) / span if span > 0 else float("nan"), "p50_ms": _pct(lat, 0.5),
                   "p99_ms": _pct(lat, 0.99)}
    fps = [c["fps"] for c in cams.values()]
    marks = sorted(k for k in rss if k)
    return {"setup": f"one node, {args.cameras} cameras" if one_node else f"{args.cameras} nodes",
            "cameras": args.cameras, "frames_sent": sum(c["sent"] for c in cams.values()),
            "frames_answered": len(lat_all), "frames_lost": sum(c["lost"] for c in cams.values()),
            "fps": len(lat_all) / wall, "wall_s": wall, "per_camera": cams,
            "per_camera_fps_min": min(fps), "per_camera_fps_max": max(fps),
            "latency_ms": {"p50": _pct(lat_all, 0.5), "p99": _pct(lat_all, 0.99)},
            "rss_mb_total": rss, "rss_mb_idle": rss[0], "rss_mb_end": rss[marks[-1]] if marks else rss[0],
            "exit_codes": codes, "size": list(args.size), "input_size": params.get("input_size", "model's"),
            "model": params["model"], "in_flight": args.in_flight, "threads_per_node": args.threads,
            "transport": args.transport, "input": "jpeg" if args.compressed else "rgb8"}


def _jpeg_msg(rgb: np.ndarray) -> Any:
    """sensor_msgs/CompressedImage, JPEG quality 85 (as a camera driver's compressed transport)."""
    from sensor_msgs.msg import CompressedImage

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    msg = CompressedImage(format="rgb8; jpeg compressed bgr8")
    msg.data = buf.tobytes()
    msg.header.frame_id = "camera"
    return msg


def print_soak_cameras(r: dict[str, Any]) -> None:
    print(f"soak ({r['setup']}): {r['frames_sent']} demo frames {r['size'][0]}x{r['size'][1]} {r['input']}, "
          f"network "
          f"input {r['input_size']}, drop_policy none, reliable, {r['in_flight']} in flight per camera, "
          f"OMP_NUM_THREADS {r['threads_per_node']} per node, Fast DDS {r['transport']}")
    print(f"  answered {r['frames_answered']}, lost {r['frames_lost']}; aggregate {r['fps']:.2f} fps over "
          f"{r['wall_s']:.0f} s; per camera {r['per_camera_fps_min']:.2f} .. {r['per_camera_fps_max']:.2f} "
          f"fps; latency p50 {r['latency_ms']['p50']:.1f} p99 {r['latency_ms']['p99']:.1f} ms")
    print(f"  RSS of all node processes: idle {r['rss_mb_idle']:.1f} MiB, end {r['rss_mb_end']:.1f} MiB; "
          f"exit codes {r['exit_codes']}")


def print_soak(r: dict[str, Any]) -> None:
    marks = sorted(r["rss_mb"])
    print(f"soak: {r['frames_sent']} demo frames {r['size'][0]}x{r['size'][1]} rgb8 (cycled), model "
          f"{r['model']}, network input {r['input_size']}, drop_policy none, reliable, {r['in_flight']} in "
          f"flight")
    print(f"  answered {r['frames_answered']}, lost {r['frames_lost']} (node: received "
          f"{r['node_frames_received']}, dropped {r['node_frames_dropped']}); {r['fps']:.1f} fps over "
          f"{r['wall_s']:.0f} s; exit code {r['exit_code']}")
    print(f"  node RSS: frame {marks[0]} {r['rss_mb'][marks[0]]:.1f} MiB, frame {marks[-1]} "
          f"{r['rss_mb'][marks[-1]]:.1f} MiB: growth {r['rss_growth_pct']:+.2f} %")
    print(f"  latency (publish -> labels received): first {marks[0]} frames p50 "
          f"{r['latency_ms_first']['p50']:.1f} p99 {r['latency_ms_first']['p99']:.1f} ms; last {marks[0]} "
          f"p50 {r['latency_ms_last']['p50']:.1f} p99 {r['latency_ms_last']['p99']:.1f} ms; p99 drift "
          f"{r['p99_drift_ms']:+.1f} ms")


# -- fuzz --------------------------------------------------------------------------------------------


def fuzz_one(compressed: bool, count: int, seed: int, args: argparse.Namespace, tmp: Path,
             batch: int = 25) -> dict[str, Any]:
    """`count` hostile messages in batches, a good frame after each batch (and one first)."""
    from sensor_msgs.msg import CompressedImage

    rng = np.random.default_rng(seed)
    cases = list((compressed_messages if compressed else raw_messages)(rng, count))
    good_rgb = demo_frames((120, 160))[0]
    ok, jpeg = cv2.imencode(".jpg", good_rgb[..., ::-1])
    assert ok

    def good() -> Any:
        if compressed:
            msg = CompressedImage(format="rgb8; jpeg compressed bgr8")
            msg.data = jpeg.tobytes()
            return msg
        return image_msg(good_rgb, "bgr8")

    params = {"model": _model(args), "device": args.device, "drop_policy": "none", "qos.depth": 100,
              "image_transport": "compressed" if compressed else "raw", "input_size": [120, 160]}
    name = "compressed" if compressed else "raw"
    s = NodeSession(params, tmp / f"fuzz_{name}.log", _domain() + int(compressed), compressed=compressed,
                    env=_threads(args))
    refused = answered_expected = good_sent = 0
    good_keys, unanswered = [], 0
    kinds: dict[str, int] = {}
    try:
        s.wait_ready()
        first = s.send(good())
        s.answered(first)
        good_keys.append(first)
        base = s.infos[first]
        for start in range(0, len(cases), batch):
            chunk = cases[start:start + batch]
            processed_before = s.last_info.frames_processed
            for case in chunk:
                kinds[case.kind] = kinds.get(case.kind, 0) + 1
                s.send(case.msg, case.stamp)
                refused += case.expect == REFUSED
                answered_expected += case.expect == ANSWERED
            key = s.send(good())
            good_sent += 1
            s.answered(key)
            good_keys.append(key)
            info = s.infos[key]
            want = sum(c.expect == ANSWERED for c in chunk) + 1
            unanswered += want - (info.frames_processed - processed_before)
        last = s.infos[good_keys[-1]]
        alive = s.proc.poll() is None
    finally:
        rc = s.stop()
    out = s.output()
    return {
        "transport": name, "messages": len(cases), "expected_refused": refused,
        "counted_bad_inputs": last.bad_inputs - base.bad_inputs,
        "expected_answered": answered_expected, "hostile_answered_missing": unanswered,
        "good_frames_answered": f"{len(good_keys)}/{good_sent + 1}",
        "alive_after": alive, "exit_code": rc, "crashes": int(not alive),
        "tracebacks": out.count("Traceback"), "engine_errors": last.engine_errors,
        "bad_input_log_lines": out.count("bad input on"), "kinds": kinds,
    }


def print_fuzz(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"fuzz ({r['transport']}): {r['messages']} hostile messages, crashes {r['crashes']}, "
              f"exit code {r['exit_code']}, tracebacks {r['tracebacks']}")
        print(f"  must be refused: {r['expected_refused']}, counted in bad_inputs: "
              f"{r['counted_bad_inputs']}; "
              f"valid payloads in hostile wrappers: {r['expected_answered']}, not answered: "
              f"{r['hostile_answered_missing']}; good frames answered {r['good_frames_answered']}; "
              f"bad-input log lines {r['bad_input_log_lines']} (throttled per reason)")
        print("  kinds: " + ", ".join(f"{k} {v}" for k, v in r["kinds"].items()))


# -- faults ------------------------------------------------------------------------------------------


def faults(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """1. Injected engine faults (DCFM_NODE_FAULTS). 2. The model file rewritten in place, half-written,
    while a node runs on it and while another one starts."""
    import subprocess

    from dcfm_ros.tools.stress.session import node_command

    frames = [image_msg(f) for f in demo_frames(tuple(args.size))]
    n = args.frames
    fault_at = {n // 3: "oom", 2 * n // 3: "error"}
    model = tmp / "model.safetensors"
    shutil.copyfile(_model(args), model)
    params = {"model": str(model), "device": args.device, "drop_policy": "none", "keyframe.interval": 1000}
    env = {**_threads(args), "DCFM_NODE_FAULTS": ",".join(f"{k}@{i}" for i, k in fault_at.items())}
    s = NodeSession(params, tmp / "faults_node.log", _domain() + 3, env=env)
    result: dict[str, Any] = {"faults": {str(i): k for i, k in fault_at.items()}}
    try:
        s.wait_ready()
        keys = []
        for i in range(1, n + 1):
            key = s.send(frames[i % len(frames)])
            keys.append(key)
            if i in fault_at:
                # No answer for it: the next frame's answer proves the node moved on.
                continue
            s.answered(key)
        answered = [i + 1 for i, k in enumerate(keys) if k in s.infos]
        after = {i: s.infos[keys[i]] for i in fault_at}  # the frame after each fault (1-based i -> index i)
        result.update({
            "frames": n, "answered": len(answered),
            "unanswered": sorted(set(range(1, n + 1)) - set(answered)),
            "keyframe_after_fault": {str(i + 1): bool(after[i].is_keyframe) for i in fault_at},
            "engine_errors_after": {str(i + 1): int(after[i].engine_errors) for i in fault_at},
            "keyframes": sum(bool(s.infos[k].is_keyframe) for k in keys if k in s.infos),
        })
        # 2. The running node's model file is rewritten in place, and left half-written for a while.
        probe = frames[0]
        before = s.send(probe)
        s.answered(before)
        whole = model.read_bytes()
        with open(model, "r+b") as f:  # a non-atomic writer (cp, a careless script)
            f.truncate(len(whole) // 2)
        starter = subprocess.run([*node_command({**params, "keyframe.interval": 1})], env={
            **os.environ, **_threads(args)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=180)
        during = s.send(probe)
        s.answered(during)
        model.write_bytes(whole)
        result.update({
            "running_node_served_during_rewrite": during in s.labels and during in s.infos,
            "start_on_half_written_model_exit": starter.returncode,
            "start_on_half_written_model_says": next((ln for ln in starter.stdout.splitlines()
                                                      if "cannot start" in ln), starter.stdout[-300:]),
            "engine_errors_total": int(s.infos[during].engine_errors),
        })
        result["alive"] = s.proc.poll() is None
    finally:
        result["exit_code"] = s.stop()
    out = s.output()
    result["fault_log_lines"] = [ln for ln in out.splitlines() if "engine failed" in ln]
    result["tracebacks"] = out.count("Traceback")
    return result


def print_faults(r: dict[str, Any]) -> None:
    print(f"faults: {r['frames']} demo frames, injected {r['faults']} (DCFM_NODE_FAULTS)")
    print(f"  answered {r['answered']}, unanswered {r['unanswered']} (exactly the faulted ones); frame after "
          f"each fault a keyframe: {r['keyframe_after_fault']}; engine_errors then "
          f"{r['engine_errors_after']}; "
          f"keyframes in all {r['keyframes']} (keyframe.interval 1000)")
    for line in r["fault_log_lines"]:
        print(f"  log: {line.strip()[:200]}")
    print(f"  model file truncated to half while the node ran: it kept serving "
          f"({r['running_node_served_during_rewrite']}); a node started on the half-written file exits "
          f"{r['start_on_half_written_model_exit']}: {r['start_on_half_written_model_says'].strip()[:200]}")
    print(f"  alive {r['alive']}, exit code {r['exit_code']}, tracebacks {r['tracebacks']}")


# -- confidence --------------------------------------------------------------------------------------


def confidence(args: argparse.Namespace) -> dict[str, float]:
    """Mean info.confidence (engine, in process) on the demo drive and on scenes unlike it."""
    import torch

    from dcfm_ros.engine import FixedInterval, StreamEngine
    from dcfm_ros.model import load_checkpoint

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(_model(args))
    engine = StreamEngine(model, FixedInterval(1), args.device)
    demo = demo_frames()[:40:4]
    h, w = demo[0].shape[:2]
    rng = np.random.default_rng(0)

    def drawing() -> np.ndarray:  # flat colours, hard edges: cartoon-like
        img = np.full((h, w, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(12):
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(img, centre, int(rng.integers(20, 150)), colour, -1)
        return img

    sets = {
        "demo drive (in domain)": demo,
        "inverted colours": [255 - f for f in demo],
        "upside down": [np.ascontiguousarray(f[::-1]) for f in demo],
        "pixel noise": [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(5)],
        "flat-colour drawings": [drawing() for _ in range(5)],
        "smooth random colour fields": [cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h),
                                                   interpolation=cv2.INTER_CUBIC) for _ in range(5)],
    }
    out = {}
    for name, frames in sets.items():
        engine.reset()
        out[name] = float(np.mean([engine.process(f).confidence.mean for f in frames]))
    return out


# -- main --------------------------------------------------------------------------------------------


def _threads(args: argparse.Namespace) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(args.threads)} if args.threads > 0 else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dcfm-stress", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint (default: the packaged model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="node OMP_NUM_THREADS (0: torch's default)")
    p.add_argument("--json", action="store_true")
    sub = p.add_subparsers(dest="what", required=True)
    ps = sub.add_parser("soak", help="many frames at the engine's pace: memory, losses, latency drift")
    ps.add_argument("--frames", type=int, default=10_000)
    ps.add_argument("--size", type=size_type, default=(360, 480), help="frame HxW (default 360x480)")
    ps.add_argument("--input-size", type=size_type, default=None,
                    help="network input HxW (default: the model's)")
    ps.add_argument("--in-flight", type=int, default=2, help="unanswered frames allowed (default 2)")
    ps.add_argument("--mark", type=int, default=1000,
                    help="RSS every N frames; the latency windows' length (default 1000)")
    ps.add_argument("--cameras", type=int, default=0, help="N camera streams through one node with the "
                    "parameter cameras (--frames in all, served in turn); 0: the single-camera soak")
    ps.add_argument("--transport", default="UDPv4", choices=("UDPv4", "SHM", "LARGE_DATA", "DEFAULT"),
                    help="with --cameras: Fast DDS builtin transport of the run (default UDPv4)")
    ps.add_argument("--compressed", action="store_true", help="with --cameras: JPEG CompressedImage input "
                    "(image_transport compressed) instead of raw rgb8")
    ps.add_argument("--separate-nodes", action="store_true", help="with --cameras N: N single-camera "
                    "nodes instead (the comparison: same client, same frames)")
    pf = sub.add_parser("fuzz", help="malformed and hostile messages")
    pf.add_argument("--raw", type=int, default=1000, help="hostile sensor_msgs/Image messages")
    pf.add_argument("--compressed", type=int, default=300, help="hostile CompressedImage messages")
    pf.add_argument("--seed", type=int, default=0)
    pe = sub.add_parser("faults", help="injected engine faults; a model file rewritten in place")
    pe.add_argument("--frames", type=int, default=30)
    pe.add_argument("--size", type=size_type, default=(360, 480))
    sub.add_parser("confidence", help="mean confidence on the demo drive and on out-of-domain scenes")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix=f"dcfm-stress-{args.what}-"))
    if args.what == "soak" and args.cameras > 0:
        r = soak_cameras(args, tmp, one_node=not args.separate_nodes)
        print(json.dumps(r, indent=2)) if args.json else print_soak_cameras(r)
    elif args.what == "soak":
        r = soak(args, tmp)
        print(json.dumps(r, indent=2)) if args.json else print_soak(r)
    elif args.what == "fuzz":
        runs = ((False, args.raw), (True, args.compressed))
        rs = [fuzz_one(c, n, args.seed, args, tmp) for c, n in runs if n]
        print(json.dumps(rs, indent=2)) if args.json else print_fuzz(rs)
    elif args.what == "confidence":
        rc = confidence(args)
        print(json.dumps(rc, indent=2)) if args.json else print(
            "mean confidence: " + "; ".join(f"{k} {v:.3f}" for k, v in rc.items()))
    else:
        r = faults(args, tmp)
        print(json.dumps(r, indent=2)) if args.json else print_faults(r)
    print(f"(node logs in {tmp}; machine: {os.cpu_count()} CPUs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


