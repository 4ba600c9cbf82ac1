"""dcfm-make-bag: build a rosbag2 (mcap or sqlite3) from a video, an image folder or a dataset sequence.

Sources (exactly one):
  --video FILE                 any file OpenCV reads; rate defaults to the file's frame rate
  --images DIR [--labels DIR]  images sorted by name (natural order); labels matched by file stem and
                               stored as they are (no mapping)
  --camvid ROOT | --cityscapes ROOT | --vspw ROOT | --folder ROOT   with --split and --sequence: one
                               video of the dataset, frames in temporal order, labels mapped to train
                               ids exactly as training and dcfm-evaluate map them (void/ignore = 255);
                               the dataset's class names (train id order, as training reads them: VSPW's
                               from label_num_dic_final.json, folder's from classes.yaml) go into the
                               bag's custom data; --folder is your own recordings (no known rate: --rate)

The other way round, `--extract BAG ROOT` writes a bag's camera frames into the folder layout that
`dcfm-train` reads (dataset.type: folder), to seed a dataset from recorded drives:
  ROOT/<split>/images/<sequence>/<NNNNNN>.png   every frame (or --every N-th), in log-time order
  ROOT/<split>/labels/<sequence>/<NNNNNN>.png   frames of the bag's label topic, if it has one
  ROOT/classes.yaml                             only when the bag records class names and none exists
(--split default train, --sequence default the bag's folder name, --topic picks the camera topic.)

Topics written (frame_id "camera" unless --frame-id):
  <image-topic>              sensor_msgs/Image rgb8           (default /camera/image), or with
  <image-topic>/compressed   sensor_msgs/CompressedImage JPEG (--compressed, --jpeg-quality)
  <label-topic>              sensor_msgs/Image mono8 train ids, 255 = void (default /camera/labels),
                             only for frames that have a label, same header stamp as the image
Header stamps (and record times) are start + i / rate, so a bag made twice from the same input is
identical. mcap bags use zstd chunk compression (plain rosbag2 metadata; `ros2 bag` reads them).

Example (the demo clip in demo/):
  dcfm-make-bag demo/camvid_val_0016E5 --camvid ../shared/data/camvid --split val --sequence 0016E5 \
      --compressed --jpeg-quality 85
  dcfm-make-bag --extract demo/camvid_val_0016E5 my_dataset --split train --sequence drive1
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dcfm_ros.evaluation.bagio import (
    COMPRESSED_IMAGE,
    IMAGE,
    BadMessage,
    BagReader,
    BagWriter,
    Frame,
    compressed_image_msg,
    image_msg,
    label_msg,
    natural_key,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_START_S = 1_700_000_000.0  # fixed so that bags are reproducible; any positive time works
# Frame spacing of the datasets' videos where it is fixed (CamVid README: val is a dense 15 Hz clip,
# train/test are labeled at 1 Hz; Cityscapes sequences are recorded at 17 Hz).
DATASET_RATES = {("camvid", "val"): 15.0, ("camvid", "train"): 1.0, ("camvid", "test"): 1.0,
                 ("cityscapes", None): 17.0}


class SourceError(ValueError):
    """The input (video, folder, dataset sequence) cannot be read as asked."""


@dataclass(frozen=True)
class SourceFrame:
    name: str
    rgb: np.ndarray  # (H, W, 3) uint8
    labels: np.ndarray | None  # (H, W) uint8/uint16 or None when this frame has no label


@dataclass(frozen=True)
class BagSummary:
    path: Path
    frames: int
    labeled: int
    topics: dict[str, str]
    rate: float
    start_ns: int
    size_bytes: int


def _read_rgb(path: Path) -> np.ndarray:
    from dcfm_ros.data.datasets.pairs import read_rgb

    try:
        return read_rgb(path)
    except FileNotFoundError as exc:
        raise SourceError(str(exc)) from exc


def _read_raw_label(path: Path) -> np.ndarray:
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise SourceError(f"cannot read label {path}")
    if lab.ndim != 2:
        raise SourceError(f"label {path} must be a single-channel image, got shape {lab.shape}")
    if lab.dtype not in (np.uint8, np.uint16):
        raise SourceError(f"label {path} must be 8- or 16-bit, got {lab.dtype}")
    return lab


def video_frames(path: Path) -> tuple[Iterator[SourceFrame], float | None]:
    """Frames of a video file and its frame rate (None when the container does not say)."""
    if not path.is_file():
        raise SourceError(f"video file not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SourceError(f"OpenCV cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS))

    def gen() -> Iterator[SourceFrame]:
        i = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield SourceFrame(f"{path.stem}_{i:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None)
                i += 1
        finally:
            cap.release()
        if i == 0:
            raise SourceError(f"video {path} has no readable frame")

    return gen(), (fps if math.isfinite(fps) and fps > 0 else None)


def folder_frames(images: Path, labels: Path | None) -> Iterator[SourceFrame]:
    if not images.is_dir():
        raise SourceError(f"image folder not found: {images}")
    files = sorted((p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise SourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
    label_files: dict[str, Path] = {}
    if labels is not None:
        if not labels.is_dir():
            raise SourceError(f"label folder not found: {labels}")
        label_files = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff")}
        if not any(f.stem in label_files for f in files):
            raise SourceError(f"no label in {labels} has the name of an image in {images} "
                              "(labels are matched by file name without extension)")
    for f in files:
        lab = label_files.get(f.stem)
        yield SourceFrame(f.stem, _read_rgb(f), _read_raw_label(lab) if lab is not None else None)


def dataset_classes(kind: str, root: Path) -> dict[str, object]:
    """The class map of a dataset's train ids as training sees it (`dataset_spec(kind, root)`: VSPW
    reads its class names from the dataset folder), recorded in the bag so that a later evaluation
    can tell which classes the label topic's ids stand for."""
    from dcfm_ros.data.datasets import dataset_spec

    try:
        spec = dataset_spec(kind, root)
    except (OSError, ValueError) as exc:  # e.g. an unreadable label_num_dic_final.json
        raise SourceError(f"cannot read the {kind} class names under {root}: {exc}") from exc
    return {"dataset": spec.name, "class_names": list(spec.class_names)}


