"""The node's parameters as plain values: their schema (`PARAMETERS`: name, type, default, range,
description), their validation (`settings_from_values`) and the StreamEngine they build
(`build_engine`).

rclpy-free and torch-free at import, so the node (dcfm_ros/node/params.py declares these on an rclpy
node), dcfm-bag-eval (a params file -> the node's effective parameters) and dcfm-fleet-eval (the
node's engine without ROS) all read one schema. `config/dcfm.yaml` documents the same names
(test_params checks both directions). rclpy enforces types, ranges and read_only; the rules it cannot
express (choices, min_interval <= max_interval, [H, W] shapes) live in `settings_from_values`, which
both start-up and run-time changes go through, so a value is judged the same way in both cases.
"""

from __future__ import annotations

import importlib.resources
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dcfm_ros.engine.specs import (
    BACKENDS,
    KEYFRAME_POLICIES,
    KEYFRAME_SCHEDULES,
    LABEL_SIZES,
    LABELS_AUTO_AREA,
    PRECISIONS,
)

if TYPE_CHECKING:
    from dcfm_ros.engine import InferenceBackend, KeyframePolicy, StreamEngine
    from dcfm_ros.engine.multistream import MultiStreamEngine
    from dcfm_ros.engine.schedules import KeyframeSchedule
    from dcfm_ros.model import DCFM

DEFAULT_MODEL_FILE = "camvid_efficientnet_lite0.safetensors"
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("auto", "best_effort", "reliable")
DROP_POLICIES = ("latest", "none")
CAMERA_BATCHING = ("auto", "on", "off")
_INT_MAX = 100_000


class ParamType(Enum):
    """A parameter's value type; the names are rcl_interfaces' ParameterType names (node/params.py
    maps them onto rclpy's)."""

    STRING = "string"
    INTEGER = "integer"
    DOUBLE = "double"
    BOOL = "bool"
    INTEGER_ARRAY = "integer_array"
    STRING_ARRAY = "string_array"


class ParameterError(ValueError):
    """A parameter value the node cannot use; the message names the parameter and the reason."""


