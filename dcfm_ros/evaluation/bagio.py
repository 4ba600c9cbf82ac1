"""Small typed helpers to read and write rosbag2 bags (sqlite3 or mcap) with `rosbags`; no ROS install.

What lives here (used by dcfm-make-bag, dcfm-bag-eval and their tests):
- `typestore()`: the ROS 2 type store (the newest ROS 2 distro `rosbags` knows, kilted here) with
  this package's interfaces (dcfm_ros/msg/SegmentationInfo, SegmentationClasses) registered, so
  bytes written here have the same RIHS01 type hashes as rclpy's.
- `resolve_bag(path)`: a rosbag2 directory (or a .mcap/.db3 file inside one) -> the directory, with a
  clear `BagError` otherwise.
- `BagReader`: topics with types and counts, raw messages in log-time order, and decoded camera /
  label frames where a message that cannot be decoded becomes a `BadMessage` (counted and reported
  by the caller), never an exception in the middle of a run and never a silently wrong frame.
- `BagWriter`: add topics by type name, write message objects or raw CDR bytes.
- Message builders (`image_msg`, `compressed_image_msg`, `label_msg`) and decoders (`decode_image`,
  `decode_labels`) that honour `step` (row padding) and check sizes.

Time: `stamp_ns` is a message's header stamp in nanoseconds, `log_ns` the bag's record time.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import cv2
import numpy as np
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
SEGMENTATION_INFO = "dcfm_ros/msg/SegmentationInfo"
SEGMENTATION_CLASSES = "dcfm_ros/msg/SegmentationClasses"
IMAGE_TYPES = (IMAGE, COMPRESSED_IMAGE)

STORAGES = ("mcap", "sqlite3")
# Raw encodings accepted for camera images: name -> (channels, OpenCV conversion to RGB or None).
_COLOR_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, cv2.COLOR_BGR2RGB),  # OpenCV's convention for untyped 3-channel data
}
SINGLE_CHANNEL = frozenset({"mono8", "mono16", "8UC1", "16UC1", "32FC1"})
# Raw encodings accepted for label images: name -> numpy dtype.
_LABEL_ENCODINGS: dict[str, type[np.unsignedinteger[Any]]] = {
    "mono8": np.uint8,
    "8UC1": np.uint8,
    "mono16": np.uint16,
    "16UC1": np.uint16,
}


class BagError(Exception):
    """A bag cannot be used as asked (missing, unreadable, wrong topic or type)."""


class DecodeError(ValueError):
    """One message's payload is not a usable image (its reason ends up in a `BadMessage`)."""


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag."""

    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class RawMessage:
    """One undecoded message: CDR bytes as stored."""

    topic: str
    msgtype: str
    log_ns: int
    data: bytes
    index: int  # position of the message within its topic, 0-based


@dataclass(frozen=True)
class Frame:
    """One decoded image (camera: (H, W, 3) uint8 RGB; labels: (H, W) uint8/uint16)."""

    topic: str
    index: int
    stamp_ns: int
    log_ns: int
    image: np.ndarray
    camera: tuple[int, int] | None = None  # the camera's (H, W) when `image` is a reduced JPEG decode

    @property
    def camera_size(self) -> tuple[int, int]:
        """The camera's (H, W): the header's for a reduced decode, else the image's own."""
        return self.camera or (int(self.image.shape[0]), int(self.image.shape[1]))


@dataclass(frozen=True)
class BadMessage:
    """A message that could not be used; callers count and list these, they never guess a value."""

    topic: str
    index: int
    log_ns: int
    reason: str
    stamp_ns: int | None = None  # when the header could still be read

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "index": self.index, "log_ns": self.log_ns,
                "stamp_ns": self.stamp_ns, "reason": self.reason}


# ---------------------------------------------------------------------------------------------------------
# Type store


def _ros2_store() -> Stores:
    # The newest ROS 2 distro this rosbags knows; kilted is what the pip rclpy wheels are built from.
    preferred = ("ROS2_KILTED", "ROS2_JAZZY", "ROS2_IRON", "ROS2_HUMBLE")
    for name in preferred:
        if name in Stores.__members__:
            return Stores[name]
    raise BagError(f"rosbags has none of the ROS 2 type stores {preferred}")


