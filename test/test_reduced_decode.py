"""Reduced JPEG decode (issue 23 item 2): the scale rule, what the node's decode returns, the engine's
labels at the camera's size from a reduced image, and the overlay made from the full image.

Real CamVid demo frames, scaled up to a vehicle camera's size and JPEG-encoded with OpenCV.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage
from test_fastpath import SHIPPED, demo_frames

from dcfm_ros.engine import FixedInterval, StreamEngine
from dcfm_ros.engine.jpeg import jpeg_size
from dcfm_ros.engine.specs import jpeg_scale, reduced_size
from dcfm_ros.model import load_checkpoint
from dcfm_ros.node.convert import BadInputError
from dcfm_ros.node.reduced_decode import decode
from dcfm_ros.node.viewer_publisher import ViewerFrame

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NET = (360, 480)


def _msg(rgb: np.ndarray, ext: str = "jpg") -> CompressedImage:
    ok, buf = cv2.imencode("." + ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return CompressedImage(format=f"rgb8; {ext} compressed bgr8", data=buf.tobytes())


@pytest.fixture(scope="module")
def camera_frames() -> list[np.ndarray]:
    """Two demo frames at 1080x1440 (H x W): 3x the network's side."""
    return [cv2.resize(f, (1440, 1080), interpolation=cv2.INTER_LINEAR) for f in demo_frames(2, 10)]


def test_the_scale_keeps_the_network_size_on_both_sides() -> None:
    assert jpeg_scale((1080, 1920), NET) == 2  # 540x960; 1/4 would be 270 rows < 360
    assert jpeg_scale((2160, 3840), NET) == 4
    assert jpeg_scale((2880, 3840), NET) == 8  # 360x480 exactly
    assert jpeg_scale((360, 480), NET) == 1 and jpeg_scale((718, 960), NET) == 1  # 359 rows at 1/2
    assert jpeg_scale((719, 959), NET) == 2 and reduced_size((719, 959), NET) == (360, 480)  # rounds up
    assert reduced_size((1080, 1920), NET) == (540, 960) and reduced_size((300, 400), NET) == (300, 400)


def test_a_large_jpeg_is_decoded_reduced_with_the_camera_size_from_its_header(camera_frames) -> None:
    msg = _msg(camera_frames[0])
    data = np.frombuffer(bytes(msg.data), np.uint8)
    assert jpeg_size(bytes(msg.data)) == (1080, 1440)
    image = decode(msg, NET)
    assert image.reduced and image.camera == (1080, 1440) and image.rgb.shape == (540, 720, 3)
    # libjpeg's 1/2-scale decode, in RGB order
    want = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    assert np.array_equal(image.rgb, want)
    full = image.full()
    assert np.array_equal(full, cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)) and image.full() is full  # once


def test_what_is_decoded_in_full(camera_frames) -> None:
    big = camera_frames[0]
    assert not decode(_msg(big, "png"), NET).reduced  # PNG has no scaled decode
    assert not decode(_msg(big), None).reduced  # reduced_decode off
    small = decode(_msg(cv2.resize(big, (480, 360))), NET)  # the network's own size
    assert not small.reduced and small.camera == (360, 480)
    grey = cv2.imencode(".jpg", cv2.cvtColor(big, cv2.COLOR_RGB2GRAY))[1].tobytes()
    g = decode(CompressedImage(format="mono8; jpeg compressed mono8", data=grey), NET)
    assert g.reduced and g.rgb.shape == (540, 720, 3)  # a grey JPEG still gives RGB


def test_bad_jpegs_say_what_is_wrong(camera_frames) -> None:
    data = bytes(_msg(camera_frames[0]).data)
    with pytest.raises(BadInputError, match="cannot decode"):
        decode(CompressedImage(format="jpeg", data=data[:600]), NET)  # the header, not the pixels
    tall = cv2.imencode(".jpg", np.zeros((4000, 100, 3), np.uint8))[1].tobytes()
    with pytest.raises(BadInputError, match="too elongated"):
        decode(CompressedImage(format="jpeg", data=tall), NET)