class StartupError(RuntimeError):
    """The node cannot start (bad model file, unknown mask class, unusable device, ...)."""


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter. default None: declared without a value (documented as 'unset = ...')."""

    name: str
    type: ParamType
    default: Any
    description: str
    read_only: bool = True
    constraints: str = ""
    int_range: tuple[int, int] | None = None
    float_range: tuple[float, float] | None = None


T = ParamType
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("model", T.STRING, "",
              "Checkpoint file (.safetensors written by dcfm_ros.model.save_checkpoint). Empty: the "
              f"packaged model dcfm_ros/models/{DEFAULT_MODEL_FILE}.",
              constraints="path to an existing dcfm_ros checkpoint, or empty"),
    ParamSpec("device", T.STRING, "auto", "Inference device. auto: cuda if available, else cpu.",
              constraints="auto, cpu, cuda or cuda:N"),
    # default auto: bf16 on OpenVINO was 2x fp32's speed at the same CamVid mIoU (docs/fast-path.md)
    ParamSpec("precision", T.STRING, "auto", "Inference precision. auto: the fastest one measured to keep "
              "the labels on this backend and CPU/GPU (openvino on a CPU with native bf16: bf16; "
              "tensorrt: fp16; else fp32), logged at start-up with the reason. bf16 on the CPU needs "
              "backend openvino; fp16/bf16 on torch need a CUDA device. int8: post-training "
              "quantization on backend openvino or onnxruntime (CPU) or tensorrt (GPU), calibrated on "
              "the frames named by 'calibration' (check a model with dcfm-export --precision int8 first).",
              constraints="one of " + ", ".join(PRECISIONS)),
    ParamSpec("calibration", T.STRING, "", "precision int8 only: the frames of the model's training split "
              "the int8 graphs are calibrated on (quantized once at start-up, then cached under "
              "backend_cache_dir with the frames' hash in the name). Empty: the frames shipped with the "
              "model (the packaged CamVid model has them; another model needs this set).",
              constraints="empty, or folder:DIR[:N], video:FILE[:N] or bag:PATH:TOPIC[:N] (N frames, "
                          "default 64); a path through a val/test folder is refused"),
    ParamSpec("labels_at", T.STRING, "auto", "Where the labels are made when the backend runs the pre/post-"
              "processing in its graph (onnxruntime, openvino on the CPU; elsewhere always camera). camera: "
              "exact, the logits upsampled to the camera's size and the argmax there. network: at the "
              "network's input size, then scaled to the camera's with nearest neighbours (at 1080x1440 "
              "on the CamVid val clip: +0.06 mIoU at 0.42x the time). auto: network where the camera has "
              f"more than {LABELS_AUTO_AREA:g}x the network input's pixels, else camera.",
              constraints="one of " + ", ".join(LABEL_SIZES)),
    ParamSpec("backend", T.STRING, "auto", "Inference backend. auto: the fastest available for the device "
              "(CPU: openvino, else onnxruntime, else torch; CUDA: tensorrt, else onnxruntime's GPU "
              "provider, else torch). onnxruntime, openvino and tensorrt export the model to ONNX (and "
              "build TensorRT engines) into backend_cache_dir at start-up, once per model, input size "
              "(and GPU).",
              constraints="one of " + ", ".join(BACKENDS)),
    ParamSpec("backend_cache_dir", T.STRING, "", "Folder for exported ONNX graphs and TensorRT engines. "
              "Empty: $XDG_CACHE_HOME/dcfm_ros, else ~/.cache/dcfm_ros.",
              constraints="a writable folder path, or empty"),
    ParamSpec("keyframe.policy", T.STRING, "motion",
              "fixed: a keyframe every keyframe.interval frames. motion: a keyframe when the regional "
              "absolute difference to the last keyframe exceeds keyframe.threshold (after "
              "keyframe.min_interval frames), at the latest every keyframe.max_interval frames. feature: "
              "a keyframe when the share of pixels whose shallow feature (F_in) has cosine similarity "
              "below 0.8 to the keyframe's exceeds keyframe.feature_threshold (same min/max intervals).",
              read_only=False, constraints="one of " + ", ".join(KEYFRAME_POLICIES)),
    ParamSpec("keyframe.interval", T.INTEGER, 2, "fixed policy: frames from one keyframe to the next (1 = "
              "every frame is a keyframe).", read_only=False, int_range=(1, _INT_MAX)),
    ParamSpec("keyframe.threshold", T.DOUBLE, 0.1, "motion policy: regional score (the largest mean "
              "|frame - keyframe| on 0..1 intensities over a 6x8 grid of cells) above which a new keyframe "
              "is taken.", read_only=False,
              constraints="0 <= threshold < 1", float_range=(0.0, 1.0)),
    ParamSpec("keyframe.feature_threshold", T.DOUBLE, 0.75, "feature policy: share of pixels with "
              "shallow-feature similarity < 0.8 to the keyframe above which a keyframe is taken (0.75: "
              "the keyframe ratio of the default motion policy on the CamVid val clip, README).",
              read_only=False,
              constraints="0 <= feature_threshold < 1", float_range=(0.0, 1.0)),
    ParamSpec("keyframe.min_interval", T.INTEGER, 1, "motion and feature policies: no keyframe sooner "
              "than this many frames after the last one.", read_only=False,
              constraints="<= keyframe.max_interval",
              int_range=(1, _INT_MAX)),
    ParamSpec("keyframe.max_interval", T.INTEGER, 30, "motion and feature policies: a keyframe at the "
              "latest this many frames after the last one.", read_only=False,
              constraints=">= keyframe.min_interval",
              int_range=(1, _INT_MAX)),
    ParamSpec("keyframe.schedule", T.STRING, "sync",
              "When a keyframe's deep pass runs. sync: inside the keyframe (its latency spikes). spread: "
              "in keyframe.spread pieces over the following frames, which use the old common feature "
              "until it is done. background: concurrently on a worker (CPU thread / low-priority CUDA "
              "stream), swapped in at the first frame after it finished.", read_only=False,
              constraints="one of " + ", ".join(KEYFRAME_SCHEDULES)),
    ParamSpec("keyframe.spread", T.INTEGER, 3, "spread schedule: frames a keyframe's deep pass is spread "
              "over (the new common feature is used from that many frames after the keyframe).",
              read_only=False, int_range=(1, 64)),
    ParamSpec("cameras", T.STRING_ARRAY, None, "Camera names for one node serving several cameras with one "
              "model: camera <c> reads <c>/image (or <c>/image/compressed) and publishes under "
              "<c>/segmentation/..., with its own keyframes, common feature and counters and one "
              "diagnostics status. Unset or []: one camera on image and segmentation/... (as without "
              "this parameter).",
              constraints="ROS name tokens (letters, digits, _), each once"),
    ParamSpec("camera_batching", T.STRING, "auto", "With cameras: run the frames of several cameras that "
              "are ready together as one batched pass (enc_lo, fuse and head for all, the deep pass for "
              "the keyframes among them). on / off; auto: on for backend torch on CUDA, off elsewhere "
              "(on a 2-core CPU a batch was slower than one frame at a time; the graph backends run "
              "batch-1 graphs, so on has no effect there).",
              constraints="one of " + ", ".join(CAMERA_BATCHING)),
    ParamSpec("camera_size", T.INTEGER_ARRAY, None, "[H, W] of the camera images, if known. Where the "
              "backend runs the pre/post-processing in its graph, that graph is made per camera size: "
              "for this size at start-up, so the first frame takes a keyframe's time, not the graph's "
              "build too. Unset or []: the network input size. Any other size still works (built on "
              "its first frame).", constraints="[H, W], positive ints"),
    ParamSpec("input_size", T.INTEGER_ARRAY, None, "[H, W] the network runs at (images are resized to it, "
              "outputs come back at camera resolution). Unset or []: the model's own input size.",
              constraints="[H, W], positive ints"),
    ParamSpec("mask_classes", T.STRING_ARRAY, None, "Class names (as in the model) to publish a binary "
              "mask for, on segmentation/masks/<class_name>. Unset or []: none.",
              constraints="names from the model's class list"),
    ParamSpec("overlay_alpha", T.DOUBLE, 0.5, "Weight of the class colours in segmentation/overlay (0: "
              "camera image only, 1: colours only).", read_only=False, float_range=(0.0, 1.0)),
    ParamSpec("viewer_rate", T.DOUBLE, 0.0, "Viewer outputs (color, overlay, their /compressed topics, "
              "confidence, masks) at most this many times a second; 0: every frame the viewer worker "
              "keeps up with. They are made off the inference thread, newest frame only, and only "
              "while someone subscribes, so they never delay segmentation/labels.", read_only=False,
              constraints="0 <= viewer_rate <= 1000", float_range=(0.0, 1000.0)),
    ParamSpec("jpeg_quality", T.INTEGER, 80, "JPEG quality of segmentation/overlay/compressed (1-100, "
              "as image_transport's compressed plugin; segmentation/color/compressed is lossless PNG).",
              read_only=False, int_range=(1, 100)),
    ParamSpec("image_transport", T.STRING, "raw", "raw: subscribe to image (sensor_msgs/Image). "
              "compressed: subscribe to image/compressed (sensor_msgs/CompressedImage, jpeg/png).",
              constraints="one of " + ", ".join(TRANSPORTS)),
    ParamSpec("reduced_decode", T.BOOL, True, "image_transport compressed: decode a JPEG at 1/2, 1/4 or "
              "1/8 scale (libjpeg's DCT scaling) where that still has the network's input size on both "
              "sides, so a large camera costs less to decode and resize; the labels and the viewer images "
              "stay at the camera's size (the overlay decodes the full image on the viewer thread). "
              "false: always decode in full."),
    ParamSpec("qos.depth", T.INTEGER, 20, "History depth of the image subscription: frames DDS holds "
              "for the node while its executor is busy (reliable: more than this unread are lost).",
              int_range=(1, 1000)),
    ParamSpec("qos.reliability", T.STRING, "auto", "Reliability of the image subscription. auto: "
              "like rosbag2, reliable when every publisher on the topic offers reliable, best effort "
              "otherwise, re-checked as publishers come and go (reliable while there is none). "
              "best_effort (sensor data) also receives from reliable publishers, but a lost fragment "
              "of a large image loses the frame; reliable repairs it, but matches reliable "
              "publishers only.",
              constraints="one of " + ", ".join(RELIABILITIES)),
    ParamSpec("drop_policy", T.STRING, "latest", "latest: live camera, process the newest frame and count "
              "the skipped ones as dropped. none: queue every frame (evaluation, bag playback).",
              constraints="one of " + ", ".join(DROP_POLICIES)),
    ParamSpec("confidence.warn_below", T.DOUBLE, 0.75, "Diagnostics warn (scene may be out of the "
              "model's domain) while the mean per-frame confidence (top softmax probability) of the "
              "last confidence.window frames is below this. 0 turns the warning off.", read_only=False,
              float_range=(0.0, 1.0)),
    ParamSpec("confidence.window", T.INTEGER, 30, "Frames the confidence warning averages over.",
              read_only=False, int_range=(1, 10_000)),
    ParamSpec("nonkey_blend", T.STRING, "auto", "Non-key frames: blend with the keyframe's prediction by "
              "the shallow-feature cosine similarity (TFC, engine/blend.py). auto: the model's own (none "
              "for DCFM, cosine for TFC); none; cosine; cosine:feature; cosine:logits; after cosine, in any "
              "order: key or prev (blend with the previous frame's blended output), and a strength in "
              "(0, 1] (w = strength * clamp(cos)), e.g. cosine:prev:0.5.",
              constraints="auto, none, or cosine[:feature|logits][:key|prev][:strength]"),
)
PARAMETER_NAMES: tuple[str, ...] = tuple(p.name for p in PARAMETERS)
RUNTIME_PARAMETERS: frozenset[str] = frozenset(p.name for p in PARAMETERS if not p.read_only)


@dataclass(frozen=True)
class KeyframeSettings:
    policy: str
    interval: int
    threshold: float
    min_interval: int
    max_interval: int
    schedule: str = "sync"
    spread: int = 3
    feature_threshold: float = 0.75

    def policy_fields(self) -> tuple:
        return (self.policy, self.interval, self.threshold, self.min_interval, self.max_interval,
                self.feature_threshold)

    def make_schedule(self) -> KeyframeSchedule:
        from dcfm_ros.engine.schedules import make_schedule

        return make_schedule(self.schedule, spread=self.spread)

    def make_policy(self) -> KeyframePolicy:
        """The engine policy; every keyframe value is checked, also those the active policy ignores
        (a bad min/max pair must not hide until someone switches to the motion policy)."""
        from dcfm_ros.engine import FixedInterval, MotionThreshold, make_policy
        from dcfm_ros.engine.feature_policy import FeatureSimilarity

        try:
            FixedInterval(self.interval)
            MotionThreshold(self.threshold, self.min_interval, self.max_interval)
            FeatureSimilarity(self.feature_threshold, self.min_interval, self.max_interval)
            return make_policy(self.policy, interval=self.interval, threshold=self.threshold,
                               min_interval=self.min_interval, max_interval=self.max_interval,
                               feature_threshold=self.feature_threshold)
        except ValueError as exc:
            raise ParameterError(
                f"keyframe parameters rejected (keyframe.policy={self.policy}, interval={self.interval}, "
                f"threshold={self.threshold}, min_interval={self.min_interval}, max_interval="
                f"{self.max_interval}, feature_threshold={self.feature_threshold}): {exc}") from exc


@dataclass(frozen=True)
class NodeSettings:
    model: str
    device: str
    precision: str
    keyframe: KeyframeSettings
    input_size: tuple[int, int] | None
    camera_size: tuple[int, int] | None
    mask_classes: tuple[str, ...]
    overlay_alpha: float
    image_transport: str
    qos_depth: int
    qos_reliability: str
    drop_policy: str
    confidence_warn_below: float = 0.75
    confidence_window: int = 30
    nonkey_blend: str = "auto"
    values: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    backend: str = "auto"
    backend_cache_dir: str = ""
    cameras: tuple[str, ...] = ()
    camera_batching: str = "auto"
    viewer_rate: float = 0.0
    jpeg_quality: int = 80
    labels_at: str = "auto"
    calibration: str = ""
    reduced_decode: bool = True

    @property
    def model_path(self) -> Path:
        return Path(self.model) if self.model else default_model_path()


def default_model_path() -> Path:
    """The packaged model, located inside the installed dcfm_ros package (pip or colcon install)."""
    return Path(str(importlib.resources.files("dcfm_ros").joinpath("models", DEFAULT_MODEL_FILE)))


def _size_or_none(values: Mapping[str, Any], name: str, empty: str) -> tuple[int, int] | None:
    size = values[name]
    if size is None or len(size) == 0:
        return None
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and 0 < s <= 16384
                                 for s in size):
        raise ParameterError(f"parameter '{name}' must be [H, W] with 0 < H, W <= 16384, or empty "
                             f"{empty}; got {list(size)!r}")
    return int(size[0]), int(size[1])


def _choice(values: Mapping[str, Any], name: str, choices: Sequence[str]) -> str:
    value = values[name]
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in choices:
        raise ParameterError(f"parameter '{name}' must be one of {', '.join(choices)}; got {value!r}")
    return text


def _blend(values: Mapping[str, Any], name: str) -> str:
    """A nonkey_blend spec, checked by the engine's parser ("auto" stays: it depends on the model)."""
    from dcfm_ros.engine.specs import parse_blend

    value = values[name]
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "auto":
        return text
    try:
        return str(parse_blend(text))
    except ValueError as exc:
        raise ParameterError(f"parameter '{name}': {exc}") from exc


