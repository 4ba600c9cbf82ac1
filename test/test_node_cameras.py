"""dcfm_node with the parameter `cameras`: one node, one model, one stream per camera (issue 22).

The real node as a subprocess over real rclpy and Fast DDS. Every camera's labels are compared exactly
with a single-camera StreamEngine run in this process on that camera's frames alone (same checkpoint,
same keyframe policy, fresh start), so no stream state leaks between cameras. Reliable transport and
drop_policy none: every frame sent is processed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_CLASSES, Harness, NodeProcess
from test_node import image_array, key_of, raw_msg, texture

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures("one_torch_thread")]

NS = "/mc"
CAMERAS = ("front", "rear")
SHAPES = {"front": (60, 80), "rear": (48, 64)}  # cameras may differ in resolution
INTERVAL = 3
WAIT_S = 60.0


class MultiCameraNode:
    """The node process, a test-side node with one publisher per camera, and one reference engine per
    camera."""

    def __init__(self, ctx: Any, log_dir: Path, checkpoint: Path, batching: str) -> None:
        from dcfm_ros.msg import SegmentationClasses, SegmentationInfo
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image

        from dcfm_ros.engine import FixedInterval, StreamEngine
        from dcfm_ros.model import load_checkpoint

        params = {"model": str(checkpoint), "cameras": list(CAMERAS), "backend": "torch", "device": "cpu",
                  "keyframe.policy": "fixed", "keyframe.interval": INTERVAL, "drop_policy": "none",
                  "qos.reliability": "reliable", "camera_batching": batching}
        self.proc = NodeProcess(params, log_dir, "multicam", ros_args=("-r", f"__ns:={NS}"))
        self.h = Harness(ctx, "tester_multicam")
        self.h.watch = self.proc
        self.box: dict[str, list[Any]] = {}
        for cam in CAMERAS:
            for name, msg_type in (("labels", Image), ("info", SegmentationInfo),
                                   ("classes", SegmentationClasses)):
                topic = f"{NS}/{cam}/segmentation/{name}"
                self.box[topic] = self.h.subscribe(topic, msg_type, _latched() if name == "classes" else None)
        self.box["/diagnostics"] = self.h.subscribe("/diagnostics", DiagnosticArray)
        self.pubs = {cam: self.h.publisher(f"{NS}/{cam}/image", Image) for cam in CAMERAS}
        self.h.wait_discovery(tuple(self.pubs.values()))
        model, _ = load_checkpoint(checkpoint)
        self.ref = {cam: StreamEngine(model, FixedInterval(INTERVAL), "cpu", backend="torch")
                    for cam in CAMERAS}
        self.history: dict[str, list[tuple[str, Any, Any]]] = {cam: [] for cam in CAMERAS}
        self.replayed = dict.fromkeys(CAMERAS, 0)
        self.results: dict[tuple[str, tuple[int, int]], Any] = {}
        self._last = (0, 0)

    def send(self, cam: str, msg: Any, rgb: np.ndarray | None) -> tuple[int, int]:
        stamp = self.h.node.get_clock().now().to_msg()
        if (stamp.sec, stamp.nanosec) <= self._last:
            stamp.sec, stamp.nanosec = self._last[0], self._last[1] + 1
        msg.header.stamp, msg.header.frame_id = stamp, f"{cam}_optical"
        key = self._last = (stamp.sec, stamp.nanosec)
        if rgb is not None:
            self.history[cam].append(("frame", key, rgb))
        self.pubs[cam].publish(msg)
        return key

    def set_reference_policy(self, policy: Any) -> None:
        for cam in CAMERAS:
            self.history[cam].append(("policy", None, policy))

    def out(self, cam: str, name: str) -> list[Any]:
        return self.box[f"{NS}/{cam}/segmentation/{name}"]

    def find(self, cam: str, name: str, key: tuple[int, int]) -> Any | None:
        return next((m for m in self.out(cam, name) if key_of(m.header) == key), None)

    def reference(self, cam: str, key: tuple[int, int]) -> Any:
        while (cam, key) not in self.results:
            kind, k, item = self.history[cam][self.replayed[cam]]
            self.replayed[cam] += 1
            if kind == "policy":
                self.ref[cam].policy = item
            else:
                self.results[(cam, k)] = self.ref[cam].process(item)
        return self.results[(cam, key)]

    def check(self, cam: str, key: tuple[int, int]) -> Any:
        """Frame `key` of `cam`: on that camera's topics only, with its header and resolution, and
        equal to that camera's own reference engine."""
        self.h.spin_until(lambda: self.find(cam, "labels", key) is not None and self.find(cam, "info", key)
                          is not None, WAIT_S, f"outputs of {cam} frame {key}")
        labels_msg, info = self.find(cam, "labels", key), self.find(cam, "info", key)
        assert labels_msg.header.frame_id == info.header.frame_id == f"{cam}_optical"
        assert (labels_msg.height, labels_msg.width) == SHAPES[cam]
        for other in CAMERAS:
            if other != cam:
                assert self.find(other, "labels", key) is None, f"{cam}'s frame came out on {other}"
        ref = self.reference(cam, key)
        labels = image_array(labels_msg)
        assert np.array_equal(labels, ref.labels), f"{cam} frame {key}: {(labels != ref.labels).sum()} pixels"
        assert (info.is_keyframe, info.frames_since_keyframe, info.common_age) == (
            ref.is_keyframe, ref.frames_since_key, ref.common_age)
        return info

    def close(self) -> None:
        import signal

        self.proc.stop(signal.SIGKILL if self.proc.alive() else signal.SIGINT)
        self.h.close()


