"""Training pairs whose neighbour is labeled too: what TFC's similarity loss (L_sim) supervises.

"Label unchanged" between the two frames needs both labels under the SAME augmentation. PairAugment
draws its geometry and jitter from the generator in a fixed order that does not depend on the pixel
values, so running it twice from one generator state warps the neighbour's label exactly like the
labeled frame's; the first run gives the images and y_l, the second only y_u.

The neighbour's label is found next to the labeled frame's (same folder, the neighbour's file name),
which is how CamVid stores its labeled frames; a dataset whose neighbours are unlabeled (Cityscapes
sequences, VSPW's unlabeled frames) gives a clear error at start-up.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dcfm_ros.data.datasets.pairs import PairDataset, PairSample, read_label, read_rgb
from dcfm_ros.data.transforms import PairAugment, image_to_tensor, label_to_tensor


def neighbour_label(sample: PairSample, neighbour: Path) -> Path:
    return sample.label.parent / neighbour.name


class LabeledPairDataset(PairDataset):
    """PairDataset items plus "neighbour_label" (H, W) int64, augmented like "label"."""

    def __init__(self, samples: Sequence[PairSample], lut: np.ndarray, augment: PairAugment | None) -> None:
        super().__init__(samples, lut, augment)
        missing = [str(neighbour_label(s, nb)) for s in self.samples for nb in s.neighbours
                   if not neighbour_label(s, nb).is_file()]
        if missing:
            raise ValueError(f"loss.lambda_sim / TFC need labeled neighbours; {len(missing)} neighbour "
                             f"labels not found, e.g. {missing[0]}")

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        rng = self._rng.get()
        nb = s.neighbours[int(rng.integers(len(s.neighbours)))] if len(s.neighbours) > 1 else s.neighbours[0]
        img_l, img_u = read_rgb(s.image), read_rgb(nb)
        label = read_label(s.label, self.lut)
        label_u = read_label(neighbour_label(s, nb), self.lut)
        if self.augment is not None:
            twin = copy.deepcopy(rng)  # the same draws for the second run
            raw_l, raw_u = img_l, img_u
            img_l, label, img_u = self.augment(raw_l, label, raw_u, rng)
            label_u = self.augment(raw_l, label_u, raw_u, twin)[1]
        return {
            "image": image_to_tensor(img_l),
            "label": label_to_tensor(label),
            "neighbour": image_to_tensor(img_u),
            "neighbour_label": label_to_tensor(label_u),
            "name": s.name,
            "neighbour_name": nb.stem,
        }
