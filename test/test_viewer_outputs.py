"""Viewer outputs never slow the labels (issue 21).

Unit level: the latest-only slots and the viewer worker (a publisher that blocks stands for a viewer
that stops reading). Between processes (real dcfm_node, real rclpy over Fast DDS): a node whose viewer
path is slowed on purpose (DCFM_NODE_VIEWER_DELAY_S) and a second process subscribed to color and
overlay that never spins; the labels of every frame still arrive, before the viewer outputs of the
same frame, the viewer slots skip and count, and the compressed topics decode to the raw images.
Counts and orderings only, no timing thresholds.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from conftest import TINY_PALETTE, Harness, NodeProcess, ros_env

from dcfm_ros.node.viewer_publisher import LatestSlots, ViewerFrame, ViewerPublisher, ViewerTopic

OUT = "segmentation/"
WAIT_S = 60.0
FRAMES = 12
DELAY_S = 1.0
JPEG_QUALITY = 90


# -- unit: slots and worker --------------------------------------------------------------------------


def test_latest_slot_keeps_the_newest_and_counts_skips() -> None:
    slots: LatestSlots[str, int] = LatestSlots()
    assert slots.put("color", 1) is False
    assert slots.put("color", 2) is True  # frame 1 never taken: skipped
    assert slots.put("color", 3) is True
    assert slots.put("overlay", 3) is False
    assert slots.take_all() == {"color": 3, "overlay": 3}
    assert slots.take_all(timeout=0.01) == {}
    assert slots.put("color", 4) is False  # the slot was emptied by take_all
    assert slots.skipped() == {"color": 2}
    slots.close()
    assert slots.take_all() == {}


class _BlockingPublisher:
    """A publisher whose publish() waits until released: a viewer path that stopped moving."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.published: list[int] = []

    def get_subscription_count(self) -> int:
        return 1

    def publish(self, msg: int) -> None:
        self.entered.set()
        self.release.wait(30.0)
        self.published.append(msg)


def _frame(i: int) -> ViewerFrame:
    labels = np.full((4, 6), i % 5, np.uint8)
    return ViewerFrame(header=i, rgb=np.zeros((4, 6, 3), np.uint8), labels=labels, palette=TINY_PALETTE,
                       alpha=0.5, jpeg_quality=80)


def test_a_stuck_viewer_never_blocks_offers_and_gets_the_newest_frame() -> None:
    pub = _BlockingPublisher()
    done = threading.Event()
    published: list[list[str]] = []

    def on_published(names: list[str]) -> None:
        published.append(names)
        if len(published) == 2:
            done.set()

    viewers = ViewerPublisher([ViewerTopic("color", pub, lambda f: f.header)], on_published,
                              lambda exc: pytest.fail(f"viewer error: {exc}"))
    viewers.start()
    try:
        assert viewers.offer(lambda: _frame(0), 0.0) == ["color"]
        assert pub.entered.wait(10.0)  # the worker is now stuck inside publish() of frame 0
        for i in range(1, 50):  # returns at once every time, though nothing is being published
            assert viewers.offer(lambda i=i: _frame(i), 0.0) == ["color"]
        pub.release.set()
        assert done.wait(10.0)
        # frame 0 (in flight), then the newest; the 48 in between were skipped and counted
        assert pub.published == [0, 49]
        assert viewers.counters()["viewer_skipped_color"] == "48"
    finally:
        pub.release.set()
        viewers.stop()


class _UnackedPublisher(_BlockingPublisher):
    """Publishes at once, but its readers acknowledge nothing until `release` is set."""

    def publish(self, msg: int) -> None:
        self.published.append(msg)
        self.entered.set()

    def wait_for_all_acked(self, _timeout: Any) -> bool:
        return self.release.is_set()


def test_next_message_waits_until_readers_acknowledged_the_last() -> None:
    pub = _UnackedPublisher()
    viewers = ViewerPublisher([ViewerTopic("overlay", pub, lambda f: f.header)], lambda names: None,
                              lambda exc: pytest.fail(f"viewer error: {exc}"))
    viewers.start()
    try:
        viewers.offer(lambda: _frame(0), 0.0)
        assert pub.entered.wait(10.0)
        for i in range(1, 20):
            viewers.offer(lambda i=i: _frame(i), 0.0)
        assert pub.published == [0]  # frame 0 not acknowledged yet: nothing more went out
        pub.release.set()
        deadline = time.monotonic() + 10.0
        while pub.published[-1] != 19 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.published == [0, 19]  # then the newest only
        assert viewers.counters()["viewer_skipped_overlay"] == "18"
    finally:
        viewers.stop()