def _interface_dirs() -> list[Path]:
    # Installed share dir first (what rclpy was generated from), then the source tree's msg/.
    dirs = []
    prefixes = [*os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep),
                os.environ.get("VIRTUAL_ENV", ""), sys.prefix]
    for prefix in prefixes:
        if prefix:
            dirs.append(Path(prefix) / "share" / "dcfm_ros" / "msg")
    dirs.append(Path(__file__).resolve().parents[2] / "msg")
    return dirs


@functools.cache
def typestore() -> Typestore:
    """ROS 2 type store with dcfm_ros interfaces registered (cached; treat as read-only)."""
    store = get_typestore(_ros2_store())
    types: dict[str, Any] = {}
    for name in ("SegmentationInfo", "SegmentationClasses"):
        for folder in _interface_dirs():
            path = folder / f"{name}.msg"
            if path.is_file():
                types.update(get_types_from_msg(path.read_text(), f"dcfm_ros/msg/{name}"))
                break
    store.register(types)
    return store


def type_hash(msgtype: str) -> str:
    """RIHS01 hash of a type as rosbags computes it (rclpy reports the same string for the same .msg)."""
    return typestore().hash_rihs01(msgtype)


# ---------------------------------------------------------------------------------------------------------
# Stamps


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rosbags or rclpy object) -> int nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def cdr_header_stamp(data: bytes | memoryview) -> int:
    """Header stamp (ns) of a serialised message whose first field is std_msgs/Header, read straight
    from the CDR bytes (no full deserialisation). Raises DecodeError for a payload too short or with
    an unknown encapsulation."""
    if len(data) < 12:
        raise DecodeError(f"CDR payload of {len(data)} bytes is too short for a header stamp")
    kind = bytes(data[:2])
    if kind == b"\x00\x01":  # CDR little endian
        sec, nanosec = struct.unpack_from("<iI", data, 4)
    elif kind == b"\x00\x00":  # CDR big endian
        sec, nanosec = struct.unpack_from(">iI", data, 4)
    else:
        raise DecodeError(f"unknown CDR encapsulation {kind.hex()}")
    return int(sec) * 1_000_000_000 + int(nanosec)