def dataset_frames(kind: str, root: Path, split: str, sequence: str | None) -> Iterator[SourceFrame]:
    """One video of a dataset through the training package's readers (same image reader and label
    mapping as training and dcfm-evaluate)."""
    from dcfm_ros.data.datasets import dataset_spec
    from dcfm_ros.data.datasets import video_frames as dataset_videos
    from dcfm_ros.data.datasets.pairs import read_label, read_rgb

    if not root.is_dir():
        raise SourceError(f"{kind} root folder not found: {root}")
    try:
        spec = dataset_spec(kind, root)  # with root: VSPW's own class names, not class_1..class_124
        videos = dataset_videos(kind, root, split)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot list {kind} split {split!r} under {root}: {exc}") from exc
    if sequence is None:
        if len(videos) != 1:
            raise SourceError(f"{kind} {split} has {len(videos)} sequences; choose one with --sequence: "
                              f"{', '.join(sorted(videos)[:20])}{' ...' if len(videos) > 20 else ''}")
        sequence = next(iter(videos))
    if sequence not in videos:
        raise SourceError(f"{kind} {split} has no sequence {sequence!r}; sequences: "
                          f"{', '.join(sorted(videos)[:20])}{' ...' if len(videos) > 20 else ''}")
    for sample in videos[sequence]:
        try:
            rgb = read_rgb(sample.image)
            labels = read_label(sample.label, spec.lut) if sample.label is not None else None
        except (OSError, ValueError) as exc:
            raise SourceError(str(exc)) from exc
        yield SourceFrame(sample.name, rgb, labels)


def _resize(frame: SourceFrame, size: tuple[int, int] | None) -> SourceFrame:
    if size is None:
        return frame
    rgb = cv2.resize(frame.rgb, size, interpolation=cv2.INTER_AREA)
    labels = None
    if frame.labels is not None:  # nearest: label ids must never be blended
        labels = cv2.resize(frame.labels, size, interpolation=cv2.INTER_NEAREST)
    return SourceFrame(frame.name, rgb, labels)


