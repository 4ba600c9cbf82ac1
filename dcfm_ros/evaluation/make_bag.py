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
identical.

Several cameras in one bag: `--camera NAME` starts a camera; the source and the camera options after
it (--rate, --labels, --split, --sequence, --max-frames, --start-frame, --resize, --compressed,
--jpeg-quality, --image-topic, --label-topic, --frame-id) are that camera's, those before the first
--camera are every camera's defaults (a source there, e.g. --camvid ROOT, serves every camera that
names none of its own). A camera's topics are /NAME/image (/NAME/image/compressed) and
/NAME/labels, frame_id NAME; every camera starts at --start-time and runs at its own rate; the
messages of all cameras are written in one log-time order. The bag's custom data lists the cameras.
mcap bags use zstd chunk compression (plain rosbag2 metadata; `ros2 bag` reads them).

Example (the demo clip in demo/):
  dcfm-make-bag demo/camvid_val_0016E5 --camvid ../shared/data/camvid --split val --sequence 0016E5 \
      --compressed --jpeg-quality 85
  dcfm-make-bag --extract demo/camvid_val_0016E5 my_dataset --split train --sequence drive1
  dcfm-make-bag out/three_cams --compressed --camvid ../shared/data/camvid --split val \\
      --camera front --sequence 0016E5 --camera left --sequence 0016E5 --start-frame 50 --rate 10 \\
      --camera right --video drive.mp4 --resize 480x360