def _latched() -> Any:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@pytest.fixture(scope="module", params=["off", "on"])  # on: rounds of both cameras as one batch
def node(ros_context: Any, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory,
         request: pytest.FixtureRequest) -> Iterator[MultiCameraNode]:
    n = MultiCameraNode(ros_context, tmp_path_factory.mktemp("multicam"), tiny_checkpoint, request.param)
    try:
        yield n
    finally:
        n.close()


def _frame(cam: str, seed: int) -> np.ndarray:
    return texture(seed + (100 if cam == "rear" else 0), SHAPES[cam])


def test_each_camera_equals_its_own_engine_on_its_own_topics(node: MultiCameraNode) -> None:
    sent = []
    for i in range(7):  # the rear camera at about half the front's rate
        for cam in (("front", "rear") if i % 2 == 0 else ("front",)):
            rgb = _frame(cam, i)
            sent.append((cam, node.send(cam, raw_msg(rgb, "rgb8"), rgb)))
    infos = {(cam, key): node.check(cam, key) for cam, key in sent}
    # keyframes every INTERVAL frames of each camera, counted per camera (not over the node)
    for cam in CAMERAS:
        flags = [infos[(c, k)].is_keyframe for c, k in sent if c == cam]
        assert flags == [i % INTERVAL == 0 for i in range(len(flags))], (cam, flags)
        last = infos[[(c, k) for c, k in sent if c == cam][-1]]
        assert (last.frames_received, last.frames_processed, last.frames_dropped) == (len(flags),) * 2 + (0,)
    # each camera's class map, latched, on its own topic
    node.h.spin_until(lambda: all(node.out(c, "classes") for c in CAMERAS), WAIT_S, "both class maps")
    assert all(list(node.out(c, "classes")[-1].names) == list(TINY_CLASSES) for c in CAMERAS)
    # the topic layout: per camera, nothing on the single-camera names
    def topics() -> set[str]:
        return {name for name, _types in node.h.node.get_topic_names_and_types()}

    # the viewer topics come from the node's viewer participant: discovered on their own
    wanted = {f"{NS}/{cam}/segmentation/{t}" for cam in CAMERAS for t in ("overlay", "overlay/compressed")}
    node.h.spin_until(lambda: wanted <= topics(), WAIT_S, "every camera's viewer topics")
    assert f"{NS}/segmentation/labels" not in topics() and f"{NS}/image" not in topics()


