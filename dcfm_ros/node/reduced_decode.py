"""Camera frames as the node uses them: the engine's input and the camera's size.

A compressed JPEG of at least twice the network's input size is decoded at 1/2, 1/4 or 1/8 scale
(engine/jpeg.py: libjpeg's DCT scaling, the largest that keeps the network's size; a 1920x1080 JPEG
costs 5.6 ms in full and 4.3 ms at 1/2 on this project's CPU, and the graph then resizes a quarter of
the pixels). The labels are still made for the camera's size (the engine's `camera` argument).
Outputs that need the camera's own pixels (the overlay) decode the full image on the viewer thread,
off the frame's path (`CameraImage.full`). PNG and raw images are used at their size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage

from dcfm_ros.engine.jpeg import decode_reduced
from dcfm_ros.node import convert


@dataclass(frozen=True)
class CameraImage:
    """One camera frame as the node uses it."""

    rgb: np.ndarray  # (h, w, 3) uint8 RGB: what the engine is given (the camera's size, or reduced)
    camera: tuple[int, int]  # the camera's (H, W): the size of the labels and the viewer images
    full: Callable[[], np.ndarray]  # the camera-size image (rgb itself, or decoded again on demand)

    @property
    def reduced(self) -> bool:
        return self.rgb.shape[:2] != self.camera

    @property
    def camera_size(self) -> tuple[int, int] | None:
        """What StreamEngine.process takes as `camera`: the camera's size for a reduced image."""
        return self.camera if self.reduced else None


def whole(rgb: np.ndarray) -> CameraImage:
    """A frame decoded (or converted) at the camera's size."""
    return CameraImage(rgb, (int(rgb.shape[0]), int(rgb.shape[1])), lambda: rgb)


def decode(msg: CompressedImage, network: tuple[int, int] | None) -> CameraImage:
    """CompressedImage -> CameraImage: reduced when it is a JPEG of at least twice `network`'s size
    on both sides (None: always in full); BadInputError as convert.compressed_to_rgb otherwise."""
    found = decode_reduced(msg.data, network) if network is not None and len(msg.data) else None
    if found is None:
        return whole(convert.compressed_to_rgb(msg))
    rgb, camera = found
    convert.check_size(camera[1], camera[0], f"jpeg header of {msg.format[:64]!r}")
    return CameraImage(rgb, camera, functools.cache(lambda: convert.compressed_to_rgb(msg)))


def decoder(image_transport: str, network: tuple[int, int] | None) -> Callable[[Any], CameraImage]:
    """The node's message -> CameraImage for its image_transport; `network`: the engine's input size
    with reduced_decode on, None with it off."""
    if image_transport == "compressed":
        return lambda msg: decode(msg, network)
    return lambda msg: whole(convert.image_to_rgb(msg))
