"""dcfm_node end to end: the real node as a subprocess, real rclpy and Fast DDS on both sides.

Every frame's labels are compared exactly with a StreamEngine run in this process on the same frames
(same checkpoint, same keyframe policy, fresh start), so the node must neither alter the images nor
the engine's results. Two node processes are shared by the tests of this module: A (raw images,
drop_policy none, masks) and B (compressed images, drop_policy latest, input_size set).
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import TINY_CLASSES, TINY_PALETTE, Harness, NodeProcess

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_torch_thread")]

OUT = "segmentation/"
A_INTERVAL = 3
A_ALPHA = 0.4
A_MASKS = ("Road", "traffic light")
A_MASK_TOPICS = {"Road": OUT + "masks/Road", "traffic light": OUT + "masks/traffic_light"}
B_INPUT_SIZE = (32, 48)
WAIT_S = 60.0


def texture(seed: int, size: tuple[int, int] = (60, 80)) -> np.ndarray:
    """A smooth random RGB picture; different seeds give different scenes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def raw_msg(pixels: np.ndarray, encoding: str, pad: int = 0) -> Any:
    """sensor_msgs/Image from an (H, W[, C]) uint8 array, rows padded with `pad` garbage bytes."""
    from sensor_msgs.msg import Image

    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def encoded_frames(rgb: np.ndarray, seed: int) -> list[tuple[str, Any, np.ndarray]]:
    """(name, message, the RGB image the node must see) for every supported raw layout."""
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    alpha = rng.integers(0, 256, (h, w, 1), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    packed = rng.integers(16, 240, (h, w, 2), dtype=np.uint8)  # any bytes are valid YUV 4:2:2
    return [
        ("rgb8", raw_msg(rgb, "rgb8"), rgb),
        ("rgb8 padded", raw_msg(rgb, "rgb8", pad=13), rgb),
        ("bgr8", raw_msg(bgr, "bgr8"), rgb),
        ("bgr8 padded", raw_msg(bgr, "bgr8", pad=4), rgb),
        ("rgba8", raw_msg(np.concatenate([rgb, alpha], axis=2), "rgba8"), rgb),
        ("bgra8 padded", raw_msg(np.concatenate([bgr, alpha], axis=2), "bgra8", pad=8), rgb),
        ("mono8 padded", raw_msg(gray, "mono8", pad=3), np.repeat(gray[..., None], 3, axis=2)),
        ("yuv422", raw_msg(packed, "yuv422"), cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_UYVY)),
        ("yuyv padded", raw_msg(packed, "yuyv", pad=2), cv2.cvtColor(packed, cv2.COLOR_YUV2RGB_YUYV)),
    ]


def compressed_msg(rgb: np.ndarray | None, ext: str, data: bytes | None = None) -> Any:
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=f"rgb8; {ext} compressed bgr8")
    if data is None:
        ok, buf = cv2.imencode("." + ext, np.ascontiguousarray(rgb[..., ::-1]))
        assert ok
        data = buf.tobytes()
    msg.data = data
    return msg


def decoded(msg: Any) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR_RGB)


def key_of(header: Any) -> tuple[int, int]:
    return (header.stamp.sec, header.stamp.nanosec)


def image_array(msg: Any) -> np.ndarray:
    """Decode an output Image (mono8, mono16, rgb8) honouring its step."""
    dtype = np.uint16 if msg.encoding == "mono16" else np.uint8
    channels = 3 if msg.encoding == "rgb8" else 1
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    pix = rows[:, : msg.width * channels * np.dtype(dtype).itemsize].copy().view(dtype)
    return pix.reshape(msg.height, msg.width, channels) if channels == 3 else pix


def diag_values(msg: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in msg.status[0].values}


def diag_name(msg: Any) -> str:
    return msg.status[0].name