def test_a_bad_frame_counts_for_its_camera_only(node: MultiCameraNode) -> None:
    bad = raw_msg(_frame("rear", 50), "rgb8")
    bad.data = bytes(bad.data)[:-100]  # shorter than height * step
    node.send("rear", bad, None)
    keys = [(cam, node.send(cam, raw_msg(_frame(cam, 60 + i), "rgb8"), _frame(cam, 60 + i)))
            for i in range(2) for cam in CAMERAS]
    infos = {(cam, key): node.check(cam, key) for cam, key in keys}
    last = {cam: infos[[(c, k) for c, k in keys if c == cam][-1]] for cam in CAMERAS}
    assert last["rear"].bad_inputs == 1 and last["front"].bad_inputs == 0


def test_a_camera_that_stops_never_stalls_the_others(node: MultiCameraNode) -> None:
    # front sends one more frame and goes silent; rear keeps sending and is served
    node.check("front", node.send("front", raw_msg(_frame("front", 70), "rgb8"), _frame("front", 70)))
    keys = [node.send("rear", raw_msg(_frame("rear", 71 + i), "rgb8"), _frame("rear", 71 + i))
            for i in range(4)]
    for key in keys:
        node.check("rear", key)


def test_a_runtime_parameter_change_applies_to_every_camera(node: MultiCameraNode) -> None:
    from rcl_interfaces.srv import SetParametersAtomically
    from rclpy.parameter import Parameter

    from dcfm_ros.engine import FixedInterval

    # all earlier frames are done: the reference's policy changes at the same point as the node's
    for cam in CAMERAS:
        node.check(cam, node.send(cam, raw_msg(_frame(cam, 80), "rgb8"), _frame(cam, 80)))
    request = SetParametersAtomically.Request(
        parameters=[Parameter("keyframe.interval", value=1).to_parameter_msg()])
    reply = node.h.call(SetParametersAtomically, f"{NS}/dcfm_node/set_parameters_atomically", request)
    assert reply.result.successful
    node.set_reference_policy(FixedInterval(1))
    keys = [(cam, node.send(cam, raw_msg(_frame(cam, 81 + i), "rgb8"), _frame(cam, 81 + i)))
            for i in range(2) for cam in CAMERAS]
    assert all(node.check(cam, key).is_keyframe for cam, key in keys)


def test_one_diagnostics_status_per_camera(node: MultiCameraNode) -> None:
    box = node.box["/diagnostics"]
    start = len(box)
    names = {f"{NS}/dcfm_node: {cam} segmentation" for cam in CAMERAS}

    def statuses() -> dict[str, dict[str, str]]:
        out = {}
        for msg in box[start:]:
            for status in msg.status:
                if status.name in names:
                    out[status.name] = {kv.key: kv.value for kv in status.values}
        return out

    node.h.spin_until(lambda: len(statuses()) == 2, WAIT_S, "a diagnostics status per camera")
    got = statuses()
    front, rear = got[f"{NS}/dcfm_node: front segmentation"], got[f"{NS}/dcfm_node: rear segmentation"]
    assert front["camera"] == "front" and front["input_topic"] == f"{NS}/front/image"
    assert rear["bad_inputs"] == "1" and front["bad_inputs"] == "0"
    assert int(front["frames_processed"]) > 0 and int(rear["frames_processed"]) > 0
    assert front["cameras"] == "front,rear"


def test_stress_soak_with_four_cameras(tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """dcfm-stress soak --cameras 4 (short): every camera's frames answered, none lost, clean exit."""
    import json

    from dcfm_ros.tools.stress.cli import main

    for var in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "FASTDDS_BUILTIN_TRANSPORTS"):
        monkeypatch.setenv(var, "")  # the tool sets them for its run; restored afterwards
    assert main(["--model", str(tiny_checkpoint), "--json", "soak", "--cameras", "4", "--frames", "40",
                 "--size", "60x80", "--mark", "20"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["setup"] == "one node, 4 cameras" and r["exit_codes"] == [0]
    assert (r["frames_sent"], r["frames_answered"], r["frames_lost"]) == (40, 40, 0)
    assert sorted(r["per_camera"]) == ["cam0", "cam1", "cam2", "cam3"]
    assert all(c["answered"] == 10 for c in r["per_camera"].values())
