"""Compressed camera images decoded at a reduced scale when the network needs fewer pixels.

A 1920x1080 JPEG costs ~5.6 ms to decode on this project's CPU, and the network then resizes it to
its 480x360 input in the graph. libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain
(OpenCV's IMREAD_REDUCED_*), which is cheaper and hands the graph a quarter of the pixels to resize.
The scale picked is the smallest image that still has the network's input size on both sides, so the
network sees as many pixels as before its own resize; the labels are still made for the camera's size
(the engine's `camera` argument). The camera's size comes from the JPEG header (Pillow reads only
that). Outputs that need the camera's own pixels (the overlay) decode the full image on the viewer
thread, off the frame's path (`CameraImage.full`). PNG and other formats are decoded in full.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage

from dcfm_ros.engine.specs import JPEG_SCALES, jpeg_scale, reduced_size
from dcfm_ros.node import convert

# flag per scale = reduced grey + colour RGB (OpenCV refuses IMREAD_REDUCED_COLOR_n | IMREAD_COLOR_RGB:
# REDUCED_COLOR_n already carries the BGR bit)
_FLAGS = {s: getattr(cv2, f"IMREAD_REDUCED_GRAYSCALE_{s}") | cv2.IMREAD_COLOR_RGB for s in JPEG_SCALES}


@dataclass(frozen=True)
class CameraImage:
    """One camera frame as the node uses it."""

    rgb: np.ndarray  # (h, w, 3) uint8 RGB: what the engine is given (the camera's size, or reduced)
    camera: tuple[int, int]  # the camera's (H, W): the size of the labels and the viewer images
    full: Callable[[], np.ndarray]  # the camera-size image (rgb itself, or decoded again on demand)

    @property
    def reduced(self) -> bool:
        return self.rgb.shape[:2] != self.camera


def whole(rgb: np.ndarray) -> CameraImage:
    """A frame decoded (or converted) at the camera's size."""
    return CameraImage(rgb, (int(rgb.shape[0]), int(rgb.shape[1])), lambda: rgb)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(H, W) from a JPEG's header, None for anything else (Pillow parses the header, nothing more)."""
    if data[:2] != b"\xff\xd8":
        return None
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            w, h = img.size
            return (h, w) if img.format == "JPEG" else None
    except (OSError, ValueError, SyntaxError):
        return None  # let the full decode say what is wrong with it


def decode(msg: CompressedImage, network: tuple[int, int] | None) -> CameraImage:
    """CompressedImage -> CameraImage: reduced when it is a JPEG of at least twice `network`'s size
    on both sides (None: always in full); BadInputError as convert.compressed_to_rgb otherwise."""
    data = bytes(msg.data)
    size = jpeg_size(data) if network is not None else None
    scale = jpeg_scale(size, network) if size is not None else 1  # type: ignore[arg-type]
    if scale == 1:
        return whole(convert.compressed_to_rgb(msg))
    convert.check_size(size[1], size[0], f"jpeg header of {msg.format[:64]!r}")  # type: ignore[index]
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS[scale])
    if rgb is None or rgb.shape[:2] != reduced_size(size, network):  # type: ignore[arg-type]  # a header that lies about the data: decode it in full
        return whole(convert.compressed_to_rgb(msg))
    full = functools.cache(lambda: convert.compressed_to_rgb(msg))
    return CameraImage(rgb, size, full)  # type: ignore[arg-type]