def reference_engine(params: dict[str, Any], model: Any) -> Any:
    """The StreamEngine a node started with `params` (over its defaults) runs, built in this process the
    way the node builds it (settings.engine_for: same backend, precision -- auto: bf16 where the CPU
    has it --, labels_at, policy, schedule) and at the node's thread count (conftest.NODE_ENV:
    OMP_NUM_THREADS=1; OpenVINO takes torch's at build time, and bf16 sums are rounded differently
    over another number of threads), so its labels can be compared with the node's pixel for pixel."""
    import torch

    from dcfm_ros.engine.settings import engine_for
    from dcfm_ros.node.params import PARAMETERS, settings_from_values

    settings = settings_from_values({**{p.name: p.default for p in PARAMETERS}, **params})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return engine_for(settings, model)
    finally:
        torch.set_num_threads(before)


class NodeUnderTest:
    """One dcfm_node process, a test-side node talking to it, and the in-process reference engine."""

    def __init__(self, ctx: Any, log_dir: Path, ns: str, params: dict[str, Any], checkpoint: Path,
                 topics: dict[str, type], input_size: tuple[int, int] | None = None) -> None:
        from sensor_msgs.msg import CompressedImage, Image

        from dcfm_ros.model import load_checkpoint
        from dcfm_ros.node.params import PARAMETERS, settings_from_values

        # Each node runs in its own namespace (this also checks that its topic names are relative).
        self.ns = ns
        self.proc = NodeProcess({"model": str(checkpoint), **params}, log_dir, ns.strip("/"),
                                ros_args=("-r", f"__ns:={ns}"))
        self.h = Harness(ctx, f"tester_{ns.strip('/')}")
        self.h.watch = self.proc
        self.box: dict[str, list[Any]] = {}
        for topic, msg_type in topics.items():
            self.subscribe(topic, msg_type)
        compressed = params.get("image_transport") == "compressed"
        self.pub = self.h.publisher(self.topic("image/compressed" if compressed else "image"),
                                    CompressedImage if compressed else Image)
        self.h.wait_discovery((self.pub,))
        model, _ = load_checkpoint(checkpoint)
        settings = settings_from_values({**{p.name: p.default for p in PARAMETERS}, **params})
        assert settings.input_size == input_size, "pass input_size both as a param and to NodeUnderTest"
        self.ref = reference_engine(params, model)
        # what the node decodes a compressed frame to (reduced_decode: a JPEG of >= 2x the network's
        # size arrives at 1/2..1/8 scale; test_reduced_decode checks the decode itself)
        self.network = self.ref.input_size if settings.reduced_decode else None
        # ("frame", key, rgb) / ("policy", None, policy) / ("schedule", None, name)
        self.history: list[tuple[str, Any, Any]] = []
        self.replayed = 0
        self.ref_results: dict[tuple[int, int], Any] = {}
        self._last_key = (0, 0)

    def topic(self, name: str) -> str:
        return name if name.startswith("/") else f"{self.ns}/{name}"

    def subscribe(self, name: str, msg_type: type, qos: Any = None) -> list[Any]:
        """Subscribe to the node's topic `name` (relative to its namespace); messages in box[name]."""
        self.box[name] = self.h.subscribe(self.topic(name), msg_type, qos)
        return self.box[name]

    def service(self, name: str) -> str:
        return f"{self.ns}/dcfm_node/{name}"

    def send(self, msg: Any, rgb: np.ndarray | None, frame_id: str = "camera") -> tuple[int, int]:
        """Stamp (unique, now) and publish; `rgb` is what the node must see (None: bad input)."""
        stamp = self.h.node.get_clock().now().to_msg()
        if (stamp.sec, stamp.nanosec) <= self._last_key:
            stamp.sec, stamp.nanosec = self._last_key[0], self._last_key[1] + 1
        msg.header.stamp = stamp
        msg.header.frame_id = frame_id
        key = (stamp.sec, stamp.nanosec)
        self._last_key = key
        if rgb is not None:
            self.history.append(("frame", key, self._as_node_sees(msg, rgb)))
        self.pub.publish(msg)
        return key

    def _as_node_sees(self, msg: Any, rgb: np.ndarray) -> np.ndarray | tuple[np.ndarray, tuple[int, int]]:
        from sensor_msgs.msg import CompressedImage

        from dcfm_ros.node.reduced_decode import decode

        if not isinstance(msg, CompressedImage):
            return rgb
        image = decode(msg, self.network)
        assert np.array_equal(image.full(), rgb), "the test's frame is not what the message decodes to"
        return (image.rgb, image.camera) if image.reduced else rgb

    def set_reference_policy(self, policy: Any) -> None:
        self.history.append(("policy", None, policy))

    def set_reference_schedule(self, schedule: str) -> None:
        self.history.append(("schedule", None, schedule))

    def find(self, topic: str, key: tuple[int, int]) -> Any | None:
        return next((m for m in self.box[topic] if key_of(m.header) == key), None)

    def wait(self, key: tuple[int, int], topics: tuple[str, ...] | None = None) -> dict[str, Any]:
        topics = tuple(t for t in self.box if t != "/diagnostics") if topics is None else topics
        self.h.spin_until(lambda: all(self.find(t, key) is not None for t in topics), WAIT_S,
                          f"outputs {topics} of frame {key}")
        return {t: self.find(t, key) for t in topics}

    def send_until_viewers(self, make: Callable[[], Any], rgb: np.ndarray | None, topics: tuple[str, ...],
                           tries: int = 20) -> tuple[int, int]:
        """Send frames (each `make()`, seen by the node as `rgb`) until one has every output in `topics`;
        that frame's key.

        Why: the node's viewer participant learns of a subscriber on its own time (discovery runs per
        direction), and a frame it processes before that gets no viewer image."""
        labels = (OUT + "labels",) if OUT + "labels" in self.box else (OUT + "info",)
        for _ in range(tries):
            key = self.send(make(), rgb)
            self.wait(key, labels)
            try:
                self.h.spin_until(lambda k=key: all(self.find(t, k) is not None for t in topics), 2.0, "")
            except AssertionError:
                continue
            return key
        raise AssertionError(f"no frame had every one of {topics} in {tries} frames")

    def reference(self, key: tuple[int, int]) -> Any:
        """The reference engine's result for frame `key`, replaying the frames the node processed
        (those with a segmentation/info message; with drop_policy latest some are skipped)."""
        infos = {key_of(m.header) for m in self.box[OUT + "info"]}
        while key not in self.ref_results:
            assert self.replayed < len(self.history), f"frame {key} was never sent"
            kind, k, item = self.history[self.replayed]
            self.replayed += 1
            if kind == "policy":
                self.ref.policy = item
            elif kind == "schedule":
                self.ref.schedule = item
            elif k in infos:
                args = item if isinstance(item, tuple) else (item,)
                self.ref_results[k] = self.ref.process(*args)
        return self.ref_results[key]

    def check_labels(self, key: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Labels of frame `key`: header, size, encoding, and equal to the reference engine's."""
        out = self.wait(key, (OUT + "labels", OUT + "info"))
        labels_msg, info = out[OUT + "labels"], out[OUT + "info"]
        assert labels_msg.header.frame_id == "camera"
        assert (labels_msg.height, labels_msg.width) == shape
        labels = image_array(labels_msg)
        ref = self.reference(key)
        wide = ref.labels.dtype == np.uint16  # more than 255 classes
        assert labels_msg.encoding == ("mono16" if wide else "mono8")
        assert labels_msg.step == shape[1] * (2 if wide else 1)
        assert labels.shape == ref.labels.shape
        assert np.array_equal(labels, ref.labels), f"labels of frame {key} differ from the engine's " \
                                                   f"({int((labels != ref.labels).sum())} pixels)"
        assert info.is_keyframe == ref.is_keyframe
        assert info.frames_since_keyframe == ref.frames_since_key
        assert (info.common_age, info.deep_pass_in_flight) == (ref.common_age, ref.deep_pass_in_flight)
        return labels

    def diagnostics_until(self, predicate: Any, what: str) -> dict[str, str]:
        """The first /diagnostics status of this node (by name), from now on, that satisfies predicate."""
        box = self.box["/diagnostics"]
        start = len(box)
        name = f"{self.ns}/dcfm_node: segmentation"

        def found() -> list[dict[str, str]]:
            return [diag_values(m) for m in box[start:] if diag_name(m) == name and predicate(diag_values(m))]

        self.h.spin_until(lambda: bool(found()), WAIT_S, f"{what} ({name})")
        return found()[0]

    def close(self) -> None:
        self.proc.stop(signal.SIGKILL if self.proc.alive() else signal.SIGINT)
        self.h.close()


@pytest.fixture(scope="module")
def node_a(ros_context: Any, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[NodeUnderTest]:
    from dcfm_ros.msg import SegmentationInfo
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    topics: dict[str, type] = {OUT + "labels": Image, OUT + "color": Image, OUT + "overlay": Image,
                               OUT + "info": SegmentationInfo, "/diagnostics": DiagnosticArray}
    topics.update({t: Image for t in A_MASK_TOPICS.values()})
    params = {"drop_policy": "none", "qos.reliability": "reliable", "qos.depth": 100,
              "keyframe.policy": "fixed", "keyframe.interval": A_INTERVAL, "mask_classes": list(A_MASKS),
              "overlay_alpha": A_ALPHA,
              "device": "cpu"}
    n = NodeUnderTest(ros_context, tmp_path_factory.mktemp("node_a"), "/a", params, tiny_checkpoint, topics)
    yield n
    n.close()


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 classes: the labels no longer fit in mono8."""
    import torch

    from dcfm_ros.model import DCFMConfig, build_model, save_checkpoint

    torch.manual_seed(1)
    n = 300
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=n, class_names=[f"c{i}" for i in range(n)],
                        palette=[(i % 256, (7 * i) % 256, (13 * i) % 256) for i in range(n)],
                        input_size=(32, 48))
    path = tmp_path_factory.mktemp("wide") / "wide.safetensors"
    save_checkpoint(path, build_model(config, pretrained=None))
    return path


@pytest.fixture(scope="module")
def node_b(ros_context: Any, wide_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[NodeUnderTest]:
    """Compressed input, input_size set, and a 300-class model (mono16 labels)."""
    from dcfm_ros.msg import SegmentationInfo
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    topics: dict[str, type] = {OUT + "labels": Image, OUT + "info": SegmentationInfo,
                               "/diagnostics": DiagnosticArray}
    params = {"image_transport": "compressed", "drop_policy": "none", "qos.reliability": "reliable",
              "keyframe.policy": "fixed", "keyframe.interval": 2, "input_size": list(B_INPUT_SIZE)}
    n = NodeUnderTest(ros_context, tmp_path_factory.mktemp("node_b"), "/b", params, wide_checkpoint, topics,
                      input_size=B_INPUT_SIZE)
    yield n
    n.close()


@pytest.fixture(scope="module")
def node_c(ros_context: Any, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[NodeUnderTest]:
    """config/dcfm.yaml as shipped (drop_policy latest, best-effort sensor-data QoS) but the model."""
    from dcfm_ros.msg import SegmentationInfo
    from sensor_msgs.msg import Image

    topics: dict[str, type] = {OUT + "labels": Image, OUT + "info": SegmentationInfo}
    n = NodeUnderTest(ros_context, tmp_path_factory.mktemp("node_c"), "/c", {}, tiny_checkpoint, topics)
    yield n
    n.close()


# -- node A: raw images, drop_policy none --------------------------------------------------------


def test_every_output_has_header_size_and_content(node_a: NodeUnderTest) -> None:
    from dcfm_ros.engine import colorize, overlay

    rgb = texture(1)
    key = node_a.send_until_viewers(lambda: raw_msg(rgb, "rgb8"), rgb,
                                    (OUT + "color", OUT + "overlay", *A_MASK_TOPICS.values()))
    out = node_a.wait(key)
    labels = node_a.check_labels(key, (60, 80))
    for topic, msg in out.items():
        assert key_of(msg.header) == key and msg.header.frame_id == "camera", topic
    for topic in (OUT + "labels", OUT + "color", OUT + "overlay", *A_MASK_TOPICS.values()):
        assert (out[topic].height, out[topic].width) == (60, 80), topic
    color = image_array(out[OUT + "color"])
    assert out[OUT + "color"].encoding == "rgb8" and out[OUT + "color"].step == 80 * 3
    assert np.array_equal(color, colorize(labels, TINY_PALETTE))
    assert out[OUT + "overlay"].encoding == "rgb8"
    assert np.array_equal(image_array(out[OUT + "overlay"]), overlay(rgb, color, A_ALPHA))
    for name, topic in A_MASK_TOPICS.items():
        mask = image_array(out[topic])
        assert out[topic].encoding == "mono8"
        assert np.array_equal(mask, np.where(labels == TINY_CLASSES.index(name), 255, 0).astype(np.uint8))
    info = out[OUT + "info"]
    # per-stage times come from the stages run as calls of their own (torch backend, the engine's
    # profiling mode); the default graph backend runs a frame as one fused call and reports 0 there
    assert info.engine_latency_ms > 0 and info.enc_lo_ms >= 0
    assert np.isfinite(info.end_to_end_latency_ms) and info.end_to_end_latency_ms >= info.engine_latency_ms
    assert info.frames_processed >= 1 and info.frames_dropped == 0


def test_every_raw_encoding_matches_the_engine(node_a: NodeUnderTest) -> None:
    frames = encoded_frames(texture(2), seed=2) + encoded_frames(texture(3, (40, 64)), seed=3)
    keys = [(name, node_a.send(msg, rgb), rgb.shape[:2]) for name, msg, rgb in frames]
    for name, key, shape in keys:
        try:
            node_a.check_labels(key, shape)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


def test_keyframes_follow_the_fixed_interval(node_a: NodeUnderTest) -> None:
    keys = [node_a.send(raw_msg(texture(10 + i), "rgb8"), texture(10 + i)) for i in range(2 * A_INTERVAL)]
    for key in keys:
        node_a.check_labels(key, (60, 80))
    flags = [node_a.find(OUT + "info", k).is_keyframe for k in keys]
    assert sum(flags) == 2, flags
    since = [node_a.find(OUT + "info", k).frames_since_keyframe for k in keys]
    assert all(s < A_INTERVAL for s in since), since


def test_bad_inputs_are_survived_and_counted(node_a: NodeUnderTest) -> None:
    from sensor_msgs.msg import Image

    rgb = texture(20)
    first = node_a.send(raw_msg(rgb, "rgb8"), rgb)
    before = node_a.wait(first)[OUT + "info"].bad_inputs
    short = raw_msg(rgb, "rgb8")
    short.data = bytes(rgb.tobytes()[:-1])
    narrow = raw_msg(rgb, "rgb8")
    narrow.step = 80 * 3 - 3
    bad = [raw_msg(rgb, "32FC1"), raw_msg(rgb, "no_such_encoding"), short, narrow,
           Image(height=0, width=0, encoding="rgb8", step=0), raw_msg(texture(21, (60, 79)), "yuv422")]
    for msg in bad:
        node_a.send(msg, None)
    good = node_a.send(raw_msg(rgb, "rgb8"), rgb)
    node_a.check_labels(good, (60, 80))
    assert node_a.find(OUT + "info", good).bad_inputs == before + len(bad)
    # A resolution change mid-stream: processed at the new size as a keyframe.
    small = texture(22, (48, 64))
    key = node_a.send(raw_msg(small, "rgb8"), small)
    node_a.check_labels(key, (48, 64))
    assert node_a.find(OUT + "info", key).is_keyframe
    back = node_a.send(raw_msg(rgb, "rgb8"), rgb)
    node_a.check_labels(back, (60, 80))
    assert node_a.find(OUT + "info", back).is_keyframe
    values = node_a.diagnostics_until(lambda v: int(v["bad_inputs"]) >= before + len(bad)
                                      and int(v["resolution_changes"]) >= 2, "bad inputs in /diagnostics")
    assert values["device"] == "cpu"
    assert node_a.proc.alive()


def _set(node: NodeUnderTest, **values: Any) -> Any:
    from rcl_interfaces.srv import SetParametersAtomically
    from rclpy.parameter import Parameter

    request = SetParametersAtomically.Request(
        parameters=[Parameter(k.replace("__", "."), value=v).to_parameter_msg() for k, v in values.items()])
    return node.h.call(SetParametersAtomically, node.service("set_parameters_atomically"), request).result


def _get(node: NodeUnderTest, *names: str) -> list[Any]:
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    request = GetParameters.Request(names=list(names))
    reply = node.h.call(GetParameters, node.service("get_parameters"), request)
    return [parameter_value_to_python(v) for v in reply.values]


def test_rejected_parameters_keep_the_old_value(node_a: NodeUnderTest) -> None:
    rejected = [
        ({"keyframe__interval": 0}, "interval"),
        ({"keyframe__min_interval": 50}, "max_interval"),
        ({"keyframe__policy": "sometimes"}, "policy"),
        ({"keyframe__threshold": 1.0}, "threshold"),
        ({"keyframe__interval": "two"}, "type"),
        ({"overlay_alpha": 1.5}, "overlay_alpha"),
        ({"device": "cuda"}, "read-only"),
        ({"keyframe__interval": 5, "keyframe__max_interval": 0}, "max_interval"),
    ]
    for values, word in rejected:
        result = _set(node_a, **values)
        assert not result.successful, values
        assert word in result.reason, (values, result.reason)
    assert _get(node_a, "keyframe.interval", "keyframe.min_interval", "keyframe.policy", "keyframe.threshold",
                "overlay_alpha", "device", "keyframe.max_interval") == [A_INTERVAL, 1, "fixed", 0.1, A_ALPHA,
                                                                        "cpu", 30]


def test_keyframe_parameters_change_at_run_time(node_a: NodeUnderTest) -> None:
    from dcfm_ros.engine import FixedInterval

    rgb = texture(30)
    node_a.check_labels(node_a.send(raw_msg(rgb, "rgb8"), rgb), (60, 80))  # all earlier frames done
    assert _set(node_a, keyframe__interval=2).successful
    node_a.set_reference_policy(FixedInterval(2))
    keys = [node_a.send(raw_msg(texture(31 + i), "rgb8"), texture(31 + i)) for i in range(4)]
    for key in keys:
        node_a.check_labels(key, (60, 80))
    assert [node_a.find(OUT + "info", k).frames_since_keyframe for k in keys].count(0) == 2
    assert _get(node_a, "keyframe.interval") == [2]
    assert _set(node_a, use_sim_time=False).successful  # rclpy's own parameters stay settable


def test_keyframe_schedule_changes_at_run_time(node_a: NodeUnderTest) -> None:
    rgb = texture(40)
    node_a.check_labels(node_a.send(raw_msg(rgb, "rgb8"), rgb), (60, 80))  # all earlier frames done
    assert not _set(node_a, keyframe__schedule="later").successful
    assert not _set(node_a, keyframe__spread=0).successful
    assert _set(node_a, keyframe__schedule="spread", keyframe__spread=2).successful
    node_a.set_reference_schedule("spread:2")
    keys = [node_a.send(raw_msg(texture(41 + i), "rgb8"), texture(41 + i)) for i in range(6)]
    for key in keys:
        node_a.check_labels(key, (60, 80))  # labels, common_age, deep_pass_in_flight = the engine's
    infos = [node_a.find(OUT + "info", k) for k in keys]
    # it took effect: keyframes no longer use their own F_co, later frames use a 2-frame-old one
    assert any(i.is_keyframe for i in infos) and all(i.common_age > 0 for i in infos)
    assert any(i.deep_pass_in_flight for i in infos)
    assert _get(node_a, "keyframe.schedule", "keyframe.spread") == ["spread", 2]
    assert _set(node_a, keyframe__schedule="sync").successful
    node_a.set_reference_schedule("sync")
    keys = [node_a.send(raw_msg(texture(50 + i), "rgb8"), texture(50 + i)) for i in range(A_INTERVAL)]
    for key in keys:
        node_a.check_labels(key, (60, 80))
    assert any(node_a.find(OUT + "info", k).common_age == 0 for k in keys)


def test_classes_reach_a_late_subscriber(node_a: NodeUnderTest) -> None:
    from dcfm_ros.msg import SegmentationClasses
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    box = node_a.subscribe(OUT + "classes", SegmentationClasses, qos)
    node_a.h.spin_until(lambda: len(box) > 0, WAIT_S, "segmentation/classes (transient local)")
    msg = box[0]
    assert list(msg.ids) == list(range(len(TINY_CLASSES)))
    assert list(msg.names) == list(TINY_CLASSES)
    colors = [(round(c.r * 255), round(c.g * 255), round(c.b * 255), c.a) for c in msg.colors]
    assert colors == [(*p, 1.0) for p in TINY_PALETTE]


def test_drop_policy_none_loses_no_frame(node_a: NodeUnderTest) -> None:
    frames = [texture(100 + i) for i in range(25)]
    keys = [node_a.send(raw_msg(f, "rgb8"), f) for f in frames]  # as fast as possible
    node_a.h.spin_until(lambda: node_a.find(OUT + "labels", keys[-1]) is not None, WAIT_S, "the last frame")
    got = [key_of(m.header) for m in node_a.box[OUT + "labels"]]
    assert got[-len(keys):] == keys  # all of them, in order
    for key in keys:
        node_a.check_labels(key, (60, 80))
    last = node_a.find(OUT + "info", keys[-1])
    assert last.frames_dropped == 0
    assert last.frames_received == last.frames_processed + last.bad_inputs


def test_sigint_shuts_down_cleanly(node_a: NodeUnderTest) -> None:
    rc = node_a.proc.stop(signal.SIGINT)
    out = node_a.proc.output()
    assert rc == 0, out
    assert "Traceback" not in out and "[ERROR]" not in out, out


# -- node B: compressed images, drop_policy latest, input_size ----------------------------------------


def test_compressed_png_and_jpeg(node_b: NodeUnderTest) -> None:
    rgb = texture(40, (72, 96))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ok, gray_jpeg = cv2.imencode(".jpg", gray)
    assert ok
    msgs = [compressed_msg(rgb, "png"), compressed_msg(rgb, "jpeg"), compressed_msg(rgb, "jpg"),
            compressed_msg(None, "jpeg", gray_jpeg.tobytes())]
    for msg in msgs:
        key = node_b.send(msg, decoded(msg))
        node_b.check_labels(key, (72, 96))
    # the JPEGs (72x96, 2x the 32x48 input) arrived reduced; the start-up log says from which size
    assert "JPEG of >= 63x95 (H x W) decoded reduced" in node_b.proc.output()


def test_corrupt_compressed_images_are_counted(node_b: NodeUnderTest) -> None:
    rgb = texture(41, (72, 96))
    first = node_b.send(compressed_msg(rgb, "png"), rgb)
    node_b.check_labels(first, (72, 96))
    before = node_b.find(OUT + "info", first).bad_inputs
    jpeg = compressed_msg(rgb, "jpeg")
    truncated = compressed_msg(None, "jpeg", bytes(jpeg.data)[:20])
    garbage = compressed_msg(None, "jpeg", bytes(range(256)) * 4)
    empty = compressed_msg(None, "png", b"")
    for msg in (truncated, garbage, empty):
        node_b.send(msg, None)
    key = node_b.send(compressed_msg(rgb, "png"), rgb)
    node_b.check_labels(key, (72, 96))
    assert node_b.find(OUT + "info", key).bad_inputs == before + 3


def test_outputs_without_subscribers_are_not_computed(node_b: NodeUnderTest) -> None:
    from sensor_msgs.msg import Image

    rgb = texture(42, (72, 96))
    node_b.check_labels(node_b.send(compressed_msg(rgb, "png"), rgb), (72, 96))
    values = node_b.diagnostics_until(lambda v: "published_labels" in v, "diagnostics after a frame")
    assert "published_color" not in values and "published_overlay" not in values
    node_b.subscribe(OUT + "color", Image)
    node_b.h.wait_discovery()
    node_b.send_until_viewers(lambda: compressed_msg(rgb, "png"), rgb, (OUT + "color",))
    values = node_b.diagnostics_until(lambda v: int(v.get("published_color", 0)) >= 1, "published_color")
    assert "published_overlay" not in values


# -- node C: the shipped config (drop_policy latest, best-effort input) ----------------------------


def _send_until_processed(node: NodeUnderTest, seed: int) -> tuple[int, int]:
    """Send a new frame until the node answers one (best-effort input may lose any); its key."""
    for attempt in range(5):
        rgb = texture(seed + attempt, (120, 160))
        key = node.send(raw_msg(rgb, "rgb8"), rgb)
        try:
            node.h.spin_until(lambda k=key: node.find(OUT + "info", k) is not None, 10.0, "a processed frame")
            return key
        except AssertionError:
            continue
    raise AssertionError("the node answered none of 5 frames")


def test_drop_policy_latest_skips_and_counts(node_c: NodeUnderTest) -> None:
    # First one frame through: a best-effort reader loses what is sent before it has matched the writer,
    # which the writer cannot see, so a burst sent straight after start-up can vanish whole.
    _send_until_processed(node_c, 100)
    frames = [texture(200 + i, (120, 160)) for i in range(30)]
    for f in frames:
        node_c.send(raw_msg(f, "rgb8"), f)
    # A sentinel after the burst: the newest frame is always processed.
    key = _send_until_processed(node_c, 300)
    info = node_c.find(OUT + "info", key)
    assert info is not None
    assert info.frames_dropped > 0
    assert info.frames_received == info.frames_processed + info.frames_dropped + info.bad_inputs
    node_c.check_labels(key, (120, 160))


def test_sigterm_shuts_down_cleanly(node_c: NodeUnderTest) -> None:
    rc = node_c.proc.stop(signal.SIGTERM)
    out = node_c.proc.output()
    assert rc == 0, out
    assert "Traceback" not in out, out


# -- start-up failures: clear message, exit code 1 ------------------------------------------------------


FAILURES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "missing model file": ({"model": "/nonexistent/dir/model.safetensors"}, ("model file not found",)),
    "bad model file": ({"model": "BAD"}, ("cannot load the model", "safetensors")),
    "unknown mask class": ({"mask_classes": ["Road", "Unicorn"]}, ("Unicorn", "traffic light")),
    "cuda without a GPU": ({"device": "cuda"}, ("CUDA is not available",)),
    "unknown drop_policy": ({"drop_policy": "sometimes"}, ("drop_policy",)),
    "interval out of range": ({"keyframe.interval": 0}, ("keyframe.interval",)),
    "min above max": ({"keyframe.min_interval": 40}, ("max_interval",)),
}


def _not_applicable(case: str) -> str | None:
    import torch

    if case == "cuda without a GPU" and torch.cuda.is_available():
        return "a GPU is present: device cuda is valid here"
    return None


def test_empty_model_parameter_means_the_shipped_camvid_model() -> None:
    from dcfm_ros.model import read_checkpoint_meta
    from dcfm_ros.node.params import default_model_path

    meta = read_checkpoint_meta(default_model_path())
    assert meta["config"].backbone == "efficientnet-lite0"
    assert meta["config"].class_names[:4] == ("Sky", "Building", "Pole", "Road")


@pytest.fixture(scope="module")
def failed_starts(tiny_checkpoint: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """All failing start-ups at once (each pays the torch import; in parallel they overlap)."""
    log_dir = tmp_path_factory.mktemp("failures")
    bad = log_dir / "bad.safetensors"
    bad.write_bytes(b"this is not a safetensors file" * 10)
    procs = {}
    for i, (name, (params, _)) in enumerate(FAILURES.items()):
        if _not_applicable(name):
            continue  # the node would start: nothing to wait for
        values = {"model": str(tiny_checkpoint), **params}
        if values["model"] == "BAD":
            values["model"] = str(bad)
        procs[name] = NodeProcess(values, log_dir, f"fail{i}")
    results = {}
    for name, proc in procs.items():
        try:
            rc = proc.wait()
        except subprocess.TimeoutExpired:  # it started after all: fail that case, not the others
            rc = proc.stop(signal.SIGKILL)
        results[name] = (rc, proc.output())
    return results


@pytest.mark.parametrize("case", list(FAILURES))
def test_refuses_to_start_with_a_clear_message(case: str, failed_starts: dict[str, tuple[int, str]]) -> None:
    reason = _not_applicable(case)
    if reason:
        pytest.skip(reason)
    rc, out = failed_starts[case]
    assert rc == 1, out
    for word in FAILURES[case][1]:
        assert word in out, out
    assert "cannot start" in out and "Traceback" not in out, out
