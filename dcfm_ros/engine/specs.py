"""Names and spec grammars shared by the node's parameters, the engine and every CLI. Torch-free and
rclpy-free, so the node's parameter checks and a CLI's argument parsing load nothing heavy.

Grammars (case-insensitive, ':'-separated):
    size       HxW                      e.g. 360x480 (height first, as the network's input_size);
               WxH                      only where a tool says so (dcfm-make-bag --size: image files)
    policy     fixed:K                  a keyframe every K frames (K >= 1)
               motion:THR[:MIN[:MAX]]   regional motion score above THR (0 <= THR < 1), MIN <= MAX
               feature:THR[:MIN[:MAX]]  share of pixels with shallow-feature similarity < 0.8 above THR
    schedule   sync | background | spread[:N] | lag:L   (lag is offline only: dcfm-evaluate)
    blend      none | auto | cosine[:feature|logits][:key|prev][:STRENGTH]   (engine/blend.py says why)
    calibration  folder:DIR[:N] | video:FILE[:N] | bag:PATH:TOPIC[:N]   (int8; N frames, default 64,
               spread evenly; frames of the model's TRAINING split only: a path through a folder
               named val/test (CamVid's val, valannot, test, ...) is refused)
    camera     a ROS name token (letters, digits, _), each camera once (node parameter cameras)
A bad spec is a ValueError whose message names the grammar; `dcfm_ros.tools.args` turns these into
argparse types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
# "auto": the fastest precision this backend and CPU/GPU have among those measured to keep the labels
# (engine/backends/__init__.py, pick_precision; docs/fast-path.md)
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
KEYFRAME_POLICIES = ("fixed", "motion", "feature")
# the score a keyframe policy decides on (KeyframePolicy.score): what the engine must compute for it
PolicyScore = Literal["none", "motion", "similarity"]
POLICY_SCORES: tuple[str, ...] = ("none", "motion", "similarity")
# where the labels are made with the I/O in the graph (StreamEngine graph_io): "camera", the exact
# argmax of the logits upsampled to the camera's size; "network", at the network's input size and
# then scaled to the camera's with nearest neighbours (cheaper for large cameras; docs/fast-path.md);
# "auto": "network" where the camera has more than LABELS_AUTO_AREA times the network input's pixels
LABEL_SIZES = ("camera", "network", "auto")
KEYFRAME_SCHEDULES = ("sync", "spread", "background")
OFFLINE_SCHEDULES = (*KEYFRAME_SCHEDULES, "lag")
BLEND_TARGETS = ("feature", "logits")
BLEND_REFERENCES = ("key", "prev")
DEFAULT_BLEND_TARGET = "logits"
DEFAULT_MIN_INTERVAL = 1
DEFAULT_MAX_INTERVAL = 30
DEFAULT_SPREAD = 3


def _two_ints(text: str, what: str, example: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in str(text).strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be {what}, e.g. {example}, got {text!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return a, b


def parse_size(text: str) -> tuple[int, int]:
    """"360x480" -> (360, 480): height, width."""
    return _two_ints(text, "HxW", "360x480")


def parse_size_wh(text: str) -> tuple[int, int]:
    """"640x480" -> (640, 480): width, height (image-file sizes, as OpenCV and ffmpeg write them)."""
    return _two_ints(text, "WIDTHxHEIGHT", "640x480")


@dataclass(frozen=True)
class PolicySpec:
    """A keyframe policy as plain values; `dcfm_ros.engine.keyframe.build_policy` makes the object."""

    kind: str  # fixed | motion | feature
    interval: int = 2  # fixed
    threshold: float = 0.1  # motion: regional score; feature: low-similarity share
    min_interval: int = DEFAULT_MIN_INTERVAL
    max_interval: int = DEFAULT_MAX_INTERVAL
    label: str = field(default="", compare=False)  # as the user wrote it (report rows keep it)

    @property
    def text(self) -> str:
        return self.label or str(self)

    def __post_init__(self) -> None:
        if self.kind not in KEYFRAME_POLICIES:
            raise ValueError(f"unknown keyframe policy {self.kind!r}; expected one of {KEYFRAME_POLICIES}")
        if self.kind == "fixed":
            if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
                raise ValueError(f"fixed interval must be an int >= 1, got {self.interval!r}")
            return
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold < 1.0):
            raise ValueError(f"{self.kind} threshold must be in [0, 1), got {self.threshold!r}")
        ints = (self.min_interval, self.max_interval)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in ints):
            raise ValueError(f"min_interval and max_interval must be ints >= 1, got {ints}")
        if self.min_interval > self.max_interval:
            raise ValueError(f"min_interval ({self.min_interval}) must be <= max_interval "
                             f"({self.max_interval})")

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.interval}"
        text = f"{self.kind}:{self.threshold:g}"
        if (self.min_interval, self.max_interval) != (DEFAULT_MIN_INTERVAL, DEFAULT_MAX_INTERVAL):
            text += f":{self.min_interval}:{self.max_interval}"
        return text


def parse_policy(text: str) -> PolicySpec:
    """"fixed:2", "motion:0.1:1:30", "feature:0.75" -> PolicySpec."""
    label = str(text).strip().lower()
    kind, *rest = label.split(":")
    try:
        if kind == "fixed" and len(rest) == 1:
            return PolicySpec("fixed", interval=int(rest[0]), label=label)
        if kind in ("motion", "feature") and 1 <= len(rest) <= 3:
            ints = [int(v) for v in rest[1:]] + [DEFAULT_MIN_INTERVAL, DEFAULT_MAX_INTERVAL][len(rest) - 1:]
            return PolicySpec(kind, threshold=float(rest[0]), min_interval=ints[0], max_interval=ints[1],
                              label=label)
    except ValueError as exc:
        raise ValueError(f"bad policy {text!r}: {exc}") from None
    raise ValueError(f"bad policy {text!r}; expected fixed:K, motion:THR[:MIN[:MAX]] or "
                     "feature:THR[:MIN[:MAX]]")


@dataclass(frozen=True)
class ScheduleSpec:
    """A keyframe schedule as plain values; `dcfm_ros.engine.schedules.make_schedule` makes the object."""

    name: str  # sync | spread | background | lag
    arg: int | None = None  # spread: pieces N; lag: frames L

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


def parse_schedule(text: str, *, spread: int = DEFAULT_SPREAD, offline: bool = False) -> ScheduleSpec:
    """"sync" | "background" | "spread" (N = `spread`) | "spread:N" | "lag:L" (only with offline=True)."""
    name, _, arg = str(text).strip().lower().partition(":")
    names = OFFLINE_SCHEDULES if offline else KEYFRAME_SCHEDULES
    if name not in names:
        extra = ", lag:L for a cache L frames late" if offline else ""
        raise ValueError(f"unknown keyframe schedule {text!r}; expected one of {', '.join(names)} "
                         f"(spread:N for N pieces{extra})")
    if name in ("sync", "background"):
        if arg:
            raise ValueError(f"schedule {name} takes no argument, got {text!r}")
        return ScheduleSpec(name)
    if name == "spread" and not arg:
        arg = str(spread)
    try:
        value = int(arg)
    except ValueError:
        value = -1
    if name == "spread" and value < 1:
        raise ValueError(f"spread:N needs an integer N >= 1 (keyframe.spread: pieces), got {text!r}")
    if name == "lag" and value < 0:
        raise ValueError(f"lag:L needs an integer L >= 0, got {text!r}")
    return ScheduleSpec(name, value)


@dataclass(frozen=True)
class BlendSpec:
    """`nonkey_blend` as plain values (engine/blend.py applies it)."""

    kind: str = "none"  # none | cosine
    target: str = DEFAULT_BLEND_TARGET  # feature | logits (only for cosine)
    reference: str = "key"  # key | prev
    strength: float = 1.0  # w = strength * clamp(cos, 0, 1)

    @property
    def enabled(self) -> bool:
        return self.kind == "cosine"

    def __str__(self) -> str:
        if not self.enabled:
            return "none"
        text = f"cosine:{self.target}"
        if self.reference != "key":
            text += f":{self.reference}"
        if self.strength != 1.0:
            text += f":{self.strength:g}"
        return text


BLEND_GRAMMAR = ("auto, none, cosine, cosine:feature, cosine:logits, and cosine with :key or :prev and a "
                 "strength in (0, 1], e.g. cosine:prev:0.5")


def _strength(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 < value <= 1.0 else None


def parse_blend(text: str | BlendSpec | None, default: str = "none") -> BlendSpec:
    """Spec string -> BlendSpec; "auto" / "" / None mean `default` (a model's own `default_blend`)."""
    if isinstance(text, BlendSpec):
        return text
    if text is None or str(text).strip().lower() in ("", "auto"):
        text = default
    parts = str(text).strip().lower().split(":")
    if parts == ["none"]:
        return BlendSpec()
    options: dict[str, object] = {}
    for token in parts[1:] if parts[0] == "cosine" else ["<not cosine>"]:
        strength = _strength(token)
        key = ("target" if token in BLEND_TARGETS else "reference" if token in BLEND_REFERENCES
               else "strength" if strength is not None else None)
        if key is None or key in options:
            raise ValueError(f"nonkey_blend must be {BLEND_GRAMMAR}; got {text!r} ({token!r} is "
                             f"{'repeated' if key else 'not an option'})")
        options[key] = strength if key == "strength" else token
    return BlendSpec("cosine", **options)  # type: ignore[arg-type]


def split_list(text: str) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"] (comma-separated CLI lists)."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


# -- int8 calibration ------------------------------------------------------------------------------

CALIBRATION_KINDS = ("folder", "video", "bag")
DEFAULT_CALIBRATION_FRAMES = 64
# Folder names of held-out splits: calibrating on them would tune the int8 graphs on what they are
# judged on. Compared case-insensitively with every component of the path.
HELD_OUT_NAMES = frozenset({"val", "valid", "validation", "valannot", "test", "testing", "testannot"})
_CALIBRATION_GRAMMAR = ("folder:DIR[:N] | video:FILE[:N] | bag:PATH:TOPIC[:N] (frames of the model's "
                        "training split, e.g. folder:/data/camvid/train:64)")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where int8 calibration frames come from: `count` frames spread evenly over a folder of images,
    a video file or a bag's image topic."""

    kind: str
    path: str
    count: int = DEFAULT_CALIBRATION_FRAMES
    topic: str = ""

    def text(self) -> str:
        mid = f"{self.path}:{self.topic}" if self.kind == "bag" else self.path
        return f"{self.kind}:{mid}:{self.count}"


def parse_calibration(text: str) -> CalibrationSpec:
    """The calibration grammar (module doc) -> CalibrationSpec; refuses held-out split folders."""
    raw = str(text).strip()
    kind, sep, rest = raw.partition(":")
    kind = kind.lower()
    if not sep or kind not in CALIBRATION_KINDS or not rest:
        raise ValueError(f"calibration must be {_CALIBRATION_GRAMMAR}, got {text!r}")
    count = DEFAULT_CALIBRATION_FRAMES
    head, sep, tail = rest.rpartition(":")
    if sep and tail.isdigit():
        rest, count = head, int(tail)
    if count < 1:
        raise ValueError(f"calibration needs at least 1 frame, got {count} in {text!r}")
    topic = ""
    if kind == "bag":
        path, sep, topic = rest.rpartition(":")
        if not sep or not topic.startswith("/") or not path:
            raise ValueError(f"a bag calibration names its image topic: bag:PATH:TOPIC[:N], e.g. "
                             f"bag:drive.mcap:/camera/image/compressed:64, got {text!r}")
        rest = path
    parts = [q.lower() for q in rest.replace("\\", "/").split("/")]
    held = sorted(HELD_OUT_NAMES.intersection(parts))
    if held:
        raise ValueError(f"calibration {text!r} reads from a held-out split ({'/'.join(held)}): int8 is "
                         f"calibrated on the model's training frames only (e.g. folder:.../train)")
    return CalibrationSpec(kind, rest, count, topic)


def check_camera_names(names: Sequence[str]) -> tuple[str, ...]:
    """Camera names as ROS topic tokens (they prefix the camera's topics): letters, digits and _, not
    starting with a digit, each once. ValueError naming the bad one."""
    out: list[str] = []
    for name in names:
        text = str(name)
        if not text or not (text[0].isalpha() or text[0] == "_") or not all(
                c.isascii() and (c.isalnum() or c == "_") for c in text):
            raise ValueError(f"camera name {text!r} is not a ROS name token (letters, digits, _; not "
                             "starting with a digit)")
        if text in out:
            raise ValueError(f"camera {text!r} is listed twice")
        out.append(text)
    return tuple(out)


# labels_at "auto": at 1080x1440 (4.5x a 360x480 network's pixels) labels made at the network's size
# were 0.42x the exact method's time for +0.06 mIoU on the CamVid val clip (docs/fast-path.md); at
# about the network's size the exact labels cost little more, so they stay exact there.
LABELS_AUTO_AREA = 2.0


def label_size(labels_at: str, camera: tuple[int, int], network: tuple[int, int]) -> tuple[int, int]:
    """(H, W) the labels are made at for a `camera`-sized frame (then scaled to the camera's size)."""
    if labels_at not in LABEL_SIZES:
        raise ValueError(f"labels_at must be one of {', '.join(LABEL_SIZES)}; got {labels_at!r}")
    if labels_at == "auto":
        big = camera[0] * camera[1] > LABELS_AUTO_AREA * network[0] * network[1]
        labels_at = "network" if big else "camera"
    return tuple(network) if labels_at == "network" else tuple(camera)  # type: ignore[return-value]


# libjpeg's DCT scalings (OpenCV's IMREAD_REDUCED_*), largest first: what a JPEG can be decoded at.
JPEG_SCALES = (8, 4, 2)


def jpeg_scale(camera: tuple[int, int], network: tuple[int, int]) -> int:
    """The largest JPEG_SCALES entry whose decoded image still has the network's input size on both
    sides (libjpeg rounds a scaled side up), else 1: the camera image is decoded that much smaller
    and the network sees as many pixels as it resizes to anyway (node/reduced_decode.py)."""
    for s in JPEG_SCALES:
        if all(-(-c // s) >= n for c, n in zip(camera, network, strict=True)):
            return s
    return 1


def reduced_size(camera: tuple[int, int], network: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of a `camera`-sized JPEG decoded at jpeg_scale."""
    s = jpeg_scale(camera, network)
    return (-(-camera[0] // s), -(-camera[1] // s))