def write_bag(out: Path, frames: Iterator[SourceFrame], *, rate: float, compressed: bool = False,
              jpeg_quality: int = 85, storage: str = "mcap", image_topic: str = "/camera/image",
              label_topic: str = "/camera/labels", frame_id: str = "camera",
              start_ns: int = int(DEFAULT_START_S * 1e9), max_frames: int | None = None,
              skip_frames: int = 0, resize: tuple[int, int] | None = None,
              source: dict[str, object] | None = None) -> BagSummary:
    """Write `frames` to a new bag at `out`; stamps are start_ns + i / rate. Returns a summary."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of Hz, got {rate}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if start_ns <= 0:
        raise ValueError("start time must be positive (time 0 means 'unset' to a ROS clock)")
    cam_topic = image_topic.rstrip("/") + "/compressed" if compressed else image_topic
    topics: dict[str, str] = {cam_topic: COMPRESSED_IMAGE if compressed else IMAGE}
    n = labeled = 0
    shape: tuple[int, ...] | None = None
    with BagWriter(out, storage=storage) as bag:
        bag.add_topic(cam_topic, topics[cam_topic])
        for i, frame in enumerate(frames):
            if i < skip_frames:
                continue
            if max_frames is not None and n >= max_frames:
                break
            frame = _resize(frame, resize)
            if frame.labels is not None and frame.labels.shape != frame.rgb.shape[:2]:
                raise SourceError(f"frame {frame.name}: label size {frame.labels.shape[::-1]} differs from "
                                  f"image size {frame.rgb.shape[1::-1]}")
            if shape is not None and frame.rgb.shape != shape:
                # allowed in ROS, but a bag made from one sequence should not change size silently
                print(f"dcfm-make-bag: note: frame {frame.name} is {frame.rgb.shape[1::-1]}, earlier frames "
                      f"{shape[1::-1]}", file=sys.stderr)
            shape = frame.rgb.shape
            stamp = start_ns + round(n * 1e9 / rate)
            msg = (compressed_image_msg(frame.rgb, stamp, frame_id, jpeg_quality) if compressed
                   else image_msg(frame.rgb, stamp, frame_id))
            bag.write(cam_topic, stamp, msg)
            if frame.labels is not None:
                if label_topic not in topics:
                    topics[label_topic] = IMAGE
                    bag.add_topic(label_topic, IMAGE)
                bag.write(label_topic, stamp, label_msg(frame.labels, stamp, frame_id))
                labeled += 1
            n += 1
        if n == 0:
            raise SourceError("the source gave no frame (after --start-frame)")
        info = dict(source or {}, rate_hz=rate, frames=n, labeled=labeled, compressed=compressed,
                    jpeg_quality=jpeg_quality if compressed else None, label_void=255,
                    label_topic=label_topic if labeled else None)
        bag.set_custom_data("dcfm_ros.make_bag", json.dumps(info, sort_keys=True))
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return BagSummary(out, n, labeled, topics, rate, start_ns, size)


@dataclass(frozen=True)
class ExtractSummary:
    images: Path
    frames: int
    labeled: int
    skipped: int  # undecodable camera messages (counted, never guessed)
    classes_written: bool


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Atomic: a reader never sees a half-written frame under its final name."""
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if not cv2.imwrite(str(tmp), pixels):
        tmp.unlink(missing_ok=True)
        raise SourceError(f"cannot write {path}")
    tmp.replace(path)


def _camera_topic(bag: BagReader, topic: str | None, label_topic: str | None) -> str:
    if topic is not None:
        bag.require_topic(topic, (IMAGE, COMPRESSED_IMAGE), "camera")
        return topic
    cams = [t.name for t in bag.image_topics() if t.name != label_topic]
    if len(cams) != 1:
        raise SourceError(f"bag {bag.path} has {len(cams)} camera topics ({', '.join(cams) or 'none'}); "
                          "choose one with --topic")
    return cams[0]


def extract_bag(bag_path: Path, root: Path, *, split: str = "train", sequence: str | None = None,
                topic: str | None = None, every: int = 1, max_frames: int | None = None,
                overwrite: bool = False) -> ExtractSummary:
    """A bag's camera frames (and its label topic's frames, by header stamp) into the folder layout."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    with BagReader(bag_path) as bag:
        info = json.loads(bag.custom_data.get("dcfm_ros.make_bag", "{}") or "{}")
        label_topic = info.get("label_topic")
        cam = _camera_topic(bag, topic, label_topic)
        seq = sequence or bag.path.name
        img_dir, lbl_dir = root / split / "images" / seq, root / split / "labels" / seq
        if img_dir.is_dir() and any(img_dir.iterdir()) and not overwrite:
            raise SourceError(f"{img_dir} exists and is not empty (use --overwrite, or another --sequence)")
        img_dir.mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        labels: dict[int, np.ndarray] = {}
        if label_topic and label_topic in bag.topics:
            labels = {f.stamp_ns: f.image for f in bag.frames(label_topic, "labels") if isinstance(f, Frame)}
        n = labeled = skipped = 0
        for i, item in enumerate(bag.frames(cam, "image")):
            if isinstance(item, BadMessage):
                skipped += 1
                print(f"dcfm-make-bag: skipped message {item.index} of {cam}: {item.reason}", file=sys.stderr)
                continue
            if i % every:
                continue
            if max_frames is not None and n >= max_frames:
                break
            name = f"{n:06d}.png"
            _write_png(img_dir / name, cv2.cvtColor(item.image, cv2.COLOR_RGB2BGR))
            lab = labels.get(item.stamp_ns)
            if lab is not None:
                lbl_dir.mkdir(parents=True, exist_ok=True)
                _write_png(lbl_dir / name, lab)
                labeled += 1
            n += 1
    if n == 0:
        raise SourceError(f"no decodable frame on {cam} in {bag_path}")
    classes_written = False
    names = info.get("class_names")
    if names and not (root / "classes.yaml").exists():
        import yaml

        # make-bag's label topics hold train ids with 255 = void: the folder layout's own convention.
        text = yaml.safe_dump({"names": list(names), "ignore_index": 255, "labels": "index"}, sort_keys=False)
        tmp = root / ".classes.yaml.tmp"
        note = f"# from {bag_path} ({info.get('type', 'bag')}); add a palette: [[R, G, B], ...]\n"
        tmp.write_text(note + text)
        tmp.replace(root / "classes.yaml")
        classes_written = True
    return ExtractSummary(img_dir, n, labeled, skipped, classes_written)
