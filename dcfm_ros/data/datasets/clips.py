"""Training clips for the multi-frame peers (MRCFA, SD-CPC): a labeled target frame and the R frames
before it in its video, oldest first.

References are the frames `stride`, 2 * stride, ... R * stride positions earlier in the video's frame
list (`video_frames`): on CamVid's train split, which holds only the 1 Hz labeled frames, these are
the earlier labeled frames, 1 s apart; on a folder dataset, the recorded frames before the target.
Near a sequence start the missing references repeat the oldest one there is, or the target itself
(the model's pad_references does the same in the stream, so training and inference agree).

Every frame of a clip gets the SAME geometry (scale, crop, flip, rotation), as PairAugment gives both
frames of a pair: PairAugment draws from the generator in a fixed order that does not depend on pixel
values, so running it once per reference from copies of one generator state warps all of them
alike. (The references then also share their jitter factors; the target's are drawn separately.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dcfm_ros.data.datasets import video_frames
from dcfm_ros.data.datasets.pairs import LabelMap, _WorkerRng, read_label, read_rgb
from dcfm_ros.data.transforms import PairAugment, image_to_tensor, label_to_tensor


@dataclass(frozen=True)
class ClipSample:
    name: str  # the target's
    image: Path
    label: Path
    references: tuple[Path, ...]  # oldest first, exactly R (padded at a sequence start)
    video: str = ""


def clip_samples(kind: str, root: str | Path, split: str, num_references: int,
                 stride: int = 1) -> list[ClipSample]:
    """One clip per labeled frame of `split`; see the module doc for how references are chosen."""
    if num_references < 1 or stride < 1:
        raise ValueError(f"clips need num_references >= 1 and stride >= 1, got {num_references}, {stride}")
    out = []
    for video, frames in video_frames(kind, root, split).items():
        for i, f in enumerate(frames):
            if f.label is None:
                continue
            before = [frames[j].image for j in (i - stride * k for k in range(num_references, 0, -1))
                      if j >= 0]
            refs = [before[0] if before else f.image] * (num_references - len(before)) + before
            out.append(ClipSample(f.name, f.image, f.label, tuple(refs), video))
    return out


class ClipDataset(Dataset):
    """dict(image = target uint8 (3, H, W), label (H, W) int64, neighbour = references uint8
    (R, 3, H, W), name, neighbour_name = the references' names joined by ',')."""

    def __init__(self, samples: Sequence[ClipSample], lut: LabelMap, augment: PairAugment | None) -> None:
        if not samples:
            raise ValueError("the training dataset is empty (no labeled frame found for clips)")
        self.samples = list(samples)
        self.lut = lut
        self.augment = augment
        self._rng = _WorkerRng()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        rng = self._rng.get()
        raw_t, raw_label = read_rgb(s.image), read_label(s.label, self.lut)
        raw_refs = [read_rgb(r) for r in s.references]
        if self.augment is None:
            img_t, label, refs = raw_t, raw_label, raw_refs
        else:
            twins = [copy.deepcopy(rng) for _ in raw_refs[1:]]  # the same draws for every reference
            img_t, label, first = self.augment(raw_t, raw_label, raw_refs[0], rng)
            refs = [first] + [self.augment(raw_t, raw_label, r, g)[2]
                              for r, g in zip(raw_refs[1:], twins, strict=True)]
        return {
            "image": image_to_tensor(img_t),
            "label": label_to_tensor(label),
            "neighbour": torch.stack([image_to_tensor(r) for r in refs]),
            "name": s.name,
            "neighbour_name": ",".join(r.stem for r in s.references),
        }
