"""JPEG decoded at a reduced scale when the network needs fewer pixels than the camera sends.

libjpeg decodes at 1/2, 1/4 or 1/8 scale in the DCT domain (OpenCV's IMREAD_REDUCED_*), which costs
less than a full decode and hands the graph fewer pixels to resize. `decode_reduced` picks the
largest scale whose image still has the network's input size on both sides (specs.jpeg_scale), so
the network sees as many pixels as before its own resize; the camera's size, for the labels, comes
from the JPEG header (Pillow reads only that). ROS-free: the node (node/reduced_decode.py) and
dcfm-fleet-eval (evaluation/bagio.py) decode a camera's frames the same way, so their labels agree.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image as PILImage

from dcfm_ros.engine.specs import JPEG_SCALES, jpeg_scale, reduced_size

# flag per scale = reduced grey + colour RGB (OpenCV refuses IMREAD_REDUCED_COLOR_n | IMREAD_COLOR_RGB:
# REDUCED_COLOR_n already carries the BGR bit)
_FLAGS = {s: getattr(cv2, f"IMREAD_REDUCED_GRAYSCALE_{s}") | cv2.IMREAD_COLOR_RGB for s in JPEG_SCALES}


def jpeg_size(data: bytes | bytearray | memoryview | np.ndarray) -> tuple[int, int] | None:
    """(H, W) from a JPEG's header, None for anything else (Pillow parses the header, nothing more)."""
    view = memoryview(data).cast("B")
    if view[:2] != b"\xff\xd8":
        return None
    try:
        with PILImage.open(io.BytesIO(view)) as img:
            w, h = img.size
            return (h, w) if img.format == "JPEG" else None
    except (OSError, ValueError, SyntaxError):
        return None  # the full decode says what is wrong with it


def decode_reduced(data: bytes | bytearray | memoryview | np.ndarray, network: tuple[int, int]
                   ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """(RGB image at the reduced scale, the camera's (H, W)) when `data` is a JPEG of at least twice
    `network`'s size on both sides; None when it is to be decoded in full (not a JPEG, too small, or
    a header that does not match the data)."""
    size = jpeg_size(data)
    scale = 1 if size is None else jpeg_scale(size, network)
    if scale == 1:
        return None
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS[scale])
    if rgb is None or rgb.shape[:2] != reduced_size(size, network):  # type: ignore[arg-type]
        return None
    return rgb, size  # type: ignore[return-value]
