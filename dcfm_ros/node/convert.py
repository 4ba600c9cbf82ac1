"""ROS messages <-> numpy: camera images in, label/colour/mask images and info/classes messages out.

In: `image_to_rgb` (sensor_msgs/Image) and `compressed_to_rgb` (sensor_msgs/CompressedImage) return
an (H, W, 3) uint8 RGB array or raise BadInputError saying what is wrong with the message (its
`reason` is a short fixed key, so the node can throttle its logs per reason).
- Images smaller than MIN_SIDE on a side or more elongated than MAX_ASPECT are refused: the network
  resizes every frame to its input size, so a 1x1 or 3x5001 image would be stretched into labels
  that mean nothing.
- Bayer mosaics (bayer_rggb8/bggr8/gbrg8/grbg8) are demosaiced with OpenCV (bilinear).
- The colour conversions are rosbags-image's `image_to_cvimage` (OpenCV codes per encoding). It
  ignores `step` (it reads rows as if unpadded) and does not check sizes, so both are done here by
  hand first: the message is validated and a padded image is compacted before it is handed over.
- Compressed images are decoded here with OpenCV directly: rosbags' `compressed_image_to_cvimage`
  asserts on corrupt data and returns a 2-D array for grey JPEGs, which its own colour conversion
  then rejects; IMREAD_COLOR_RGB gives 3-channel RGB for every input.

Out: `ImageBuffer` keeps one array.array per output topic and lends a numpy view of it, so an output
image is written once into memory that the message then carries (the setter keeps an array.array as
is); publish() serialises synchronously, so the same buffer is safe to reuse for the next frame.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

import cv2
import numpy as np
from rosbags.image import ImageError, image_to_cvimage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import ColorRGBA, Header

from dcfm_ros.msg import SegmentationClasses, SegmentationInfo

if TYPE_CHECKING:
    from dcfm_ros.engine import FrameResult

# encoding -> (channels, bytes per channel); what image_to_cvimage converts to rgb8 correctly (each
# one checked in test_convert). yuv422 = UYVY byte order (ROS image_encodings), yuyv = YUY2.
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1), "bgr8": (3, 1), "rgba8": (4, 1), "bgra8": (4, 1), "mono8": (1, 1),
    "rgb16": (3, 2), "bgr16": (3, 2), "rgba16": (4, 2), "bgra16": (4, 2), "mono16": (1, 2),
    "yuv422": (2, 1), "uyvy": (2, 1), "yuyv": (2, 1), "yuv422_yuy2": (2, 1),
}
_YUV = frozenset({"yuv422", "uyvy", "yuyv", "yuv422_yuy2"})
# ROS names the 2x2 tile from its top-left pixel; OpenCV names it from the second row's middle pair,
# so ROS rggb is OpenCV's BG (checked pixel by pixel in test_convert).
BAYER: dict[str, int] = {
    "bayer_rggb8": cv2.COLOR_BayerBG2RGB, "bayer_bggr8": cv2.COLOR_BayerRG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGR2RGB, "bayer_grbg8": cv2.COLOR_BayerGB2RGB,
}
ENCODINGS.update(dict.fromkeys(BAYER, (1, 1)))
# Smallest side and largest width:height (or height:width) ratio accepted.
MIN_SIDE = 8
MAX_ASPECT = 20.0
_LITTLE = sys.byteorder == "little"


class BadInputError(ValueError):
    """An input message that cannot be turned into an RGB frame; the message says what is wrong and
    `reason` names the kind of fault in a few fixed words (the key the node throttles its logs by)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_size(w: int, h: int, what: str) -> None:
    """Refuse images too small or too elongated to segment (see the module docstring)."""
    if min(w, h) < MIN_SIDE:
        raise BadInputError(f"image too small: {w}x{h} ({what}); at least {MIN_SIDE}x{MIN_SIDE} pixels "
                            f"are needed", "too small")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise BadInputError(f"image too elongated: {w}x{h} ({what}); the longer side may be at most "
                            f"{MAX_ASPECT:g} times the shorter", "aspect ratio")


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB. rgb8 without padding is a zero-copy view of msg.data."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise BadInputError(f"unsupported encoding {enc[:64]!r}; supported: {', '.join(ENCODINGS)}",
                            "unsupported encoding")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise BadInputError(f"zero-sized image ({w}x{h}, encoding {enc})", "zero size")
    check_size(w, h, enc)
    channels, depth = ENCODINGS[enc]
    row = w * channels * depth
    if enc in _YUV and w % 2:
        raise BadInputError(f"encoding {enc} needs an even width, got {w}", "odd width")
    if step < row:
        raise BadInputError(f"step {step} is smaller than width * bytes per pixel = {w} * "
                            f"{channels * depth} = {row} ({enc})", "step too small")
    size = len(msg.data)
    if size < step * h:
        raise BadInputError(f"data has {size} bytes, fewer than step * height = {step} * {h} = "
                            f"{step * h} ({w}x{h} {enc})", "data too short")
    data = np.frombuffer(msg.data, dtype=np.uint8, count=step * h)
    if step != row:
        # Row padding: keep each row's pixels only (the one copy a padded image costs).
        data = np.ascontiguousarray(data.reshape(h, step)[:, :row])
    if enc in BAYER:
        return cv2.cvtColor(data.reshape(h, w), BAYER[enc])
    # Only multi-byte encodings have a byte order; passing it for 8-bit ones would make rosbags
    # byte-swap (= copy) the image for nothing.
    big = bool(msg.is_bigendian) if depth > 1 else not _LITTLE
    view = SimpleNamespace(encoding=enc, height=h, width=w, step=row, is_bigendian=big, data=data)
    try:
        rgb = image_to_cvimage(view, "rgb8")
    except (ImageError, cv2.error, ValueError, TypeError) as exc:
        raise BadInputError(f"cannot convert {w}x{h} {enc} to rgb8: {exc}", "conversion failed") from exc
    return rgb


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png, as image_transport's compressed plugin writes) -> RGB."""
    fmt = msg.format[:64]
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise BadInputError(f"format {fmt!r} is a compressed depth image, not a camera image",
                            "compressed depth")
    if len(msg.data) == 0:
        raise BadInputError(f"empty compressed image (format {fmt!r})", "empty compressed")
    try:
        rgb = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
    except cv2.error as exc:
        rgb = None
        detail = f": {exc}"
    else:
        detail = ""
    if rgb is None or rgb.size == 0:
        raise BadInputError(f"cannot decode {len(msg.data)} bytes of compressed image (format {fmt!r}): "
                            f"corrupt or not jpeg/png{detail}", "cannot decode")
    check_size(int(rgb.shape[1]), int(rgb.shape[0]), f"decoded from {fmt!r}")
    return rgb