def test_viewer_rate_caps_offers_and_counts_them() -> None:
    pub = _BlockingPublisher()
    pub.release.set()
    viewers = ViewerPublisher([ViewerTopic("color", pub, lambda f: f.header)], lambda names: None,
                              lambda exc: None)
    offered = [viewers.offer(lambda i=i: _frame(i), 0.5) for i in range(5)]  # one per 2 s at most
    assert offered == [["color"], [], [], [], []]
    assert viewers.counters()["viewer_rate_skipped"] == "4"


def test_frame_colour_is_made_once_for_every_topic_of_the_frame() -> None:
    frame = _frame(2)
    assert frame.color is frame.color and frame.overlay is frame.overlay
    assert np.array_equal(frame.color[0, 0], TINY_PALETTE[2])


# -- between processes: a slowed viewer path and a viewer process that never reads ---------------------

STUCK_VIEWER = textwrap.dedent("""
    import sys, time
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    rclpy.init()
    node = rclpy.create_node("stuck_viewer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    subs = [node.create_subscription(Image, t, lambda m: None, qos) for t in sys.argv[1:]]
    print("subscribed", flush=True)
    time.sleep(600)  # never spins: nothing is ever taken from the reader
""")


@pytest.fixture(scope="module")
def slowed(ros_context: Any, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, Any]]:
    from dcfm_ros.msg import SegmentationInfo
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CompressedImage, Image

    log_dir = tmp_path_factory.mktemp("viewers")
    ns = "/v"
    proc = NodeProcess({"model": str(tiny_checkpoint), "drop_policy": "none", "qos.reliability": "reliable",
                        "qos.depth": 100, "device": "cpu", "jpeg_quality": JPEG_QUALITY}, log_dir, "node",
                       env={"DCFM_NODE_VIEWER_DELAY_S": str(DELAY_S)}, ros_args=("-r", f"__ns:={ns}"))
    stuck = subprocess.Popen([sys.executable, "-c", STUCK_VIEWER, f"{ns}/{OUT}color", f"{ns}/{OUT}overlay"],
                             env=ros_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    h = Harness(ros_context, "viewer_tester")
    h.watch = proc
    arrivals: list[tuple[str, tuple[int, int], int]] = []  # (topic, frame key, writer's source time)
    boxes: dict[str, list[Any]] = {}
    topics = {"labels": Image, "info": SegmentationInfo, "color": Image, "overlay": Image,
              "color/compressed": CompressedImage, "overlay/compressed": CompressedImage}
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    for name, msg_type in topics.items():
        box = boxes.setdefault(name, [])

        def cb(msg: Any, info: Any, name: str = name, box: list[Any] = box) -> None:
            box.append(msg)
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            arrivals.append((name, key, info["source_timestamp"]))

        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        h.subs[name] = h.node.create_subscription(msg_type, f"{ns}/{OUT}{name}", cb, qos)
    diag = h.subscribe("/diagnostics", DiagnosticArray)
    pub = h.publisher(f"{ns}/image", Image)
    try:
        assert stuck.stdout is not None and stuck.stdout.readline().strip() == "subscribed"
        h.wait_discovery((pub,))
        # the stuck viewer's readers have matched the node's writers too
        h.spin_until(lambda: all(c >= 2 for c in (h.node.count_subscribers(f"{ns}/{OUT}color"),
                                                  h.node.count_subscribers(f"{ns}/{OUT}overlay"))),
                     WAIT_S, "the stuck viewer's subscriptions")
        yield {"h": h, "pub": pub, "boxes": boxes, "arrivals": arrivals, "diag": diag, "ns": ns, "proc": proc}
    finally:
        stuck.kill()
        stuck.wait()
        proc.stop()
        h.close()


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (160, 120), interpolation=cv2.INTER_CUBIC)


def _key(msg: Any) -> tuple[int, int]:
    return (msg.header.stamp.sec, msg.header.stamp.nanosec)