def _in_range(values: Mapping[str, Any], name: str, lo: float, hi: float) -> float:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ParameterError(f"parameter '{name}' must be a number in [{lo}, {hi}]; got {value!r}")
    return float(value)


def _int(values: Mapping[str, Any], name: str, lo: int, hi: int) -> int:
    value = values[name]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ParameterError(f"parameter '{name}' must be an integer in [{lo}, {hi}]; got {value!r}")
    return value


def _path_or_empty(values: Mapping[str, Any], name: str) -> str:
    value = values[name]
    if not isinstance(value, str):
        raise ParameterError(f"parameter '{name}' must be a string (a folder path or empty); got {value!r}")
    return value.strip()


def settings_from_values(values: Mapping[str, Any]) -> NodeSettings:
    """Validate a complete {name: value} map (None = unset) and build the settings.

    Raises ParameterError naming the first bad parameter and why.
    """
    missing = [n for n in PARAMETER_NAMES if n not in values]
    if missing:
        raise ParameterError(f"missing parameter(s): {', '.join(missing)}")
    model = values["model"]
    if not isinstance(model, str):
        raise ParameterError(f"parameter 'model' must be a string (a file path or empty); got {model!r}")
    device = values["device"]
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device.strip().lower()):
        raise ParameterError(f"parameter 'device' must be auto, cpu, cuda or cuda:N; got {device!r}")
    keyframe = KeyframeSettings(
        policy=_choice(values, "keyframe.policy", KEYFRAME_POLICIES),
        interval=_int(values, "keyframe.interval", 1, _INT_MAX),
        threshold=_in_range(values, "keyframe.threshold", 0.0, 1.0),
        min_interval=_int(values, "keyframe.min_interval", 1, _INT_MAX),
        max_interval=_int(values, "keyframe.max_interval", 1, _INT_MAX),
        schedule=_choice(values, "keyframe.schedule", KEYFRAME_SCHEDULES),
        spread=_int(values, "keyframe.spread", 1, 64),
        feature_threshold=_in_range(values, "keyframe.feature_threshold", 0.0, 1.0),
    )

    input_size = _size_or_none(values, "input_size", "for the model's size")
    camera_size = _size_or_none(values, "camera_size", "for the network input size")

    classes = values["mask_classes"]
    mask_classes: tuple[str, ...] = ()
    if classes is not None:
        if isinstance(classes, str) or not all(isinstance(c, str) and c for c in classes):
            raise ParameterError(f"parameter 'mask_classes' must be a list of class names; got {classes!r}")
        if len(set(classes)) != len(classes):
            raise ParameterError(f"parameter 'mask_classes' lists a class twice: {list(classes)!r}")
        mask_classes = tuple(classes)

    names = values["cameras"]
    cameras: tuple[str, ...] = ()
    if names is not None:
        from dcfm_ros.engine.specs import check_camera_names

        if isinstance(names, str):
            raise ParameterError(f"parameter 'cameras' must be a list of camera names; got {names!r}")
        try:
            cameras = check_camera_names(list(names))
        except ValueError as exc:
            raise ParameterError(f"parameter 'cameras': {exc}") from exc

    settings = NodeSettings(
        model=model.strip(),
        device=device.strip().lower(),
        precision=_choice(values, "precision", PRECISIONS),
        keyframe=keyframe,
        input_size=input_size,
        camera_size=camera_size,
        mask_classes=mask_classes,
        overlay_alpha=_in_range(values, "overlay_alpha", 0.0, 1.0),
        image_transport=_choice(values, "image_transport", TRANSPORTS),
        qos_depth=_int(values, "qos.depth", 1, 1000),
        qos_reliability=_choice(values, "qos.reliability", RELIABILITIES),
        drop_policy=_choice(values, "drop_policy", DROP_POLICIES),
        confidence_warn_below=_in_range(values, "confidence.warn_below", 0.0, 1.0),
        confidence_window=_int(values, "confidence.window", 1, 10_000),
        nonkey_blend=_blend(values, "nonkey_blend"),
        values=dict(values),
        backend=_choice(values, "backend", BACKENDS),
        backend_cache_dir=_path_or_empty(values, "backend_cache_dir"),
        cameras=cameras,
        camera_batching=_choice(values, "camera_batching", CAMERA_BATCHING),
        viewer_rate=_in_range(values, "viewer_rate", 0.0, 1000.0),
        jpeg_quality=_int(values, "jpeg_quality", 1, 100),
        labels_at=_choice(values, "labels_at", LABEL_SIZES),
        calibration=_calibration(values),
        reduced_decode=_flag(values, "reduced_decode"),
    )
    # Last: the cross-field keyframe rules (threshold < 1, min <= max) come from the engine, whose
    # import loads torch; every other mistake is reported before that.
    keyframe.make_policy()
    return settings


