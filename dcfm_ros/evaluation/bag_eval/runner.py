"""One dcfm-bag-eval run, start to end: check the bag, write the node's parameters, start the node,
play the bag, analyse, write the report. main() in cli.py maps its errors to exit statuses."""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.analysis import analyze, label_classes_warning
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError
from dcfm_ros.evaluation.bag_eval.node_process import (
    NodeProcess,
    choose_transport,
    default_domain_id,
    large_output_warning,
    ros_environment,
)
from dcfm_ros.evaluation.bag_eval.params import model_info, prepare_output, run_params
from dcfm_ros.evaluation.bag_eval.playback import FrameSlice, play
from dcfm_ros.evaluation.bag_eval.stopping import Interrupted, StopRequest
from dcfm_ros.evaluation.bag_eval.viewer_process import ViewerProcess
from dcfm_ros.evaluation.bagio import BagReader, BagWriter
from dcfm_ros.evaluation.video import CODECS

NODE_INPUT = {bagio.IMAGE: ("raw", "image"), bagio.COMPRESSED_IMAGE: ("compressed", "image/compressed")}


def _single_channel(bag: BagReader, topic: bagio.TopicInfo) -> bool:
    if topic.msgtype != bagio.IMAGE:
        return False
    for raw in bag.raw([topic.name]):
        try:
            return str(bagio.deserialize(raw.data, raw.msgtype).encoding) in bagio.SINGLE_CHANNEL
        except bagio.DecodeError:
            continue
    return False


def choose_image_topic(bag: BagReader, asked: str | None, gt_topic: str | None) -> bagio.TopicInfo:
    if asked is not None:
        return bag.require_topic(asked, bagio.IMAGE_TYPES, "image")
    cands = [t for t in bag.image_topics() if t.name != gt_topic]
    if len(cands) > 1:  # label, mask and depth images are single-channel: not the camera
        cands = [t for t in cands if not _single_channel(bag, t)]
    if len(cands) != 1:
        raise BagEvalError(f"{'no' if not cands else 'several'} image topics in {bag.path}; choose one with "
                           f"--image-topic. Topics:\n{bagio.format_topics(bag.topics.values())}")
    return cands[0]


