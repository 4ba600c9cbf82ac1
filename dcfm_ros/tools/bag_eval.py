"""dcfm-bag-eval: play a rosbag2 through the real dcfm_node over ROS topics, record what it publishes,
and write a report (report.json / report.md, plots, overlay video, contact sheet).

    dcfm-bag-eval BAG [--image-topic T ...] [--gt-topic T ...] (--max | --rate R) [--params FILE]
                  [--param NAME=VALUE ...] [--model FILE] [--out DIR] [--start S] [--max-frames N]
                  [--transport UDPv4|DEFAULT|SHM|LARGE_DATA|LARGE_SHM] [--video-codec auto|h264|vp9|mpeg4]

How it runs:
1. The bag is checked first (topics, types); a missing topic is an error that lists the bag's topics.
2. dcfm_node starts as a subprocess (`python -m dcfm_ros.node.main`) with an effective params file
   (DIR/node_params.yaml = the node's defaults < --params file < --param < what the run needs:
   use_sim_time true, image_transport from the bag's topic type, and with --max drop_policy none
   and reliable input QoS) in its own ROS domain (--domain-id, localhost discovery only), its input
   remapped to the bag's image topic. Its output goes to DIR/node.log; if it exits, the error
   shows the log's tail.
3. Once discovery is complete (both directions, and the latched segmentation/classes received), the
   image messages are published as recorded (the bag's bytes), /clock following the bag's record
   time (the node runs on sim time). --max: frame i+1 is sent when the labels and info of frame i
   came back (matched by header stamp) or after --frame-timeout (counted as dropped): no frame is
   lost to a full queue, and the run is as fast as the node. --rate R: recorded timing scaled by R,
   with the node's own drop policy; whatever comes back is recorded. --start S / --max-frames N
   play a slice: from S seconds after the bag's start (record time), at most N frames.
4. Outputs (segmentation/labels, info, classes; color/overlay with --record-color/--record-overlay,
   received on a thread and ROS context of their own so they do not delay the labels being timed)
   go into DIR/bag with the input frame's record time and the node's header stamps (copied from the
   input), so they line up with the input bag.
5. The report pass reads the input bag and DIR/bag, matches labels to frames and ground truth by
   header stamp, and computes the metrics with dcfm_ros.data.metrics (the same code as
   dcfm-evaluate). Image messages that cannot be decoded are never sent and are listed as skipped;
   unusable ground-truth messages are listed and leave their frame out of the metrics. The overlay
   video and the contact sheet carry the class legend; the video is H.264 (VP9, then MPEG-4 Part 2
   as fallbacks: dcfm_ros.evaluation.video).
6. --viewer [CASES]: the run without a viewer, then one per case with a viewer process subscribed
   (color+overlay, all, compressed), side by side in DIR/viewers.md (bag_eval/viewer_runs.py).

Several cameras: `--image-topic` given more than once plays every one of those topics through one node
with the parameter `cameras` (names from the topics: /front/image -> front) and writes a report per
camera (DIR/<camera>/) and one overall (DIR/report.md|json: per camera and overall frames, throughput,
latency, keyframe ratio, metrics); see dcfm_ros.evaluation.bag_eval.multicam.

SIGINT / SIGTERM (any number, in any order): no further frame is sent, the node is stopped (SIGINT,
SIGKILL after 20 s; it runs in a session of its own, so a terminal's Ctrl-C reaches only this tool),
and the report of what was played is written, marked incomplete ("complete": false and the reason in
report.json, a banner in report.md). Later signals are absorbed.

Exit status: 0 report written; 2 bad input (bag, topic, params, model); 3 the node failed;
128 + signal number (130 SIGINT, 143 SIGTERM) stopped by a signal (the incomplete report written if
the node had been started). The report keys are documented in dcfm_ros.evaluation.report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcfm_ros.evaluation.bag_eval.node_process import TRANSPORTS
from dcfm_ros.evaluation.bag_eval.params import parse_param
from dcfm_ros.evaluation.bag_eval.stopping import StopRequest
from dcfm_ros.evaluation.bag_eval.viewer_runs import parse_cases

# The rest (numpy, OpenCV, rosbags, torch, rclpy) is imported in main() once the signal handlers are
# in place: a Ctrl-C during those imports must not end in a KeyboardInterrupt traceback.


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-bag-eval", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bag", type=Path, help="input rosbag2 directory (or a .mcap/.db3 file)")
    p.add_argument("--image-topic", action="append", help="camera topic (Image or CompressedImage); default: "
                   "the bag's only image topic. Repeat it for several cameras through one node (parameter "
                   "cameras; names from the topics): a report per camera and one overall")
    p.add_argument("--gt-topic", action="append", help="ground-truth label topic (mono8 train ids, 255 = "
                   "void); with several --image-topic one per camera, in the same order (none: no ground "
                   "truth for that camera)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--max", action="store_true", help="as fast as the node keeps up, no frame lost "
                       "(back-pressure; drop_policy none)")
    speed.add_argument("--rate", type=float, help="recorded timing scaled by this factor (default 1.0)")
    p.add_argument("--params", type=Path, help="node params file (e.g. config/dcfm.yaml); default: the "
                   "node's defaults")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="NAME=VALUE",
                   help="override one node parameter (repeatable), e.g. keyframe.interval=3")
    p.add_argument("--model", help="checkpoint file (shortcut for --param model=FILE)")
    p.add_argument("--out", type=Path, help="output folder (default: out/bag_eval/<bag name>)")
    p.add_argument("--overwrite", action="store_true", help="replace the output bag and report in --out")
    p.add_argument("--record-color", action="store_true", help="also record segmentation/color")
    p.add_argument("--record-overlay", action="store_true", help="also record segmentation/overlay")
    p.add_argument("--no-video", action="store_true", help="skip the overlay video")
    p.add_argument("--frame-timeout", type=float, default=30.0,
                   help="seconds to wait for one frame's output before counting it dropped (default 30)")
    p.add_argument("--startup-timeout", type=float, default=180.0,
                   help="seconds to wait for the node to start (default 180)")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID of the run (default: one per process)")
    p.add_argument("--start", type=float, metavar="SECONDS",
                   help="play from this many seconds after the bag's start (record time; default 0)")
    p.add_argument("--max-frames", type=int, metavar="N", help="play at most N frames (default: all)")
    p.add_argument("--transport", type=str.upper, choices=[t.upper() for t in TRANSPORTS],
                   help="Fast DDS builtin transport of the run, for this tool and the node, or LARGE_SHM "
                   "(the shipped profile: shared memory for large outputs); default: "
                   "$FASTDDS_BUILTIN_TRANSPORTS, else UDPv4; see README for the measured choices")
    p.add_argument("--video-codec", choices=("auto", "h264", "vp9", "mpeg4"), default="auto",
                   help="overlay video codec (default auto: H.264, else VP9, else MPEG-4 Part 2)")
    p.add_argument("--viewer", nargs="?", const=["color+overlay"], type=parse_cases, metavar="CASES",
                   help="run the bag without a viewer, then with a viewer process for each case "
                   "(comma-separated: color+overlay (default), all, compressed), and report the runs "
                   "side by side (DIR/viewers.md); each run's report in DIR/<case>/")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    stop = StopRequest().install()
    try:
        return _main(argv, stop)
    finally:
        stop.restore()


def _main(argv: list[str] | None, stop: StopRequest) -> int:
    args = build_parser().parse_args(argv)
    from dcfm_ros.evaluation.bag_eval.errors import BagEvalError, NodeFailedError
    from dcfm_ros.evaluation.bag_eval.runner import output_dir, run
    from dcfm_ros.evaluation.bag_eval.stopping import Interrupted
    from dcfm_ros.evaluation.bagio import BagError

    try:
        if args.viewer:
            from dcfm_ros.evaluation.bag_eval.viewer_runs import run_cases

            return run_cases(args, stop)
        report = run(args, stop)
    except Interrupted as exc:
        print(f"dcfm-bag-eval: {exc}", file=sys.stderr)
        return stop.exit_status()
    except NodeFailedError as exc:
        print(f"dcfm-bag-eval: error: {exc}", file=sys.stderr)
        return 3
    except (BagEvalError, BagError) as exc:
        print(f"dcfm-bag-eval: error: {exc}", file=sys.stderr)
        return 2
    out_dir = output_dir(args)
    if not report.get("complete", True):
        print(f"INCOMPLETE: {report.get('incomplete_reason')}")

    def num(v: float | None, digits: int) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    if "cameras" in report and "overall" in report:  # several cameras
        for name, row in [*report["cameras"].items(), ("overall", report["overall"])]:
            lat, m = row["latency_ms"], row.get("metrics") or {}
            miou = row.get("miou", m.get("miou"))
            print(f"{name}: frames in {row['frames_in']}, out {row['frames_out']}, dropped "
                  f"{row['frames_dropped']}; {num(row['throughput_fps'], 2)} fps; latency p50 "
                  f"{num(lat['p50'], 1)} ms, p99 {num(lat['p99'], 1)} ms; keyframe ratio "
                  f"{num(row['keyframe_ratio'], 3)}; mIoU {num(miou, 4)}")
        for w in report.get("warnings", []):
            print(f"warning: {w}")
        print(f"report:  {out_dir / 'report.md'}  ({out_dir / 'report.json'}); per camera: "
              f"{', '.join(str(out_dir / f) for f in report['files']['cameras'].values())}")
        return stop.exit_status() if stop.requested else 0
    lat = report["latency_ms"]["all"]

    print(f"frames in {report['frames_in']}, out {report['frames_out']}, dropped {report['frames_dropped']}, "
          f"skipped {report['frames_skipped']}; {num(report['throughput_fps'], 2)} fps; latency p50 "
          f"{num(lat['p50'], 1)} ms, p95 {num(lat['p95'], 1)} ms; keyframe ratio "
          f"{num(report['keyframe_ratio'], 3)}")
    m = report.get("metrics")
    if m is not None:
        def f4(v: float | None) -> str:
            return num(v, 4)

        print(f"mIoU {f4(m['miou'])}, wIoU {f4(m['wiou'])}, mVC_8 {f4(m['mvc8'])}, mVC_16 {f4(m['mvc16'])} "
              f"over {m['frames']} frames")
    for w in report.get("warnings", []):
        print(f"warning: {w}")
    files = report["files"]
    print(f"report:  {out_dir / 'report.md'}  ({out_dir / 'report.json'})")
    print("plots:   " + "  ".join(str(out_dir / files[k]) for k in ("latency_plot", "latency_hist",
                                                                      "class_iou_plot") if files.get(k)))
    if files.get("video"):
        print(f"video:   {out_dir / files['video']}")
    if files.get("contact_sheet"):
        print(f"frames:  {out_dir / files['contact_sheet']}")
    print(f"outputs: {out_dir / 'bag'}")
    return stop.exit_status() if stop.requested else 0


if __name__ == "__main__":
    sys.exit(main())