def ns_to_stamp(ns: int) -> Any:
    """int nanoseconds -> rosbags builtin_interfaces/msg/Time."""
    if ns < 0:
        raise ValueError(f"negative stamp {ns} ns")
    time_cls = typestore().types["builtin_interfaces/msg/Time"]
    return time_cls(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(ns: int, frame_id: str) -> Any:
    return typestore().types["std_msgs/msg/Header"](stamp=ns_to_stamp(ns), frame_id=frame_id)


# ---------------------------------------------------------------------------------------------------------
# Message builders and decoders


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8."""
    rgb = np.ascontiguousarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    h, w = rgb.shape[:2]
    return typestore().types[IMAGE](header=header(stamp_ns, frame_id), height=h, width=w, encoding="rgb8",
                                   is_bigendian=0, step=w * 3, data=rgb.reshape(-1))


def compressed_image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, quality: int = 85) -> Any:
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage, JPEG at `quality` (format "rgb8; jpeg
    compressed bgr8", as image_transport's compressed plugin writes it)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8 RGB, got {rgb.shape} {rgb.dtype}")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV failed to JPEG-encode the frame")
    return typestore().types[COMPRESSED_IMAGE](header=header(stamp_ns, frame_id),
                                              format="rgb8; jpeg compressed bgr8", data=buf.reshape(-1))


def label_msg(labels: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """(H, W) uint8 label image -> sensor_msgs/Image mono8 (uint16 -> mono16)."""
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 2 or labels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected (H, W) uint8/uint16 labels, got {labels.shape} {labels.dtype}")
    h, w = labels.shape
    encoding = "mono8" if labels.dtype == np.uint8 else "mono16"
    data = labels.astype(labels.dtype.newbyteorder("<"), copy=False).view(np.uint8).reshape(-1)
    return typestore().types[IMAGE](header=header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                                   is_bigendian=0, step=w * labels.itemsize, data=data)


def _raw_rows(msg: Any, channels: int, itemsize: int) -> np.ndarray:
    """Image payload as (H, W*channels*itemsize) bytes, honouring `step`; DecodeError when inconsistent."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8)
    row = w * channels * itemsize
    if h == 0 or w == 0:
        raise DecodeError(f"empty image ({w}x{h})")
    if step < row:
        raise DecodeError(f"step {step} is smaller than width*channels*bytes = {row} "
                          f"({msg.encoding} {w}x{h})")
    if data.size < step * (h - 1) + row:
        raise DecodeError(f"data has {data.size} bytes, {msg.encoding} {w}x{h} with step {step} needs "
                          f"{step * (h - 1) + row}")
    if data.size > step * h:
        raise DecodeError(f"data has {data.size} bytes, more than step*height = {step * h}")
    if step * h > data.size:  # last row not padded: pad a copy so that reshape works
        data = np.concatenate([data, np.zeros(step * h - data.size, np.uint8)])
    return data.reshape(h, step)[:, :row]


def decode_image(msg: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB. Raises DecodeError."""
    if hasattr(msg, "format"):  # CompressedImage
        data = np.asarray(msg.data, dtype=np.uint8)
        if data.size == 0:
            raise DecodeError("compressed image has no data")
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
        if bgr is None:
            raise DecodeError(f"compressed data ({data.size} bytes, format {msg.format!r}) does not decode "
                              "as an image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    enc = str(msg.encoding)
    if enc not in _COLOR_ENCODINGS:
        raise DecodeError(f"unsupported image encoding {enc!r}; supported: {', '.join(_COLOR_ENCODINGS)}")
    channels, conversion = _COLOR_ENCODINGS[enc]
    rows = _raw_rows(msg, channels, 1)
    img = rows.reshape(int(msg.height), int(msg.width), channels) if channels > 1 else rows
    if conversion is not None:
        return cv2.cvtColor(np.ascontiguousarray(img), conversion)
    return img.copy()  # writable and independent of the message buffer


def decode_labels(msg: Any) -> np.ndarray:
    """Label image (Image mono8/mono16 or PNG CompressedImage) -> (H, W) uint8/uint16; DecodeError."""
    if hasattr(msg, "format"):
        data = np.asarray(msg.data, dtype=np.uint8)
        labels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if labels is None or labels.ndim != 2:
            raise DecodeError(f"compressed label data (format {msg.format!r}) is not a single-channel image")
        return labels
    enc = str(msg.encoding)
    if enc not in _LABEL_ENCODINGS:
        raise DecodeError(f"unsupported label encoding {enc!r}; supported: {', '.join(_LABEL_ENCODINGS)}")
    dtype = np.dtype(_LABEL_ENCODINGS[enc])
    rows = _raw_rows(msg, 1, dtype.itemsize)
    order = ">" if msg.is_bigendian else "<"
    h, w = int(msg.height), int(msg.width)
    labels = np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).reshape(h, w)
    return labels.astype(dtype)  # a copy: writable, native byte order


# ---------------------------------------------------------------------------------------------------------
# Reading


def resolve_bag(path: str | Path) -> Path:
    """What to open for `path`: a rosbag2 directory (holding metadata.yaml), a storage file inside one
    (-> its directory, so that split bags are read whole), or a bare .mcap/.db3 file."""
    p = Path(path)
    if not p.exists():
        raise BagError(f"bag not found: {p}")
    if p.is_file():
        if (p.parent / "metadata.yaml").is_file():
            return p.parent
        if p.suffix in (".mcap", ".db3"):
            return p
        raise BagError(f"{p} is not a bag: expected a rosbag2 directory or a .mcap/.db3 file")
    if not (p / "metadata.yaml").is_file():
        raise BagError(f"{p} is not a rosbag2 directory (no metadata.yaml in it)")
    return p


def format_topics(topics: Iterable[TopicInfo]) -> str:
    lines = [f"  {t.name} [{t.msgtype}] {t.count} msgs" for t in sorted(topics, key=lambda t: t.name)]
    return "\n".join(lines) if lines else "  (no topics)"


class BagReader:
    """Read one rosbag2 bag. Use as a context manager.

    >>> with BagReader("demo/camvid_val_0016E5") as bag:
    ...     for item in bag.frames("/camera/image/compressed"): ...
    """

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_bag(path)
        self._reader = Reader(self.path)
        self._open = False

    def __enter__(self) -> BagReader:
        try:
            self._reader.open()
        except ReaderError as exc:
            raise BagError(f"cannot open bag {self.path}: {exc}") from exc
        except Exception as exc:  # sqlite/mcap errors for a corrupt file
            raise BagError(f"cannot open bag {self.path}: {type(exc).__name__}: {exc}") from exc
        self._open = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._reader.close()
        self._open = False

    @property
    def topics(self) -> dict[str, TopicInfo]:
        out: dict[str, TopicInfo] = {}
        for conn in self._reader.connections:
            prev = out.get(conn.topic)
            count = conn.msgcount + (prev.count if prev else 0)
            out[conn.topic] = TopicInfo(conn.topic, conn.msgtype, count)
        return out

    @property
    def start_ns(self) -> int:
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        return int(self._reader.end_time)

    @property
    def custom_data(self) -> dict[str, str]:
        """rosbag2 metadata custom_data (empty for bare storage files)."""
        meta = getattr(self._reader.storage, "metadata", None)
        return dict(getattr(meta, "custom", None) or {})

    def require_topic(self, topic: str, msgtypes: Iterable[str], what: str) -> TopicInfo:
        """The topic's info, or BagError naming the topics that exist."""
        msgtypes = tuple(msgtypes)
        info = self.topics.get(topic)
        if info is None:
            raise BagError(f"{what} topic {topic!r} is not in bag {self.path}; its topics are:\n"
                           f"{format_topics(self.topics.values())}")
        if info.msgtype not in msgtypes:
            raise BagError(f"{what} topic {topic!r} in bag {self.path} has type {info.msgtype}, expected "
                           f"{' or '.join(msgtypes)}")
        return info

    def image_topics(self) -> list[TopicInfo]:
        return [t for t in self.topics.values() if t.msgtype in IMAGE_TYPES]

    def raw(self, topics: Iterable[str], start_ns: int | None = None) -> Iterator[RawMessage]:
        """Messages of `topics` in log-time order, undecoded; from record time `start_ns` on if given
        (`index` still counts from the topic's first message)."""
        wanted = set(topics)
        conns = [c for c in self._reader.connections if c.topic in wanted]
        counters: dict[str, int] = dict.fromkeys(wanted, 0)
        if not conns:
            return
        try:
            for conn, log_ns, data in self._reader.messages(connections=conns):
                index = counters[conn.topic]
                counters[conn.topic] += 1
                if start_ns is not None and log_ns < start_ns:
                    continue
                yield RawMessage(conn.topic, conn.msgtype, int(log_ns), bytes(data), index)
        except ReaderError as exc:
            raise BagError(f"bag {self.path} is damaged: {exc}") from exc
        except Exception as exc:  # zstd, struct, sqlite errors from a damaged storage file
            raise BagError(f"bag {self.path} is damaged: {type(exc).__name__}: {exc}") from exc

    def frames(self, topic: str, kind: Literal["image", "labels"] = "image",
               start_ns: int | None = None, reduce_to: tuple[int, int] | None = None
               ) -> Iterator[Frame | BadMessage]:
        """Decoded frames of one topic, in log-time order (from record time `start_ns` on if given);
        undecodable messages come as BadMessage. reduce_to: a network input size: JPEG camera frames of
        at least twice that are decoded reduced, as the node does (engine/jpeg.py; Frame.camera).

        A repeated header stamp on the topic is a BadMessage too (frames are matched by stamp, so a
        duplicate would make matching ambiguous).
        """
        info = self.require_topic(topic, IMAGE_TYPES, "camera" if kind == "image" else "label")
        seen: set[int] = set()
        for raw in self.raw([topic], start_ns=start_ns):
            item = decode_raw(raw, kind, reduce_to)
            if isinstance(item, Frame):
                if item.stamp_ns in seen:
                    reason = f"duplicate header stamp {item.stamp_ns} ns on {info.name}"
                    item = BadMessage(raw.topic, raw.index, raw.log_ns, reason, item.stamp_ns)
                else:
                    seen.add(item.stamp_ns)
            yield item


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    """CDR bytes -> rosbags message object; DecodeError for bytes that do not parse."""
    try:
        return typestore().deserialize_cdr(data, msgtype)
    except Exception as exc:  # struct.error, IndexError, ValueError, ... from a truncated payload
        raise DecodeError(f"CDR payload ({len(data)} bytes) does not deserialize as {msgtype}: "
                          f"{type(exc).__name__}: {exc}") from exc


def decode_raw(raw: RawMessage, kind: Literal["image", "labels"],
               reduce_to: tuple[int, int] | None = None) -> Frame | BadMessage:
    """One raw Image/CompressedImage -> Frame, or BadMessage with the reason."""
    stamp_ns: int | None = None
    try:
        msg = deserialize(raw.data, raw.msgtype)
        stamp_ns = stamp_to_ns(msg.header.stamp)
        if kind == "image" and reduce_to is not None and hasattr(msg, "format"):
            from dcfm_ros.engine.jpeg import decode_reduced

            found = decode_reduced(np.asarray(msg.data, dtype=np.uint8), reduce_to)
            if found is not None:
                return Frame(raw.topic, raw.index, stamp_ns, raw.log_ns, found[0], found[1])
        image = decode_image(msg) if kind == "image" else decode_labels(msg)
    except DecodeError as exc:
        return BadMessage(raw.topic, raw.index, raw.log_ns, str(exc), stamp_ns)
    return Frame(raw.topic, raw.index, stamp_ns, raw.log_ns, image)


def check_image(raw: RawMessage) -> Frame | BadMessage:
    """What a player needs before it sends a camera message on: its stamp, and that it decodes.
    A JPEG is decoded at 1/8 scale (libjpeg still reads every coefficient, so a broken one fails as in
    a full decode, at a third of the cost; at 1920x1080 ~2.5 ms instead of ~7.5); the Frame's image
    is then that small one, not the camera's."""
    return decode_raw(raw, "image", reduce_to=(1, 1))


# ---------------------------------------------------------------------------------------------------------
# Writing


class BagWriter:
    """Write a new rosbag2 bag (mcap with zstd chunks by default, or sqlite3). Use as a context manager."""

    def __init__(self, path: str | Path, storage: str = "mcap", compress: bool = True) -> None:
        if storage not in STORAGES:
            raise BagError(f"storage must be one of {STORAGES}, got {storage!r}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {self.path} exists already; remove it or choose another path")
        if not self.path.parent.is_dir():
            raise BagError(f"directory {self.path.parent} for output bag {self.path.name} does not exist")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if compress and storage == "mcap":
            # mcap chunk compression: metadata.yaml stays plain, so `ros2 bag` reads it natively.
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._conns: dict[str, Any] = {}
        self._types: dict[str, str] = {}

    def __enter__(self) -> BagWriter:
        try:
            self._writer.open()
        except WriterError as exc:
            raise BagError(str(exc)) from exc
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self._writer.close()
            return
        # A half-written bag is worse than none: drop what this writer created (the path did not exist).
        self._writer.abort()
        shutil.rmtree(self.path, ignore_errors=True)

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, value)

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic in self._conns:
            if self._types[topic] != msgtype:
                raise BagError(f"topic {topic} already added with type {self._types[topic]}, not {msgtype}")
            return
        self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=typestore())
        self._types[topic] = msgtype

    def write(self, topic: str, log_ns: int, msg: Any) -> None:
        """Write a rosbags message object (serialised here) or raw CDR bytes to an added topic."""
        if topic not in self._conns:
            raise BagError(f"topic {topic} was not added to {self.path}")
        data = msg if isinstance(msg, (bytes, bytearray, memoryview)) else \
            typestore().serialize_cdr(msg, self._types[topic])
        self._writer.write(self._conns[topic], int(log_ns), bytes(data))


def natural_key(name: str) -> list[Any]:
    """Sort key that orders frame2 before frame10."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]