def test_labels_of_every_frame_come_first_while_viewer_slots_skip(slowed: dict[str, Any]) -> None:
    from sensor_msgs.msg import Image

    h, boxes, arrivals = slowed["h"], slowed["boxes"], slowed["arrivals"]
    status_name = f"{slowed['ns']}/dcfm_node: segmentation"

    def values() -> list[dict[str, str]]:
        return [{kv.key: kv.value for kv in m.status[0].values} for m in slowed["diag"]
                if m.status[0].name == status_name]

    def offered(v: dict[str, str]) -> int:  # frames the colour slot published or skipped
        return int(v.get("published_color", 0)) + int(v.get("viewer_skipped_color", 0))

    def frame(sec: int) -> Image:
        msg = Image(height=120, width=160, encoding="rgb8", step=160 * 3)
        msg.data = _texture(sec).tobytes()
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 0
        msg.header.frame_id = "camera"
        return msg

    # Warm-up frames first, until one's colour comes through: the viewer writers live on a DDS
    # participant of their own, and until they have matched this test's readers (discovery runs per
    # direction) the node makes nothing for them. Then, with the warm-up's last colour published and
    # counted, the counters are at rest and the burst below is measured against them.
    warm: list[tuple[int, int]] = []
    deadline = time.monotonic() + WAIT_S
    while not any(_key(m) in warm for m in boxes["color"]):
        assert time.monotonic() < deadline, "timed out waiting for the warm-up frames' colour"
        warm.append((900 + len(warm), 0))
        slowed["pub"].publish(frame(warm[-1][0]))
        pause_end = time.monotonic() + 1.0
        h.spin_until(lambda t=pause_end: time.monotonic() > t or any(_key(m) in warm for m in boxes["color"]),
                     WAIT_S, "a warm-up pause")
    h.spin_until(lambda: any(_key(m) == warm[-1] for m in boxes["color"]), WAIT_S, "the last warm-up colour")
    colours_seen = len(boxes["color"])
    h.spin_until(lambda: any(int(v.get("published_labels", 0)) == len(warm)
                             and int(v.get("published_color", 0)) >= colours_seen for v in values()),
                 WAIT_S, "the warm-up frames in diagnostics")
    at_rest = next(v for v in values() if int(v.get("published_labels", 0)) == len(warm)
                   and int(v.get("published_color", 0)) >= colours_seen)
    base, base_skipped = offered(at_rest), int(at_rest.get("viewer_skipped_color", 0))
    keys = []
    for i in range(FRAMES):
        keys.append((1000 + i, 0))
        slowed["pub"].publish(frame(1000 + i))
    everything = FRAMES + len(warm)
    h.spin_until(lambda: len(boxes["labels"]) >= everything and len(boxes["info"]) >= everything,
                 WAIT_S, "labels and info of every frame")
    # Every frame's labels, in order, and all of them before the slowed viewer path (4 viewer topics,
    # DELAY_S each) could have published the colour of more than a few frames: the labels did not wait.
    assert [_key(m) for m in boxes["labels"]] == [*warm, *keys]
    burst_colors = [m for m in boxes["color"] if _key(m) not in warm]
    assert len(burst_colors) < FRAMES // 2, len(burst_colors)
    # The newest frame always reaches the viewers eventually (it stays in its slot).
    for topic in ("color", "overlay", "color/compressed", "overlay/compressed"):
        h.spin_until(lambda t=topic: any(_key(m) == keys[-1] for m in boxes[t]), WAIT_S,
                     f"{topic} of the last frame")
    # Per frame, the labels were written before any viewer output of that frame (writer's clock).
    labels_at = {k: t for name, k, t in arrivals if name == "labels"}
    for name, k, t in arrivals:
        if name not in ("labels", "info"):
            assert labels_at[k] < t, f"{name} of frame {k} was published before its labels"

    # The skips are counted: every frame of the burst was offered to color, published or skipped.
    h.spin_until(lambda: any(offered(v) >= base + FRAMES for v in values()), WAIT_S,
                 "viewer counters in diagnostics")
    v = next(v for v in values() if offered(v) >= base + FRAMES)
    assert offered(v) == base + FRAMES
    assert int(v["viewer_skipped_color"]) - base_skipped >= FRAMES // 2
    assert int(v["published_labels"]) == FRAMES + len(warm) and v["errors"] == "0"


def test_compressed_topics_decode_to_the_raw_images(slowed: dict[str, Any]) -> None:
    boxes = slowed["boxes"]
    last = _key(boxes["labels"][-1])
    pick = {t: next(m for m in boxes[t] if _key(m) == last)
            for t in ("color", "overlay", "color/compressed", "overlay/compressed")}

    def raw(msg: Any) -> np.ndarray:
        return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)

    def decode(msg: Any) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR_RGB)

    assert pick["color/compressed"].format == "rgb8; png compressed bgr8"
    assert pick["overlay/compressed"].format == "rgb8; jpeg compressed bgr8"
    assert pick["color/compressed"].header.frame_id == "camera"
    # PNG: lossless, the same pixels
    assert np.array_equal(decode(pick["color/compressed"]), raw(pick["color"]))
    # JPEG at quality 90: PSNR above 30 dB against the raw overlay (a wrong channel order, size or
    # frame would be far below), and much smaller than the raw image
    overlay, jpeg = raw(pick["overlay"]).astype(np.float64), decode(pick["overlay/compressed"])
    assert jpeg.shape == overlay.shape
    mse = float(np.mean((overlay - jpeg) ** 2))
    assert 10 * np.log10(255.0**2 / max(mse, 1e-9)) > 30.0
    assert len(pick["overlay/compressed"].data) < len(pick["overlay"].data) // 3