class ImageBuffer:
    """Reusable storage for one output topic's image (see the module docstring)."""

    def __init__(self) -> None:
        self._data = array.array("B")
        self._view: np.ndarray | None = None

    def view(self, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
        """A writable array of `shape`/`dtype` backed by the buffer (reallocated when the size changes)."""
        dt = np.dtype(dtype)
        if self._view is None or self._view.shape != shape or self._view.dtype != dt:
            nbytes = int(np.prod(shape)) * dt.itemsize
            if len(self._data) != nbytes:
                self._view = None  # drop the export before replacing the array
                self._data = array.array("B", bytes(nbytes))
            self._view = np.frombuffer(self._data, dtype=dt).reshape(shape)
        return self._view

    def message(self, header: Header, encoding: str) -> Image:
        """An Image of the current view (call after writing into `view`)."""
        v = self._view
        assert v is not None, "ImageBuffer.message() before view()"
        h, w = v.shape[:2]
        msg = Image(header=header, height=h, width=w, encoding=encoding,
                    is_bigendian=int(v.dtype.itemsize > 1 and not _LITTLE),
                    step=w * (v.shape[2] if v.ndim == 3 else 1) * v.dtype.itemsize)
        msg.data = self._data
        return msg


def labels_to_msg(labels: np.ndarray, header: Header, buf: ImageBuffer) -> Image:
    """(H, W) uint8 -> mono8, uint16 -> mono16 (more than 255 classes)."""
    if labels.dtype == np.uint8:
        encoding = "mono8"
    elif labels.dtype == np.uint16:
        encoding = "mono16"
    else:
        raise ValueError(f"labels must be uint8 or uint16, got {labels.dtype}")
    np.copyto(buf.view(labels.shape, labels.dtype), labels)
    return buf.message(header, encoding)


def rgb_to_msg(rgb: np.ndarray, header: Header, buf: ImageBuffer) -> Image:
    """(H, W, 3) uint8 RGB -> rgb8."""
    np.copyto(buf.view(rgb.shape, np.uint8), rgb)
    return buf.message(header, "rgb8")


def mask_to_msg(labels: np.ndarray, class_id: int, header: Header, buf: ImageBuffer) -> Image:
    """mono8, 255 where labels == class_id, else 0 (written straight into the buffer)."""
    out = buf.view(labels.shape, np.uint8)
    np.equal(labels, class_id, out=out.view(np.bool_))  # 0/1 bytes
    out *= 255
    return buf.message(header, "mono8")


def classes_msg(names: Sequence[str], palette: Sequence[Sequence[int]],
                header: Header) -> SegmentationClasses:
    """The model's class map: ids 0..N-1, names, colours as RGBA 0..1."""
    msg = SegmentationClasses(header=header)
    msg.ids = list(range(len(names)))
    msg.names = list(names)
    msg.colors = [ColorRGBA(r=c[0] / 255.0, g=c[1] / 255.0, b=c[2] / 255.0, a=1.0) for c in palette]
    return msg


def confidence_to_msg(map_u8: np.ndarray, shape: tuple[int, int], header: Header,
                      buf: ImageBuffer) -> Image:
    """mono8 per-pixel confidence (top softmax probability * 255) at the camera's (H, W), bilinear."""
    out = buf.view(shape, np.uint8)
    cv2.resize(map_u8, (shape[1], shape[0]), dst=out, interpolation=cv2.INTER_LINEAR)
    return buf.message(header, "mono8")


def info_msg(header: Header, result: FrameResult, end_to_end_ms: float, received: int, processed: int,
             dropped: int, bad_inputs: int, engine_errors: int = 0) -> SegmentationInfo:
    """Per-frame facts of one engine result (timings from FrameResult.timings_ms)."""
    t = result.timings_ms
    confidence = result.confidence.mean if result.confidence is not None else float("nan")
    return SegmentationInfo(
        header=header,
        is_keyframe=bool(result.is_keyframe),
        frames_since_keyframe=int(result.frames_since_key),
        motion_score=float(result.motion_score),
        engine_latency_ms=float(t.get("total", 0.0)),
        enc_lo_ms=float(t.get("enc_lo", 0.0)),
        enc_hi_ms=float(t.get("enc_hi", 0.0)),
        ffm_ms=float(t.get("ffm", 0.0)),
        head_ms=float(t.get("head", 0.0)),
        end_to_end_latency_ms=float(end_to_end_ms),
        frames_received=received,
        frames_processed=processed,
        frames_dropped=dropped,
        bad_inputs=bad_inputs,
        confidence=float(confidence),
        engine_errors=engine_errors,
        common_age=int(result.common_age),
        deep_pass_in_flight=bool(result.deep_pass_in_flight),
    )
