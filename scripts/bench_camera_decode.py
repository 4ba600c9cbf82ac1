"""A camera's per-frame work in the node (JPEG decode + engine) at two sizes, side by side.

    PYTHONPATH=test .venv/bin/python scripts/bench_camera_decode.py --frames 40 --big 1920x1080

The demo drive's frames, resized to 480x360 and to --big and JPEG-encoded (quality 90), each run
through the node's own decode (node/reduced_decode.py) and the engine the node builds at its defaults
(engine/settings.py: build_engine), interleaved frame by frame: 480x360; --big with the reduced decode
(the default); --big decoded in full (reduced_decode false). Prints mean / p50 ms, frames/s and the
ratio to 480x360's frames/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
from sensor_msgs.msg import CompressedImage
from test_fastpath import demo_frames

from dcfm_ros.engine.settings import PARAMETERS, build_engine, settings_from_values
from dcfm_ros.node.reduced_decode import decode


def _jpegs(frames: list, w: int, h: int) -> list[CompressedImage]:
    out = []
    for f in frames:
        bgr = cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2BGR)
        data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        out.append(CompressedImage(format="jpeg", data=data))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--big", default="1920x1080", help="WxH of the large camera")
    args = p.parse_args()
    w, h = (int(v) for v in args.big.split("x"))
    frames = demo_frames(args.frames)
    cases = {"480x360": (_jpegs(frames, 480, 360), True),
             f"{args.big} reduced decode": (_jpegs(frames, w, h), True),
             f"{args.big} full decode": (_jpegs(frames, w, h), False)}
    values = {p.name: p.default for p in PARAMETERS}
    engines = {k: build_engine(settings_from_values(values)) for k in cases}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(2):
        for i in range(len(frames)):
            for k, (msgs, reduced) in cases.items():
                engine = engines[k]
                t = time.perf_counter()
                image = decode(msgs[i], engine.input_size if reduced else None)
                engine.process(image.rgb, image.camera if image.reduced else None)
                if rep == 1 or i > 1:  # the first frames build the camera size's graphs
                    times[k].append((time.perf_counter() - t) * 1000.0)
    base = statistics.mean(times["480x360"])
    for k, v in times.items():
        mean = statistics.mean(v)
        print(f"{k}: mean {mean:.1f} ms, p50 {statistics.median(v):.1f} ms, {1000 / mean:.1f} frames/s, "
              f"{base / mean:.2f}x 480x360's frames/s")


if __name__ == "__main__":
    main()
