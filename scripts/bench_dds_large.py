#!/usr/bin/env python3
"""How long a label image takes between two processes over Fast DDS, by transport (docs/fast-path.md,
"Large outputs between processes"): a publisher process sends --count mono8 Images of each size every
100 ms (reliable, depth 10, the node's output QoS); a subscriber process (raw, as dcfm-bag-eval)
records arrival minus the header stamp (both on the host's monotonic clock). Transports: Fast DDS's
builtin sets (FASTDDS_BUILTIN_TRANSPORTS) and `LARGE_SHM`, the shipped profile (dcfm_ros/dds).

    python scripts/bench_dds_large.py --sizes 360x480,1080x1920 --transports UDPv4,SHM,LARGE_DATA,LARGE_SHM
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import subprocess
import sys
import time

from dcfm_ros.dds.profiles import PROFILE_VARIABLE, large_messages_environment


def publish(h: int, w: int, count: int) -> None:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_large_pub")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(Image, "big", qos)
    while pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)
    msg = Image(height=h, width=w, encoding="mono8", step=w, data=bytes(h * w))
    for _ in range(count):
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(time.monotonic_ns(), 10**9)
        pub.publish(msg)
        time.sleep(0.1)
    time.sleep(1.0)
    rclpy.shutdown()


def subscribe(count: int) -> None:
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("dds_large_sub")
    delays: list[float] = []

    def cb(data: bytes) -> None:
        now = time.monotonic_ns()
        sec, nsec = struct.unpack_from("<iI", bytes(data[:12]), 4)  # CDR header, then the stamp
        delays.append((now - (sec * 10**9 + nsec)) / 1e6)

    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    node.create_subscription(Image, "big", cb, qos, raw=True)
    end = time.monotonic() + 6 + count * 0.1
    while time.monotonic() < end and len(delays) < count:
        rclpy.spin_once(node, timeout_sec=0.05)
    print(" ".join(f"{d:.3f}" for d in delays))
    rclpy.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="360x480,1080x1920", help="HxW of the mono8 images")
    p.add_argument("--transports", default="UDPv4,SHM,LARGE_DATA,LARGE_SHM")
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role == "pub":
        h, w = (int(v) for v in args.size.split("x"))
        publish(h, w, args.count)
        return 0
    if args.role == "sub":
        subscribe(args.count)
        return 0
    for t in args.transports.split(","):
        drop = ("FASTDDS_BUILTIN_TRANSPORTS", PROFILE_VARIABLE)
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(ROS_DOMAIN_ID=str(1 + (os.getpid() + 37) % 101), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
        env.update(large_messages_environment() if t == "LARGE_SHM" else {"FASTDDS_BUILTIN_TRANSPORTS": t})
        for size in args.sizes.split(","):
            me = [sys.executable, __file__, "--count", str(args.count)]
            sub = subprocess.Popen([*me, "--role", "sub"], env=env, stdout=subprocess.PIPE, text=True)
            subprocess.run([*me, "--role", "pub", "--size", size], env=env, check=True)
            out, _ = sub.communicate(timeout=60)
            d = sorted(float(v) for v in out.split())
            if not d:
                print(f"{t:10s} {size:10s} nothing arrived")
                continue
            print(f"{t:10s} {size:10s} {len(d)}/{args.count} arrived, p50 {statistics.median(d):6.2f} ms, "
                  f"max {d[-1]:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