def mask_topic_suffix(class_name: str) -> str:
    """A valid ROS topic token for a class name ('traffic light' -> 'traffic_light')."""
    token = re.sub(r"[^A-Za-z0-9_]", "_", class_name.strip())
    token = re.sub(r"_+", "_", token)
    if not token or token[0].isdigit():
        token = "class_" + token
    return token


def _load(settings: NodeSettings) -> tuple[DCFM, InferenceBackend]:
    """The checkpoint's model and its backend (built once: one set of weights and graphs in memory)."""
    from dcfm_ros.model import CheckpointError, load_checkpoint

    path = settings.model_path
    if not path.is_file():
        what = (f"the packaged default model {path} is not installed; set the parameter 'model' to a "
                f"checkpoint file" if not settings.model else f"model file not found: {path}")
        raise StartupError(f"{what} (parameter 'model')")
    try:
        model, _meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise StartupError(f"cannot load the model (parameter 'model'): {exc}") from exc
    names = tuple(model.config.class_names)
    unknown = [c for c in settings.mask_classes if c not in names]
    if unknown:
        raise StartupError(f"parameter 'mask_classes' names unknown class(es) {unknown}; the model's "
                           f"classes are: {', '.join(names)}")
    suffixes = [mask_topic_suffix(c) for c in settings.mask_classes]
    if len(set(suffixes)) != len(suffixes):
        raise StartupError(f"parameter 'mask_classes': classes {list(settings.mask_classes)} give clashing "
                           f"topic names {suffixes}")
    return model, _backend_for(settings, model)