def _listed(value: str | list[str] | None) -> list[str]:
    """--image-topic / --gt-topic as given: a list (repeatable flags), one string, or None."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def output_dir(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    bag = Path(args.bag)
    return Path("out") / "bag_eval" / (bag.stem if bag.is_file() else bag.name)


def frame_slice(args: argparse.Namespace) -> FrameSlice:
    start = 0.0 if args.start is None else float(args.start)
    if not (math.isfinite(start) and start >= 0):
        raise BagEvalError(f"--start must be a number of seconds >= 0, got {args.start}")
    if args.max_frames is not None and args.max_frames < 1:
        raise BagEvalError(f"--max-frames must be at least 1, got {args.max_frames}")
    return FrameSlice(start, args.max_frames)


def run(args: argparse.Namespace, stop: StopRequest | None = None) -> dict[str, Any]:
    """Everything main() does, raising BagEvalError / BagError; returns the report. With a stop request
    (SIGINT/SIGTERM) before the node starts: Interrupted; after: the report of what was done, marked
    incomplete."""
    from dcfm_ros.evaluation import report as rp

    if len(_listed(args.image_topic)) > 1:  # several cameras through one node
        from dcfm_ros.evaluation.bag_eval.multicam import run_multi

        return run_multi(argparse.Namespace(**{**vars(args), "image_topic": _listed(args.image_topic),
                                               "gt_topic": _listed(args.gt_topic)}), output_dir(args), stop)
    gt_topics = _listed(args.gt_topic)
    if len(gt_topics) > 1:
        raise BagEvalError(f"{len(gt_topics)} --gt-topic for one camera")
    args = argparse.Namespace(**{**vars(args), "image_topic": (_listed(args.image_topic) or [None])[0],
                                 "gt_topic": (gt_topics or [None])[0]})
    stop = stop or StopRequest()
    rate = 1.0 if args.rate is None else float(args.rate)
    if not args.max and not (math.isfinite(rate) and rate > 0):
        raise BagEvalError(f"--rate must be a positive factor, got {args.rate}")
    if args.frame_timeout <= 0 or args.startup_timeout <= 0:
        raise BagEvalError("timeouts must be positive")
    domain_id = default_domain_id() if args.domain_id is None else args.domain_id
    if not 0 <= domain_id <= 232:
        raise BagEvalError(f"--domain-id must be in 0..232, got {domain_id}")
    frames = frame_slice(args)
    dds_transport = choose_transport(args.transport)

    in_path = bagio.resolve_bag(args.bag)
    with BagReader(in_path) as bag:
        info = choose_image_topic(bag, args.image_topic, args.gt_topic)
        if args.gt_topic is not None:
            bag.require_topic(args.gt_topic, bagio.IMAGE_TYPES, "ground-truth")
        image_count = info.count
        custom_data = bag.custom_data
        if next(bag.raw([info.name], start_ns=bag.start_ns + round(frames.start_s * 1e9)), None) is None:
            raise BagEvalError(f"--start {frames.start_s:g} s: no message on {info.name} from then on (the "
                               f"bag is {(bag.end_ns - bag.start_ns) / 1e9:.3f} s long)")
        bag_start = bag.start_ns
    image_transport, node_input = NODE_INPUT[info.msgtype]

    values = run_params(args, image_transport)
    model, cfg = model_info(values)
    if stop.requested:  # e.g. while torch was loading for model_info: nothing has been written yet
        raise Interrupted(f"stopped by {stop.name} before the node started; nothing written")

    out_dir = output_dir(args)
    params_path = prepare_output(out_dir, args.overwrite, values)
    out_bag = out_dir / "bag"
    record = [k for k, flag in (("color", args.record_color), ("overlay", args.record_overlay)) if flag]

    cmd = [sys.executable, "-m", "dcfm_ros.node.main", "--ros-args", "--params-file", str(params_path),
           "-r", f"{node_input}:={info.name}"]
    say = (lambda *_: None) if args.quiet else (lambda text: print(f"dcfm-bag-eval: {text}", file=sys.stderr))
    what = "" if frames.whole else f", from {frames.start_s:g} s, at most {frames.max_frames or 'all'} frames"
    say(f"playing {in_path} ({info.name}, {image_count} frames{what}, "
        f"{'--max' if args.max else f'--rate {rate:g}'}) through dcfm_node (ROS domain {domain_id}, "
        f"{dds_transport}, log {out_dir / 'node.log'})")
    viewer_topics = getattr(args, "viewer_topics", None) or []
    viewer_counts: dict[str, Any] | None = None
    with ros_environment(domain_id, dds_transport) as env:
        node = NodeProcess(cmd, env, out_dir / "node.log")
        viewer = ViewerProcess(viewer_topics, env, out_dir) if viewer_topics else None
        try:
            if viewer is not None:
                say(f"a viewer process subscribes to {', '.join(t for t, _ in viewer_topics)}")
                viewer.wait_ready(node, args.startup_timeout, lambda: stop.requested)
            with BagReader(in_path) as bag, BagWriter(out_bag) as writer:
                writer.set_custom_data("dcfm_ros.bag_eval", json.dumps({"input": str(in_path),
                                                                       "image_topic": info.name}))
                pb = play(bag, info.name, info.msgtype, node, writer, domain_id=domain_id, max_mode=args.max,
                          rate=rate, record=record, frame_timeout=args.frame_timeout,
                          startup_timeout=args.startup_timeout, frames=frames,
                          should_stop=lambda: stop.requested, progress=not args.quiet)
        finally:
            if viewer is not None:
                viewer_counts = viewer.stop()
            code = node.stop()
        if code not in (0, -signal.SIGINT):
            pb.warnings.append(f"dcfm_node exited with status {code} after the run (see node.log)")

    say("playback stopped; computing the report of what was played" if pb.stopped
        else "playback done; computing the report")
    names = list(cfg.class_names)
    mismatch = label_classes_warning(custom_data, args.gt_topic, names)
    if mismatch is not None:
        pb.warnings.append(mismatch)
    if large := large_output_warning(pb.camera, dds_transport):
        pb.warnings.append(large)
    if pb.classes is not None and pb.classes != names:
        pb.warnings.append(f"the node's class map {pb.classes} differs from the checkpoint's {names}")
    # A signal that already stopped playback is not also a request to cut the analysis of what was
    # played (that one is absorbed, like any later one); the first signal during the analysis is.
    signalled_before = stop.requested
    an = analyze(in_path, out_bag, pb.records, image_topic=info.name, gt_topic=args.gt_topic,
                 class_names=names, palette=cfg.palette, out_dir=out_dir, video=not args.no_video,
                 video_codecs=CODECS if args.video_codec == "auto" else (args.video_codec,),
                 sliced=not frames.whole, should_stop=lambda: stop.requested and not signalled_before)
    skipped = [b.to_dict() for b in pb.skipped] + [b.to_dict() for b in an.gt_bad]
    summary = rp.summarize(pb.records, skipped=skipped, image_skipped=len(pb.skipped),
                           gt_skipped=len(an.gt_bad), node_counters=pb.node_counters)
    cut = []
    if pb.stopped:
        cut.append(f"playback stopped by {stop.name} {pb.stopped}")
    if an.stopped:
        cut.append(f"the analysis stopped by {stop.name} after {an.analysed} of {len(pb.records)} frames "
                   "(metrics, video and contact sheet cover those)")
    sent = [r.log_ns for r in pb.records]
    report = {
        "complete": not cut,
        "incomplete_reason": "; ".join(cut) or None,
        "input": {"bag": str(in_path), "image_topic": info.name, "gt_topic": args.gt_topic,
                  "image_messages": image_count},
        "slice": {"start_s": frames.start_s, "max_frames": frames.max_frames,
                  "first_s": (sent[0] - bag_start) / 1e9 if sent else None,
                  "last_s": (sent[-1] - bag_start) / 1e9 if sent else None},
        "output": {"bag": str(out_bag), "topics": pb.out_topics},
        "mode": {"max": bool(args.max), "rate": None if args.max else rate},
        "transport": dds_transport,
        **summary,
        "timeouts": pb.timeouts,
        "unmatched_outputs": pb.unmatched_outputs,
        "metrics": an.metrics,
        "node_params": values,
        "model": model,
        "classes": rp.class_table(names, cfg.palette),
        "video_codec": an.video_codec,
        "contact_sheet_columns": an.contact_sheet_columns,
        "machine": rp.machine_info(),
        "viewer": None if viewer is None else {"topics": viewer_counts},
        "warnings": pb.warnings + an.warnings,
        "files": {"output_bag": "bag", "video": an.video, "contact_sheet": an.contact_sheet,
                  "node_log": "node.log", "node_params": "node_params.yaml"},
    }
    return rp.write_report(out_dir, report, pb.records)
