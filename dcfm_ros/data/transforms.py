"""Joint augmentation of a training pair (labeled frame, its label, neighbour frame), OpenCV + NumPy.

Both frames of a pair get the SAME geometry (scale, crop, flip, rotation): the symmetric loss L_B
fuses the neighbour's common feature with the labeled frame's independent feature at the same
positions, and L_C compares the two fused features pixel by pixel, so a different warp per frame
would teach the network a misalignment that never happens in video. Photometric jitter is drawn
independently per frame (consecutive frames differ in exposure a little, and it must not matter).

Everything works on HxWx3 uint8 RGB images and HxW uint8 labels already mapped to train ids (ignore =
255); the output goes to tensors with `to_tensors`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ColorJitter:
    """Mild photometric jitter; each factor is drawn uniformly from [1 - x, 1 + x]."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.enabled:
            return img
        out = img.astype(np.float32)
        # Random order would add little; a fixed order keeps it cheap and reproducible.
        if self.brightness > 0:
            out *= rng.uniform(1 - self.brightness, 1 + self.brightness)
        if self.contrast > 0:
            grey_mean = float((out @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
            out = (out - grey_mean) * rng.uniform(1 - self.contrast, 1 + self.contrast) + grey_mean
        if self.saturation > 0:
            grey = (out @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
            out = (out - grey) * rng.uniform(1 - self.saturation, 1 + self.saturation) + grey
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PairAugment:
    """Random scale -> rotation -> pad/crop to `crop_size` -> horizontal flip, shared by both frames.

    scale_range: factors applied to the image size (after an optional resize to `base_size`).
    rotate_deg: uniform rotation in [-rotate_deg, rotate_deg] about the centre (label: nearest, 255 fill).
    fill_rgb: image padding colour (the dataset mean, so that padding looks like "nothing" after
      normalisation); labels pad with 255 so padding never contributes to any loss.
    """

    crop_size: tuple[int, int]  # (H, W)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None  # (H, W) the scale factors refer to; None = native
    hflip: bool = True
    rotate_deg: float = 10.0
    jitter: ColorJitter = ColorJitter()
    fill_rgb: tuple[int, int, int] = (124, 116, 104)  # ImageNet mean * 255
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if len(self.crop_size) != 2 or min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be (H, W) positive, got {self.crop_size!r}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must be 0 < min <= max, got {self.scale_range!r}")
        if self.rotate_deg < 0:
            raise ValueError(f"rotate_deg must be >= 0, got {self.rotate_deg!r}")

    def __call__(
        self, img_l: np.ndarray, label: np.ndarray, img_u: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if img_l.shape != img_u.shape:
            # Neighbours come from the same video, so this only happens with a broken dataset.
            raise ValueError(f"pair frames differ in size: {img_l.shape} vs {img_u.shape}")
        if label.shape != img_l.shape[:2]:
            raise ValueError(f"label size {label.shape} does not match image size {img_l.shape[:2]}")
        h, w = img_l.shape[:2]
        bh, bw = self.base_size if self.base_size is not None else (h, w)
        s = rng.uniform(*self.scale_range)
        nh, nw = max(1, round(bh * s)), max(1, round(bw * s))
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg) if self.rotate_deg > 0 else 0.0
        flip = bool(self.hflip and rng.random() < 0.5)

        # One affine warp does scale + rotation for all three arrays (one resample, same matrix).
        # Pixel-centre aligned scaling (x' + 0.5 = s (x + 0.5)), the convention of cv2.resize's
        # bilinear mode; without the 0.5 terms labels drift by up to half a pixel from the image.
        sx, sy = nw / w, nh / h
        m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], np.float64)
        if angle != 0.0:
            rot = cv2.getRotationMatrix2D((nw / 2.0, nh / 2.0), angle, 1.0)
            m = rot @ np.vstack([m, [0.0, 0.0, 1.0]])
        dsize = (nw, nh)
        fill = tuple(int(c) for c in self.fill_rgb)
        interp = cv2.INTER_LINEAR if s >= 1.0 else cv2.INTER_AREA
        if angle == 0.0:
            img_l = cv2.resize(img_l, dsize, interpolation=interp)
            img_u = cv2.resize(img_u, dsize, interpolation=interp)
            # NEAREST_EXACT is pixel-centre aligned like the image's resize; plain INTER_NEAREST is
            # not (it floors x * scale) and shifts the label by up to half a source pixel.
            label = cv2.resize(label, dsize, interpolation=cv2.INTER_NEAREST_EXACT)
        else:
            img_l = cv2.warpAffine(img_l, m, dsize, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
            img_u = cv2.warpAffine(img_u, m, dsize, flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=fill)
            label = cv2.warpAffine(label, m, dsize, flags=cv2.INTER_NEAREST,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_index)

        # Pad to at least the crop size, then one random crop window for both frames.
        ch, cw = self.crop_size
        ph, pw = max(ch - nh, 0), max(cw - nw, 0)
        if ph or pw:
            top, left = ph // 2, pw // 2
            pads = (top, ph - top, left, pw - left)
            img_l = cv2.copyMakeBorder(img_l, *pads, cv2.BORDER_CONSTANT, value=fill)
            img_u = cv2.copyMakeBorder(img_u, *pads, cv2.BORDER_CONSTANT, value=fill)
            label = cv2.copyMakeBorder(label, *pads, cv2.BORDER_CONSTANT, value=self.ignore_index)
        H, W = label.shape
        y0 = int(rng.integers(0, H - ch + 1))
        x0 = int(rng.integers(0, W - cw + 1))
        img_l = img_l[y0:y0 + ch, x0:x0 + cw]
        img_u = img_u[y0:y0 + ch, x0:x0 + cw]
        label = label[y0:y0 + ch, x0:x0 + cw]
        if flip:
            img_l, img_u, label = img_l[:, ::-1], img_u[:, ::-1], label[:, ::-1]

        img_l = self.jitter(np.ascontiguousarray(img_l), rng)
        img_u = self.jitter(np.ascontiguousarray(img_u), rng)
        return img_l, np.ascontiguousarray(label), img_u


def resize_for_eval(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an RGB image to the network input size (H, W); labels stay at their own size."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if h * w < img.shape[0] * img.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (3, H, W) uint8 tensor; the model's `normalize_input` does mean/std."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def label_to_tensor(label: np.ndarray) -> torch.Tensor:
    """HxW train-id label -> (H, W) int64 tensor (what cross-entropy wants)."""
    return torch.from_numpy(label.astype(np.int64))