def _backend_for(settings: NodeSettings, model: DCFM) -> InferenceBackend:
    from dcfm_ros.engine import make_backend
    from dcfm_ros.engine.reference_ring import reference_stream, uses_reference_ring

    try:
        if uses_reference_ring(model):  # MRCFA / SD-CPC: the engine's own path with a reference ring
            ring = reference_stream(model, settings.backend, settings.device, settings.precision, None,
                                    network_size(settings, model))
            return ring  # type: ignore[return-value]
        # Built here (graph export / engine build at start-up, never on a frame).
        net = make_backend(settings.backend, model, settings.device, settings.precision,
                           input_size=network_size(settings, model),
                           cache_dir=settings.backend_cache_dir or None,
                           calibration=settings.calibration or None)
    except (RuntimeError, ValueError) as exc:
        raise StartupError(_cannot_run(settings, exc)) from exc
    return net


def _flag(values: Mapping[str, Any], name: str) -> bool:
    value = values[name]
    if not isinstance(value, bool):
        raise ParameterError(f"parameter '{name}' must be true or false; got {value!r}")
    return value


def _calibration(values: Mapping[str, Any]) -> str:
    """'calibration': empty or a calibration spec (engine.specs grammar), checked here so a typo or a
    held-out folder stops the node at start-up with the reason, before anything is exported."""
    from dcfm_ros.engine.specs import parse_calibration

    text = str(values["calibration"]).strip()
    if text:
        try:
            parse_calibration(text)
        except ValueError as exc:
            raise ParameterError(f"parameter 'calibration': {exc}") from exc
    return text