def test_labels_from_a_reduced_image_are_at_the_camera_size_and_agree(camera_frames) -> None:
    """Both label methods (graph I/O exact and network-size, torch's host path) give camera-size
    labels from the reduced image, agreeing with those from the full image on >= 97 % of pixels."""
    model, _ = load_checkpoint(SHIPPED)
    msgs = [_msg(f) for f in camera_frames]
    for backend, labels_at in (("openvino", "camera"), ("openvino", "network"), ("torch", "camera")):
        kw = {"graph_io": backend != "torch", "labels_at": labels_at}
        a = StreamEngine(model, FixedInterval(2), device="cpu", backend=backend, **kw)
        b = StreamEngine(model, FixedInterval(2), device="cpu", backend=backend, **kw)
        for m in msgs:  # a keyframe, then a non-key frame
            image = decode(m, NET)
            full, reduced = a.process(image.full()).labels, b.process(image.rgb, image.camera).labels
            assert reduced.shape == (1080, 1440)
            assert (full == reduced).mean() >= 0.97, (backend, labels_at, (full == reduced).mean())


def test_the_engine_refuses_a_camera_the_image_cannot_come_from() -> None:
    model, _ = load_checkpoint(SHIPPED)
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    image = np.zeros((100, 200, 3), np.uint8)
    for camera in ((50, 100), (100, 1700), (0, 200)):
        with pytest.raises(ValueError, match="camera"):
            engine.process(image, camera)
    assert engine.state.frame == -1  # nothing was committed


def test_the_overlay_of_a_reduced_frame_uses_the_full_image_decoded_on_demand() -> None:
    calls: list[int] = []
    full = np.full((4, 6, 3), 200, np.uint8)

    def decode_full() -> np.ndarray:
        calls.append(1)
        return full

    frame = ViewerFrame(header=0, rgb=decode_full, labels=np.zeros((4, 6), np.uint8),
                        palette=[(0, 0, 0)], alpha=0.5, jpeg_quality=80)
    assert frame.color.shape == (4, 6, 3) and not calls  # the colour image needs no camera pixels
    assert np.array_equal(frame.overlay, np.full((4, 6, 3), 100, np.uint8)) and calls == [1]


def test_the_size_a_known_camera_reaches_the_engine_at() -> None:
    """camera_size + compressed + reduced_decode: the engine prepares its graphs for the reduced
    image at start-up (settings.decoded_size), else for the camera's own size."""
    from dcfm_ros.engine.settings import PARAMETERS, decoded_size, settings_from_values

    model, _ = load_checkpoint(SHIPPED)
    base = {p.name: p.default for p in PARAMETERS}
    base.update({"camera_size": [1080, 1920], "image_transport": "compressed"})
    assert decoded_size(settings_from_values(base), model) == (540, 960)
    assert decoded_size(settings_from_values({**base, "reduced_decode": False}), model) is None
    assert decoded_size(settings_from_values({**base, "image_transport": "raw"}), model) is None
    assert decoded_size(settings_from_values({**base, "camera_size": [360, 480]}), model) == (360, 480)
    with pytest.raises(ValueError, match="reduced_decode"):
        settings_from_values({**base, "reduced_decode": "yes"})


def test_the_players_check_decodes_a_jpeg_at_an_eighth_and_still_refuses_a_broken_one(camera_frames) -> None:
    """dcfm-bag-eval's player checks each camera message before sending it (bagio.check_image): a
    good JPEG passes with its stamp, decoded at 1/8; a broken one is a BadMessage as with a full decode."""
    from dcfm_ros.evaluation import bagio

    def raw(msg) -> bagio.RawMessage:
        data = bytes(bagio.typestore().serialize_cdr(msg, bagio.COMPRESSED_IMAGE))
        return bagio.RawMessage("/camera/image/compressed", bagio.COMPRESSED_IMAGE, 5, data, 0)

    good = bagio.compressed_image_msg(camera_frames[0], 123, "cam")
    item = bagio.check_image(raw(good))
    assert isinstance(item, bagio.Frame) and item.stamp_ns == 123 and item.image.shape == (135, 180, 3)
    broken = bagio.typestore().types[bagio.COMPRESSED_IMAGE](
        header=good.header, format=good.format, data=good.data[:600])  # the header, not the pixels
    for check in (bagio.check_image, lambda r: bagio.decode_raw(r, "image")):
        bad = check(raw(broken))
        assert isinstance(bad, bagio.BadMessage) and bad.stamp_ns == 123, bad