"""

from __future__ import annotations

import heapq
import json
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
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
    camera: str | None = None


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
    if frame.labels is not None:  # nearest (pixel-centre aligned): label ids must never be blended
        labels = cv2.resize(frame.labels, size, interpolation=cv2.INTER_NEAREST_EXACT)
    return SourceFrame(frame.name, rgb, labels)


@dataclass
class CameraSource:
    """One camera of a bag: its frames, its rate and topics (a multi-camera bag has one per camera)."""

    frames: Iterator[SourceFrame]
    rate: float
    image_topic: str = "/camera/image"
    label_topic: str = "/camera/labels"
    frame_id: str = "camera"
    compressed: bool = False
    jpeg_quality: int = 85
    max_frames: int | None = None
    skip_frames: int = 0
    resize: tuple[int, int] | None = None
    source: dict[str, object] | None = None
    name: str | None = None  # the camera's name in a multi-camera bag (its custom data)

    @property
    def camera_topic(self) -> str:
        return self.image_topic.rstrip("/") + "/compressed" if self.compressed else self.image_topic

    def check(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number of Hz, got {self.rate}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")


@dataclass
class _Tally:
    frames: int = 0
    labeled: int = 0


def _camera_messages(cam: CameraSource, index: int, start_ns: int,
                     tally: _Tally) -> Iterator[tuple[int, int, str, object]]:
    """(stamp, camera index, topic, message) of one camera in stamp order; counts into `tally`."""
    shape: tuple[int, ...] | None = None
    n = 0
    for i, frame in enumerate(cam.frames):
        if i < cam.skip_frames:
            continue
        if cam.max_frames is not None and n >= cam.max_frames:
            break
        frame = _resize(frame, cam.resize)
        if frame.labels is not None and frame.labels.shape != frame.rgb.shape[:2]:
            raise SourceError(f"frame {frame.name}: label size {frame.labels.shape[::-1]} differs from "
                              f"image size {frame.rgb.shape[1::-1]}")
        if shape is not None and frame.rgb.shape != shape:
            # allowed in ROS, but a bag made from one sequence should not change size silently
            print(f"dcfm-make-bag: note: frame {frame.name} is {frame.rgb.shape[1::-1]}, earlier frames "
                  f"{shape[1::-1]}", file=sys.stderr)
        shape = frame.rgb.shape
        stamp = start_ns + round(n * 1e9 / cam.rate)
        msg = (compressed_image_msg(frame.rgb, stamp, cam.frame_id, cam.jpeg_quality) if cam.compressed
               else image_msg(frame.rgb, stamp, cam.frame_id))
        n += 1
        tally.frames = n
        yield stamp, index, cam.camera_topic, msg
        if frame.labels is not None:
            tally.labeled += 1
            yield stamp, index, cam.label_topic, label_msg(frame.labels, stamp, cam.frame_id)


def _camera_info(cam: CameraSource, tally: _Tally) -> dict[str, object]:
    return dict(cam.source or {}, rate_hz=cam.rate, frames=tally.frames, labeled=tally.labeled,
                compressed=cam.compressed, jpeg_quality=cam.jpeg_quality if cam.compressed else None,
                label_void=255, label_topic=cam.label_topic if tally.labeled else None)


def write_cameras(out: Path, cameras: Sequence[CameraSource], *, storage: str = "mcap",
                  start_ns: int = int(DEFAULT_START_S * 1e9)) -> list[BagSummary]:
    """Write every camera of `cameras` to a new bag at `out`, one image topic (and label topic) each,
    messages in stamp order across cameras; camera k's stamps are start_ns + i / rate_k. With one
    camera the bag is the single-camera bag of `write_bag`; with several its custom data lists them
    (`cameras`: one entry per camera, as a single-camera bag's). Returns one summary per camera."""
    if not cameras:
        raise ValueError("a bag needs at least one camera")
    if start_ns <= 0:
        raise ValueError("start time must be positive (time 0 means 'unset' to a ROS clock)")
    for cam in cameras:
        cam.check()
    used: dict[str, str] = {}
    for k, cam in enumerate(cameras):
        who = cam.name or f"camera {k + 1}"
        for topic in (cam.camera_topic, cam.label_topic):
            if topic in used and used[topic] != who:
                raise ValueError(f"topic {topic} is used by {used[topic]} and by {who}: give each camera "
                                 "its own --image-topic / --label-topic")
            used[topic] = who
    tallies = [_Tally() for _ in cameras]
    with BagWriter(out, storage=storage) as bag:
        declared: set[str] = set()
        for cam in cameras:  # camera topics first: a bag lists its cameras even before any label
            bag.add_topic(cam.camera_topic, COMPRESSED_IMAGE if cam.compressed else IMAGE)
            declared.add(cam.camera_topic)
        streams = [_camera_messages(cam, k, start_ns, tallies[k]) for k, cam in enumerate(cameras)]
        for stamp, _k, topic, msg in heapq.merge(*streams, key=lambda m: (m[0], m[1])):
            if topic not in declared:
                bag.add_topic(topic, IMAGE)
                declared.add(topic)
            bag.write(topic, stamp, msg)
        for cam, tally in zip(cameras, tallies, strict=True):
            if tally.frames == 0:
                who = f" of camera {cam.name}" if cam.name else ""
                raise SourceError(f"the source{who} gave no frame (after --start-frame)")
        if len(cameras) == 1:
            info: dict[str, object] = _camera_info(cameras[0], tallies[0])
        else:
            entries = [dict(_camera_info(c, t), name=c.name, image_topic=c.camera_topic)
                       for c, t in zip(cameras, tallies, strict=True)]
            info = {"cameras": entries, "label_void": 255,
                    "frames": sum(t.frames for t in tallies), "labeled": sum(t.labeled for t in tallies)}
        bag.set_custom_data("dcfm_ros.make_bag", json.dumps(info, sort_keys=True))
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    summaries = []
    for cam, tally in zip(cameras, tallies, strict=True):
        topics = {cam.camera_topic: COMPRESSED_IMAGE if cam.compressed else IMAGE}
        if tally.labeled:
            topics[cam.label_topic] = IMAGE
        summaries.append(BagSummary(out, tally.frames, tally.labeled, topics, cam.rate, start_ns, size,
                                    cam.name))
    return summaries


def write_bag(out: Path, frames: Iterator[SourceFrame], *, rate: float, compressed: bool = False,
              jpeg_quality: int = 85, storage: str = "mcap", image_topic: str = "/camera/image",
              label_topic: str = "/camera/labels", frame_id: str = "camera",
              start_ns: int = int(DEFAULT_START_S * 1e9), max_frames: int | None = None,
              skip_frames: int = 0, resize: tuple[int, int] | None = None,
              source: dict[str, object] | None = None) -> BagSummary:
    """Write `frames` to a new bag at `out`; stamps are start_ns + i / rate. Returns a summary."""
    cam = CameraSource(frames, rate, image_topic, label_topic, frame_id, compressed, jpeg_quality,
                       max_frames, skip_frames, resize, source)
    return write_cameras(out, [cam], storage=storage, start_ns=start_ns)[0]


def bag_cameras(custom_data: Mapping[str, str]) -> list[dict[str, object]]:
    """The cameras a dcfm-make-bag bag records (one entry each: image_topic, label_topic, rate_hz,
    class_names, ...); [] for a bag from elsewhere. A single-camera bag's entry has no image_topic."""
    try:
        info = json.loads(custom_data.get("dcfm_ros.make_bag", "") or "{}")
    except json.JSONDecodeError:
        return []
    if not isinstance(info, dict):
        return []
    if isinstance(info.get("cameras"), list):
        return [c for c in info["cameras"] if isinstance(c, dict)]
    return [info] if info else []


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


def _camera_topic(bag: BagReader, topic: str | None, label_topics: set[str]) -> str:
    if topic is not None:
        bag.require_topic(topic, (IMAGE, COMPRESSED_IMAGE), "camera")
        return topic
    cams = [t.name for t in bag.image_topics() if t.name not in label_topics]
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
        cameras = bag_cameras(bag.custom_data)
        label_topics = {str(c["label_topic"]) for c in cameras if c.get("label_topic")}
        cam = _camera_topic(bag, topic, label_topics)
        entry = next((c for c in cameras if c.get("image_topic", cam) == cam), {})
        label_topic = entry.get("label_topic")
        info = entry
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