def _cannot_run(settings: NodeSettings, exc: Exception) -> str:
    return (f"cannot run the model with backend={settings.backend!r}, device={settings.device!r}, "
            f"precision={settings.precision!r}, input_size={settings.input_size}, labels_at="
            f"{settings.labels_at!r}: {exc}")


def build_engine(settings: NodeSettings) -> StreamEngine:
    """Load the checkpoint and build the StreamEngine; StartupError with a clear reason otherwise."""
    model, net = _load(settings)
    return _stream_engine(settings, model, net)


def engine_for(settings: NodeSettings, model: DCFM) -> StreamEngine:
    """The node's StreamEngine for a loaded model (backend, precision, labels_at, policy, schedule as
    the settings say); a test's reference engine built with it runs exactly as the node's."""
    return _stream_engine(settings, model, _backend_for(settings, model))


def _stream_engine(settings: NodeSettings, model: DCFM, net: InferenceBackend) -> StreamEngine:
    from dcfm_ros.engine import StreamEngine

    try:
        return StreamEngine(model, settings.keyframe.make_policy(), input_size=settings.input_size,
                            backend=net, schedule=settings.keyframe.make_schedule(),
                            nonkey_blend=settings.nonkey_blend,
                            # graph_io: on onnxruntime/openvino the frame's one call takes the camera
                            # image and returns the labels (no torch op on the frame's path); the
                            # engine turns it off where it cannot apply
                            graph_io=True, labels_at=settings.labels_at
                            ).prepare_camera(settings.camera_size, decoded_size(settings, model))
    except (RuntimeError, ValueError) as exc:
        raise StartupError(_cannot_run(settings, exc)) from exc


