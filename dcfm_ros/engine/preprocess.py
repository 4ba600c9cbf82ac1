"""Frame conversion between host images and the network: validation, upload, resize, normalise,
the small copy for the motion score, and logits -> host label map.

Everything after the upload runs on the engine's device; the only host<->device transfers are the
uint8 image going in and the uint8/uint16 label map coming out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# The motion score is computed on the network input shrunk by this factor per side (area average):
# 480x853 -> 60x106. Enough pixels to see a scene cut or a pan, few enough that the difference and
# its mean cost microseconds, and the area average suppresses sensor noise.
MOTION_DOWNSAMPLE = 8
# The score is regional: the largest mean |x - x_key| over a grid of cells (rows, columns) of the
# small copy. A whole-image mean cannot see a pedestrian crossing a static camera's view (a few % of
# the pixels change); one cell of a 6x8 grid is 1/48 of the image, so a person walking through it
# moves that cell's mean as much as a pan moves the whole image's.
MOTION_GRID = (6, 8)


def validate_image(image: object, what: str = "image_rgb") -> np.ndarray:
    """Check an (H, W, 3) uint8 RGB array; raise ValueError naming what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what} must be a numpy array (H, W, 3) uint8 RGB, got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"{what} must have 3 dimensions (H, W, 3), got shape {image.shape}")
    if image.shape[2] != 3:
        raise ValueError(f"{what} must have 3 channels (RGB), got {image.shape[2]} (shape {image.shape})")
    if image.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 0..255, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {image.shape})")
    return image


def camera_shape(image: np.ndarray, camera: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) a frame's labels are made for: `camera` (the camera's size, when `image` is a reduced
    decode of it: never smaller than the image, at most 8x larger per side, libjpeg's largest
    scaling) or else the image's own."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    if camera is None:
        return shape
    cam = validate_size(tuple(camera), "camera")
    if not all(s <= c <= 8 * s for s, c in zip(shape, cam, strict=True)):
        raise ValueError(f"camera {cam[0]}x{cam[1]} (H x W) cannot be what a {shape[0]}x{shape[1]} image was "
                         f"decoded from (each side must be 1-8x the image's)")
    return cam


def validate_size(size: object, what: str = "input_size") -> tuple[int, int]:
    """(H, W) of positive ints."""
    try:
        out = tuple(size)  # type: ignore[arg-type]
    except TypeError:
        out = ()
    if len(out) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out):
        raise ValueError(f"{what} must be (H, W) positive ints, got {size!r}")
    return out  # type: ignore[return-value]


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 label maps, uint16 when there are more than 255 classes (contract)."""
    return np.dtype(np.uint16) if num_classes > 255 else np.dtype(np.uint8)


class FramePreprocessor:
    """Host image <-> network tensors for one input size, mean/std and device."""

    def __init__(self, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 device: torch.device, num_classes: int, motion_downsample: int = MOTION_DOWNSAMPLE) -> None:
        self.input_size = validate_size(input_size)
        self.device = device
        self.num_classes = num_classes
        self._mean = torch.tensor([float(m) for m in mean], device=device).view(1, 3, 1, 1)
        self._std = torch.tensor([float(s) for s in std], device=device).view(1, 3, 1, 1)
        h, w = self.input_size
        self.motion_size = (max(1, h // motion_downsample), max(1, w // motion_downsample))
        self._label_dtype = label_dtype(num_classes)

    def upload(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 -> (1, 3, h, w) float32 0..1 at the network input size, on the device."""
        # Negative strides (e.g. BGR->RGB via [..., ::-1]) cannot be wrapped by torch.from_numpy.
        t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = t.permute(2, 0, 1).unsqueeze(0).float()
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=False)
        return x / 255.0

    def normalize(self, x01: Tensor) -> Tensor:
        """0..1 RGB -> mean/std normalised (same operation order as DCFM.normalize_input)."""
        return (x01 - self._mean) / self._std

    def motion_copy(self, x01: Tensor) -> Tensor:
        """Small 0..1 copy of the network input for the motion score (area average)."""
        return F.adaptive_avg_pool2d(x01, self.motion_size)

    def host_motion_copy(self, image: np.ndarray) -> Tensor:
        """The small copy straight from the camera's uint8 image (OpenCV's area average), for frames
        whose resize runs inside the graph (graph I/O): the same area average as `motion_copy` where
        the camera has the network's size and the factor is whole, else an area average of the camera
        pixels instead of the resized ones; uint8 rounding adds at most 0.5/255 to a cell's mean."""
        import cv2

        h, w = self.motion_size
        small = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_AREA)
        return torch.from_numpy(small).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)

    @staticmethod
    def motion_score(small: Tensor, key_small: Tensor, grid: tuple[int, int] = MOTION_GRID) -> float:
        """Largest per-cell mean |x - x_key| over a `grid` of the small copies (0..1); (1, 1) is the
        whole-image mean. Computed on the device; the `.item()` is the only host sync it costs."""
        diff = (small - key_small).abs().mean(dim=1, keepdim=True)
        rows, cols = min(grid[0], diff.shape[-2]), min(grid[1], diff.shape[-1])
        return float(F.adaptive_avg_pool2d(diff, (rows, cols)).amax().item())

    def labels(self, logits: Tensor, out_size: tuple[int, int]) -> np.ndarray:
        """Logits (1, C, h, w) -> (H, W) label map on the host at `out_size` (exact argmax)."""
        # float32 before resizing: under autocast the logits may be fp16, and ties/rounding there
        # would make the argmax differ from the float32 reference.
        logits = logits.float()
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        # max(dim).indices is the same exact argmax (first maximal index on ties, like argmax) but
        # its CPU kernel is 4-20x faster than argmax over a non-innermost dimension (measured with
        # torch 2.13: 19 classes at 360x480, 12 ms vs 49 ms).
        lab = logits.max(dim=1).indices[0]
        # Narrow on the device so the transfer is 1-2 bytes per pixel instead of 8.
        if self._label_dtype == np.uint8:
            return lab.to(torch.uint8).cpu().numpy()
        return lab.to(torch.int32).cpu().numpy().astype(np.uint16)
