"""int8 calibration frames: read what a CalibrationSpec (engine/specs.py) names, and nothing else.

A calibration is a few dozen camera frames of the model's training split; the quantizer runs the
fp32 graphs on them to choose each activation's int8 range. `read_calibration` returns the frames
(uint8 RGB as the camera sends them), the files it opened (so a test can check that only the named
training frames were read) and a hash over the frames' names and pixels and their count: the key
under which quantized graphs are cached (cache.ensure_int8).

The shipped model's calibration ships with it (dcfm_ros/models/calibration/<model>/: a few CamVid
train frames and the model hash they belong to), so a fresh clone quantizes offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcfm_ros.engine.specs import CalibrationSpec, parse_calibration

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
SHIPPED_CALIBRATIONS = Path(__file__).resolve().parents[2] / "models" / "calibration"
MODEL_HASH_FILE = "model_sha256.txt"


class CalibrationError(ValueError):
    """Calibration frames that cannot be read; the message says what to pass instead."""


@dataclass(frozen=True)
class Calibration:
    spec: CalibrationSpec
    frames: tuple[np.ndarray, ...]  # (H, W, 3) uint8 RGB
    files: tuple[str, ...]  # every file opened
    sha256: str


def _spread(n: int, count: int) -> list[int]:
    """`count` indices spread evenly over 0..n-1 (all of them when count >= n)."""
    if count >= n:
        return list(range(n))
    return [int(i * n / count) for i in range(count)]


def _rgb(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise CalibrationError(f"calibration image {path} cannot be read (not an image?)")
    return np.ascontiguousarray(bgr[..., ::-1])


def _folder(spec: CalibrationSpec) -> tuple[list[np.ndarray], list[str]]:
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist: pass folder:DIR[:N] with a "
                               f"folder of the model's training images")
    names = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise CalibrationError(f"calibration folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    chosen = [names[i] for i in _spread(len(names), spec.count)]
    return [_rgb(p) for p in chosen], [str(p) for p in chosen]


def _video(spec: CalibrationSpec) -> tuple[list[np.ndarray], list[str]]:
    import cv2

    path = Path(spec.path).expanduser()
    cap = cv2.VideoCapture(str(path))
    if not path.is_file() or not cap.isOpened():
        raise CalibrationError(f"calibration video {path} cannot be opened: pass video:FILE[:N] with a "
                               f"video OpenCV reads")
    try:
        frames = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(np.ascontiguousarray(bgr[..., ::-1]))
    finally:
        cap.release()
    if not frames:
        raise CalibrationError(f"calibration video {path} has no frames")
    return [frames[i] for i in _spread(len(frames), spec.count)], [str(path)]


def _bag(spec: CalibrationSpec) -> tuple[list[np.ndarray], list[str]]:
    import cv2
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    path = Path(spec.path).expanduser()
    if not path.exists():
        raise CalibrationError(f"calibration bag {path} does not exist: pass bag:PATH:TOPIC[:N]")
    store = get_typestore(Stores.ROS2_HUMBLE)
    frames: list[np.ndarray] = []
    with AnyReader([path], default_typestore=store) as reader:
        conns = [c for c in reader.connections if c.topic == spec.topic]
        if not conns:
            topics = sorted({c.topic for c in reader.connections})
            raise CalibrationError(f"calibration bag {path} has no topic {spec.topic!r}; it has {topics}")
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype.endswith("CompressedImage"):
                bgr = cv2.imdecode(np.frombuffer(msg.data, np.uint8), cv2.IMREAD_COLOR)
                if bgr is not None:
                    frames.append(np.ascontiguousarray(bgr[..., ::-1]))
            elif conn.msgtype.endswith("/Image") and msg.encoding in ("rgb8", "bgr8"):
                img = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
                img = img.reshape(msg.height, msg.width, 3)
                frames.append(np.ascontiguousarray(img if msg.encoding == "rgb8" else img[..., ::-1]))
            else:
                raise CalibrationError(f"calibration topic {spec.topic!r} carries {conn.msgtype} "
                                       f"({getattr(msg, 'encoding', '')}): use a CompressedImage or an "
                                       f"rgb8/bgr8 Image topic")
    if not frames:
        raise CalibrationError(f"calibration bag {path} topic {spec.topic!r} has no decodable images")
    return [frames[i] for i in _spread(len(frames), spec.count)], [str(path)]


def read_calibration(spec: CalibrationSpec | str) -> Calibration:
    """The frames `spec` names (a spec string is parsed first: ValueError names the grammar)."""
    spec = parse_calibration(spec) if isinstance(spec, str) else spec
    frames, files = {"folder": _folder, "video": _video, "bag": _bag}[spec.kind](spec)
    h = hashlib.sha256(f"{spec.kind}|{spec.topic}|{len(frames)}|".encode())
    for i, f in enumerate(frames):
        h.update(f"{Path(files[min(i, len(files) - 1)]).name}|{f.shape}|".encode())
        h.update(f.tobytes())
    return Calibration(spec, tuple(frames), tuple(files), h.hexdigest())


def shipped_calibration(model_hash: str) -> CalibrationSpec | None:
    """The calibration shipped for the model with this weights hash, if there is one."""
    if not SHIPPED_CALIBRATIONS.is_dir():
        return None
    for folder in sorted(SHIPPED_CALIBRATIONS.iterdir()):
        marker = folder / MODEL_HASH_FILE
        if marker.is_file() and marker.read_text().strip() == model_hash:
            return CalibrationSpec("folder", str(folder), DEFAULT_SHIPPED_COUNT)
    return None


DEFAULT_SHIPPED_COUNT = 1000  # all of the shipped frames


def calibration_for(spec: CalibrationSpec | str | None, model_hash: str) -> Calibration:
    """The int8 calibration frames of a backend: those `spec` names, else the ones shipped with the
    model of this weights hash; ValueError saying what to pass when there are none."""
    spec = spec or shipped_calibration(model_hash)
    if spec is None:
        raise ValueError(f"precision 'int8' needs calibration frames of the model's training split "
                         f"(none ship with model {model_hash[:12]}): pass calibration (the node's "
                         f"parameter 'calibration'), e.g. folder:/data/mine/train:64, and check the "
                         f"accuracy first with dcfm-export MODEL --precision int8 --calibration SPEC "
                         f"--check ...")
    return read_calibration(spec)


def network_inputs(frames: Sequence[np.ndarray], size: tuple[int, int], mean: Sequence[float],
                   std: Sequence[float]) -> list[np.ndarray]:
    """Each frame as the graphs' normalised input x (1, 3, H, W) float32, resized and normalised the
    way the engine does it (engine.preprocess.FramePreprocessor)."""
    import torch

    from dcfm_ros.engine.preprocess import FramePreprocessor

    pre = FramePreprocessor(size, mean, std, torch.device("cpu"), num_classes=2)
    with torch.inference_mode():
        return [pre.normalize(pre.upload(f)).numpy().copy() for f in frames]
