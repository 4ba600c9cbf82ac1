"""dcfm-bench-node: what the ROS layer costs. Engine alone vs. the whole node, same frames, one run.

    dcfm-bench-node [--checkpoint FILE] [--size 480x853] [--frames 40] [--transport LARGE_DATA UDPv4]

1. engine: StreamEngine in this process on the frames (fixed keyframe interval), wall time per frame.
2. node: dcfm_node as a subprocess (drop_policy none, reliable input); this process publishes each
   frame as sensor_msgs/Image rgb8 and waits for its segmentation/labels before publishing the next
   (back-pressure, so the node is measured at its own speed and nothing queues). Latency = publish()
   called -> labels received here; throughput = frames / wall time.
3. transport floor: the node replaced by an echo node that answers each image with a labels-sized
   mono8 image after sleeping the engine time the node had measured for that frame (what ROS
   transport alone costs for these messages on this machine, with the same idle pattern).
4. engine again (machine load drifts; the engine figure is the mean of both passes).
Printed, per Fast DDS transport (FASTDDS_BUILTIN_TRANSPORTS): throughput ratio node/engine and added
latency (node latency - engine latency); and the same paired frame by frame with the engine time the
node reports in segmentation/info (robust to the machine's load changing between the passes). Also
checks that the node's labels equal the engine's.
Without --checkpoint: the packaged model if installed, else a random EfficientNet-Lite0 with the CamVid
classes at the frame size (timing does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dcfm_ros.tools.args import size_type
from dcfm_ros.tools.clips import IMAGE_SUFFIXES, default_clip

START_TIMEOUT_S = 120.0


def load_frames(clip: Path | None, count: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """`count` RGB frames of `size` (cycled if the clip is shorter); a panning texture without a clip."""
    h, w = size
    if clip is not None:
        paths = sorted(p for p in clip.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SystemExit(f"dcfm-bench-node: no images in {clip}")
        frames = []
        for path in paths[:count]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"dcfm-bench-node: cannot read {path}")
            frames.append(cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR),
                                       cv2.COLOR_BGR2RGB))
        while len(frames) < count:
            frames.append(frames[len(frames) % len(paths)])
        return frames, str(clip)
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (45, 160, 3), dtype=np.uint8)
    base = cv2.resize(small, (2 * w, h), interpolation=cv2.INTER_CUBIC)
    return [np.ascontiguousarray(np.roll(base, 8 * i, axis=1)[:, :w]) for i in range(count)], "synthetic"


def make_checkpoint(path: Path, size: tuple[int, int]) -> None:
    """A random EfficientNet-Lite0 DCFM with the CamVid classes whose network runs at `size`."""
    import torch

    from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=len(CAMVID_CLASSES),
                        class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE, input_size=size)
    save_checkpoint(path, build_model(config, pretrained=None))


def stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {"mean": statistics.fmean(s), "p50": s[len(s) // 2], "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
            "min": s[0]}


def run_engine(checkpoint: Path, frames: list[np.ndarray], warmup: int, interval: int, device: str
               ) -> tuple[dict[str, Any], list[np.ndarray]]:
    from dcfm_ros.engine import FixedInterval, StreamEngine
    from dcfm_ros.model import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    engine = StreamEngine(model, FixedInterval(interval), device=device)
    for f in frames[:warmup]:
        engine.process(f)
    lat, labels = [], []
    t0 = time.perf_counter()
    for f in frames[warmup:]:
        t = time.perf_counter()
        labels.append(engine.process(f).labels)
        lat.append((time.perf_counter() - t) * 1000.0)
    wall = time.perf_counter() - t0
    return {"fps": len(lat) / wall, "latency_ms": stats(lat)}, labels


def image_msg(rgb: np.ndarray) -> Any:
    import array

    from sensor_msgs.msg import Image

    h, w = rgb.shape[:2]
    msg = Image(height=h, width=w, encoding="rgb8", step=w * 3)
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rgb).tobytes())
    msg.data = data
    msg.header.frame_id = "camera"
    return msg


def run_node(checkpoint: Path, frames: list[np.ndarray], warmup: int, interval: int, device: str,
             transport: str, domain_id: int, log_dir: Path, echo_delays_ms: list[float] | None = None
             ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Publish each frame to the node and wait for its labels. With `echo_delays_ms` the node is
    replaced by `echo_node`: the same messages both ways with no processing, only a sleep of the
    engine's time for that frame (so the processes idle in the same pattern as with the node)."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_BUILTIN_TRANSPORTS=transport)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           "FASTDDS_BUILTIN_TRANSPORTS")})
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dcfm_ros.msg import SegmentationInfo

    if echo_delays_ms is None:
        node_exe = Path(sys.executable).parent / "dcfm_node"
        cmd = [str(node_exe) if node_exe.exists() else sys.executable,
               *([] if node_exe.exists() else ["-m", "dcfm_ros.node.main"]),
               "--ros-args", "-p", f"model:={checkpoint}", "-p", f"device:={device}", "-p",
               "drop_policy:=none", "-p", "qos.reliability:=reliable", "-p", "qos.depth:=10", "-p",
               f"keyframe.interval:={interval}", "-r", "__ns:=/bench"]
        log = log_dir / f"node_{transport}.log"
    else:
        cmd = [sys.executable, "-m", "dcfm_ros.tools.bench_node", "--echo-node",
               ",".join(f"{d:.3f}" for d in echo_delays_ms)]
        log = log_dir / f"echo_{transport}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = rclpy.create_node("dcfm_bench_node", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(node)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    received: dict[tuple[int, int], tuple[float, Any]] = {}
    infos: dict[tuple[int, int], Any] = {}

    def on_labels(msg: Any) -> None:
        received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.perf_counter(), msg)

    def on_info(msg: Any) -> None:
        infos[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    sub = node.create_subscription(Image, "/bench/segmentation/labels", on_labels, qos)
    node.create_subscription(SegmentationInfo, "/bench/segmentation/info", on_info, qos)
    pub = node.create_publisher(Image, "/bench/image", qos)
    msgs = [image_msg(f) for f in frames]  # built beforehand: not part of what is measured

    def spin_until(done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if proc.poll() is not None:
                raise SystemExit(f"dcfm-bench-node: the node exited ({proc.returncode}); log {log}:\n"
                                 + log.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise SystemExit(f"dcfm-bench-node: timed out waiting for {what}; node log {log}")
            executor.spin_once(timeout_sec=0.5)

    try:
        spin_until(lambda: sub.get_publisher_count() > 0 and pub.get_subscription_count() > 0,
                   START_TIMEOUT_S, "the node (discovery)")
        lat, labels, keys = [], [], []
        t_start = 0.0
        for i, msg in enumerate(msgs):
            if i == warmup:
                t_start = time.perf_counter()
            now = time.time_ns()  # the node reports stamp -> labels published (same clock)
            key = (now // 10**9, now % 10**9)
            keys.append(key)
            msg.header.stamp.sec, msg.header.stamp.nanosec = key
            t = time.perf_counter()
            pub.publish(msg)
            spin_until(lambda k=key: k in received, 60.0, f"labels of frame {i}")
            if i >= warmup:
                t_recv, out = received[key]
                lat.append((t_recv - t) * 1000.0)
                labels.append(np.frombuffer(out.data, np.uint8).reshape(out.height, out.step)[:, :out.width])
        wall = time.perf_counter() - t_start
        timed = keys[warmup:]
        if echo_delays_ms is None:
            spin_until(lambda: all(k in infos for k in timed), 10.0, "info messages")
            node_ms = [infos[k].engine_latency_ms for k in timed]
            e2e_ms = [infos[k].end_to_end_latency_ms for k in timed]
        else:
            node_ms, e2e_ms = list(echo_delays_ms[warmup:]), [float("nan")] * len(timed)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
    # Paired per frame: what the ROS layer adds around the engine call that the node itself timed
    # (insensitive to the engine running faster or slower than in the engine-alone passes).
    overhead = [a - b for a, b in zip(lat, node_ms, strict=True)]
    if echo_delays_ms is not None:
        return {"transport": transport, "paired_overhead_ms": stats(overhead)}, labels
    result = {"transport": transport, "fps": len(lat) / wall, "latency_ms": stats(lat),
              "paired_overhead_ms": stats(overhead),
              "paired_ratio": sum(node_ms) / 1000.0 / wall,
              "engine_in_node_ms": stats(node_ms), "stamp_to_labels_published_ms": stats(e2e_ms),
              "exit_code": proc.returncode, "_engine_ms": node_ms}
    return result, labels


def echo_node(delays_ms: list[float]) -> int:
    """The transport floor: answer each image on /bench/image with a mono8 image of its size on
    /bench/segmentation/labels after sleeping delays_ms[i] (no conversion, no engine)."""
    import array

    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dcfm_bench_echo")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Image, "/bench/segmentation/labels", qos)
    buf = array.array("B")
    count = [0]

    def on_image(msg: Any) -> None:
        time.sleep(delays_ms[min(count[0], len(delays_ms) - 1)] / 1000.0)
        count[0] += 1
        if len(buf) != msg.height * msg.width:
            buf.frombytes(bytes(msg.height * msg.width - len(buf)))
        out = Image(header=msg.header, height=msg.height, width=msg.width, encoding="mono8", step=msg.width)
        out.data = buf
        pub.publish(out)

    node.create_subscription(Image, "/bench/image", on_image, qos)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dcfm-bench-node", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="model file (default: packaged model, else a random "
                   "EfficientNet-Lite0 at --size)")
    p.add_argument("--size", type=size_type, default=(480, 853), help="frame size HxW (default 480x853)")
    p.add_argument("--input-size", type=size_type, default=None,
                   help="network input HxW of the random model (default: --size)")
    p.add_argument("--frames", type=int, default=40, help="timed frames (default 40)")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    p.add_argument("--interval", type=int, default=2, help="fixed keyframe interval (default 2)")
    p.add_argument("--device", default="cpu", help="engine device (default cpu)")
    p.add_argument("--clip", type=Path, default=None, help="directory of frames (default: CamVid val)")
    p.add_argument("--transport", nargs="+", default=["LARGE_DATA"],
                   help="FASTDDS_BUILTIN_TRANSPORTS value(s) to measure (default LARGE_DATA; e.g. UDPv4 SHM)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads in the engine and the node "
                   "(OMP_NUM_THREADS; default 0 = torch's default). On a shared, busy machine 1 gives stable "
                   "numbers: OpenMP threads competing with other processes for cores stall each other")
    p.add_argument("--no-floor", action="store_true", help="skip the transport floor (echo node) run")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--echo-node", help=argparse.SUPPRESS)  # internal: the floor's echo subprocess
    args = p.parse_args(argv)
    if args.echo_node is not None:
        return echo_node([float(v) for v in args.echo_node.split(",")])
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the node subprocess
        import torch

        torch.set_num_threads(args.threads)
    if args.frames < 1 or args.warmup < 1:
        p.error("--frames and --warmup must be >= 1")

    from dcfm_ros.node.params import default_model_path

    tmp = Path(tempfile.mkdtemp(prefix="dcfm-bench-node-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = default_model_path()
        if not checkpoint.is_file():
            checkpoint = tmp / "random_lite0.safetensors"
            make_checkpoint(checkpoint, args.input_size or args.size)
    clip = args.clip if args.clip is not None else default_clip()
    frames, source = load_frames(clip, args.warmup + args.frames, args.size)

    engine1, ref_labels = run_engine(checkpoint, frames, args.warmup, args.interval, args.device)
    nodes = []
    domain = 102 + os.getpid() % 60
    for i, transport in enumerate(args.transport):
        res, labels = run_node(checkpoint, frames, args.warmup, args.interval, args.device, transport,
                               domain + i, tmp)
        res["labels_equal_engine"] = all(np.array_equal(a, b)
                                         for a, b in zip(labels, ref_labels, strict=True))
        if not args.no_floor:
            # The engine times the node measured, frame by frame (warm-up frames: their mean).
            delays = [res["engine_in_node_ms"]["mean"]] * args.warmup + res.pop("_engine_ms")
            floor, _ = run_node(checkpoint, frames, args.warmup, args.interval, args.device, transport,
                                domain + len(args.transport) + i, tmp, echo_delays_ms=delays)
            res["transport_floor_ms"] = floor["paired_overhead_ms"]
            res["node_own_overhead_ms"] = (res["paired_overhead_ms"]["mean"]
                                           - floor["paired_overhead_ms"]["mean"])
        res.pop("_engine_ms", None)
        nodes.append(res)
    engine2, _ = run_engine(checkpoint, frames, args.warmup, args.interval, args.device)
    engine = {"fps": (engine1["fps"] + engine2["fps"]) / 2,
              "latency_ms": {k: (engine1["latency_ms"][k] + engine2["latency_ms"][k]) / 2
                             for k in engine1["latency_ms"]},
              "passes_fps": [engine1["fps"], engine2["fps"]]}
    for res in nodes:
        res["ratio_fps_node_over_engine"] = res["fps"] / engine["fps"]
        res["added_latency_ms"] = res["latency_ms"]["mean"] - engine["latency_ms"]["mean"]
        res["added_latency_ms_p50"] = res["latency_ms"]["p50"] - engine["latency_ms"]["p50"]
    report = {"checkpoint": str(checkpoint), "frames": args.frames, "warmup": args.warmup,
              "size": list(args.size), "source": source, "interval": args.interval, "device": args.device,
              "engine": engine, "node": nodes, "cpu_count": os.cpu_count(), "threads": args.threads}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.frames} frames {args.size[0]}x{args.size[1]} rgb8 from {source}; model {checkpoint}; "
          f"fixed interval {args.interval}; device {args.device}; threads {args.threads or 'default'}")
    print(f"engine alone : {engine['fps']:6.2f} fps, latency mean {engine['latency_ms']['mean']:7.2f} ms "
          f"(passes {engine1['fps']:.2f} / {engine2['fps']:.2f} fps)")
    for r in nodes:
        print(f"node {r['transport']:>10}: {r['fps']:6.2f} fps, latency mean "
              f"{r['latency_ms']['mean']:7.2f} ms "
              f"p50 {r['latency_ms']['p50']:.2f} p95 {r['latency_ms']['p95']:.2f} (engine inside the node "
              f"{r['engine_in_node_ms']['mean']:.2f} ms); ratio {r['ratio_fps_node_over_engine']:.3f}, added "
              f"{r['added_latency_ms']:+.2f} ms (p50 {r['added_latency_ms_p50']:+.2f}); labels equal: "
              f"{r['labels_equal_engine']}")
        print(f"{'':16} paired with the engine time inside the node, frame by frame: added "
              f"{r['paired_overhead_ms']['mean']:.2f} ms mean, {r['paired_overhead_ms']['p50']:.2f} ms p50; "
              f"throughput ratio {r['paired_ratio']:.3f}")
        if "transport_floor_ms" in r:
            print(f"{'':16} transport floor (echo node, same messages and idle pattern, no processing): "
                  f"{r['transport_floor_ms']['mean']:.2f} ms mean, {r['transport_floor_ms']['p50']:.2f} ms "
                  f"p50; the node's own share: {r['node_own_overhead_ms']:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