def network_size(settings: NodeSettings, model: DCFM) -> tuple[int, int]:
    """The network input (H, W) the node runs: input_size, else the model's own."""
    return settings.input_size or tuple(model.config.input_size)  # type: ignore[return-value]


def decoded_size(settings: NodeSettings, model: DCFM) -> tuple[int, int] | None:
    """The size a camera_size JPEG reaches the engine at (reduced_decode; node/reduced_decode.py),
    None when that is the camera's own (camera_size unset: the network's size, never reduced)."""
    compressed = settings.image_transport == "compressed"
    if settings.camera_size is None or not (settings.reduced_decode and compressed):
        return None
    from dcfm_ros.engine.specs import reduced_size

    return reduced_size(settings.camera_size, network_size(settings, model))


def batch_cameras(camera_batching: str, backend: InferenceBackend) -> bool:
    """Whether a multi-camera node batches its rounds: `on`, `off`, or `auto` (torch on CUDA only:
    docs/multicamera.md measured a batch slower than one frame at a time on a 2-core CPU)."""
    if camera_batching == "auto":
        return backend.name == "torch" and backend.device.type == "cuda"
    return camera_batching == "on"


def build_multi_engine(settings: NodeSettings) -> MultiStreamEngine:
    """The engine of a node with `cameras`: one model and backend, one stream per camera."""
    from dcfm_ros.engine.multistream import MultiStreamEngine
    from dcfm_ros.engine.reference_ring import uses_reference_ring

    model, net = _load(settings)
    if uses_reference_ring(model):  # its ring holds one stream's frames; one engine per camera would share it
        raise StartupError(f"{model.model_class} runs one camera per node (its reference ring is per "
                           "stream); leave the parameter 'cameras' empty")
    try:
        multi = MultiStreamEngine(model, settings.cameras, settings.keyframe.make_policy(), backend=net,
                                  input_size=settings.input_size, schedule=settings.keyframe.make_schedule,
                                  nonkey_blend=settings.nonkey_blend, drop_policy=settings.drop_policy,
                                  graph_io=True, labels_at=settings.labels_at,  # as the single camera's
                                  batch=batch_cameras(settings.camera_batching, net))
        # one backend for all cameras: preparing one camera's graphs prepares them for every camera
        multi.engine(multi.cameras[0]).prepare_camera(settings.camera_size, decoded_size(settings, model))
        return multi
    except (RuntimeError, ValueError) as exc:
        raise StartupError(_cannot_run(settings, exc)) from exc
