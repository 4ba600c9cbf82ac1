"""Message <-> numpy conversions of the node (real rclpy message classes, no transport)."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from dcfm_ros.msg import SegmentationInfo
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dcfm_ros.engine.confidence import Confidence
from dcfm_ros.node.convert import (
    ENCODINGS,
    BadInputError,
    ImageBuffer,
    classes_msg,
    compressed_to_rgb,
    confidence_to_msg,
    image_to_rgb,
    info_msg,
    labels_to_msg,
    mask_to_msg,
    rgb_to_msg,
)

H, W = 8, 10  # the smallest side the node accepts is 8 (convert.MIN_SIDE)
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def make(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image whose rows are `pixels` rows (as bytes) followed by `pad` bytes of 0xEE."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = np.frombuffer(pixels.tobytes(), np.uint8).reshape(h, -1)
    rows = np.concatenate([rows, np.full((h, pad), 0xEE, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=rows.shape[1], is_bigendian=int(bigendian))
    msg.data = rows.tobytes()
    return msg


def roundtrip(msg: Image) -> Image:
    """Through rclpy serialisation, as a subscriber receives it (data becomes an array.array)."""
    return deserialize_message(serialize_message(msg), Image)


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings(encoding: str, pad: int) -> None:
    alpha = RNG.integers(0, 256, (H, W, 1), dtype=np.uint8)
    src = RGB if encoding.startswith("rgb") else RGB[..., ::-1]
    if encoding.endswith("a8"):
        src = np.concatenate([src, alpha], axis=2)
    out = image_to_rgb(roundtrip(make(np.ascontiguousarray(src), encoding, pad)))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert np.array_equal(out, RGB)


@pytest.mark.parametrize("pad", [0, 3])
def test_mono8(pad: int) -> None:
    gray = RGB[..., 0].copy()
    out = image_to_rgb(make(gray, "mono8", pad))
    assert np.array_equal(out, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "mono16"])
def test_16_bit_encodings_scale_to_8_bit(encoding: str, bigendian: bool) -> None:
    wide = RGB.astype(np.uint16) * 257  # 0..255 -> 0..65535 exactly
    src = wide[..., 0] if encoding == "mono16" else (wide if encoding == "rgb16" else wide[..., ::-1])
    out = image_to_rgb(make(np.ascontiguousarray(src), encoding, pad=4, bigendian=bigendian))
    expect = np.repeat(RGB[..., :1], 3, axis=2) if encoding == "mono16" else RGB
    assert np.abs(out.astype(int) - expect).max() <= 1


def _bt601(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Reference YUV -> RGB (ITU-R BT.601, video range), independent of OpenCV."""
    c, d, e = y - 16.0, u - 128.0, v - 128.0
    rgb = np.stack([1.164 * c + 1.596 * e, 1.164 * c - 0.392 * d - 0.813 * e, 1.164 * c + 2.017 * d], axis=-1)
    return np.clip(np.rint(rgb), 0, 255)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuyv", "yuv422_yuy2"])
def test_yuv422_against_bt601(encoding: str) -> None:
    y = RNG.integers(16, 236, (H, W)).astype(np.uint8)
    u = RNG.integers(16, 241, (H, W // 2)).astype(np.uint8)
    v = RNG.integers(16, 241, (H, W // 2)).astype(np.uint8)
    packed = np.empty((H, W, 2), np.uint8)
    uv = np.empty((H, W), np.uint8)
    uv[:, 0::2], uv[:, 1::2] = u, v
    if encoding in ("yuv422", "uyvy"):  # U Y0 V Y1
        packed[..., 0], packed[..., 1] = uv, y
    else:  # Y0 U Y1 V
        packed[..., 0], packed[..., 1] = y, uv
    out = image_to_rgb(make(packed, encoding, pad=6))
    expect = _bt601(y.astype(float), np.repeat(u, 2, axis=1).astype(float),
                    np.repeat(v, 2, axis=1).astype(float))
    assert np.abs(out.astype(int) - expect).max() <= 2


def test_rgb8_without_padding_is_a_view() -> None:
    msg = roundtrip(make(RGB, "rgb8"))
    out = image_to_rgb(msg)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_longer_data_than_needed_is_fine() -> None:
    msg = make(RGB, "rgb8")
    msg.data = bytes(msg.data) + b"\x00" * 7
    assert np.array_equal(image_to_rgb(msg), RGB)


@pytest.mark.parametrize(("change", "words"), [
    ({"encoding": "32FC1"}, ("unsupported encoding", "32FC1")),
    ({"encoding": "RGB8"}, ("unsupported encoding",)),
    ({"encoding": "bayer_rggb16"}, ("unsupported encoding",)),
    ({"encoding": "x" * 10_000}, ("unsupported encoding",)),
    ({"height": 0}, ("zero-sized",)),
    ({"width": 0}, ("zero-sized",)),
    ({"step": W * 3 - 1}, ("step", "smaller")),
    ({"data": bytes(H * W * 3 - 1)}, ("data has", "fewer than step * height")),
    ({"data": b""}, ("data has 0 bytes",)),
    ({"height": H + 1}, ("fewer than step * height",)),
])
def test_bad_raw_images_say_what_is_wrong(change: dict, words: tuple[str, ...]) -> None:
    msg = make(RGB, "rgb8")
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(BadInputError) as info:
        image_to_rgb(msg)
    for word in words:
        assert word in str(info.value)


def test_bad_input_reasons_are_short_fixed_keys() -> None:
    # The node throttles its log per reason: the key must not carry the message's numbers.
    reasons = set()
    for change in ({"encoding": "a"}, {"encoding": "b"}, {"step": 3}, {"step": 5}, {"data": b"x"},
                   {"data": b"xy"}, {"height": 0}, {"width": 2}, {"height": 400}):
        msg = make(RGB, "rgb8")
        for key, value in change.items():
            setattr(msg, key, value)
        with pytest.raises(BadInputError) as info:
            image_to_rgb(msg)
        reasons.add(info.value.reason)
    assert reasons == {"unsupported encoding", "step too small", "data too short", "zero size",
                       "too small", "aspect ratio"}


@pytest.mark.parametrize(("w", "h", "ok"), [
    (1, 1, False), (7, 100, False), (100, 7, False), (8, 8, True), (3, 5001, False), (5001, 3, False),
    (160, 8, True), (161, 8, False), (8, 160, True), (8, 161, False),
])
def test_minimum_size_and_aspect_ratio(w: int, h: int, ok: bool) -> None:
    msg = make(np.zeros((h, w, 3), np.uint8), "rgb8")
    if ok:
        assert image_to_rgb(msg).shape == (h, w, 3)
    else:
        with pytest.raises(BadInputError, match=r"too small|too elongated"):
            image_to_rgb(msg)


def test_tiny_compressed_image_is_refused() -> None:
    _, buf = cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(BadInputError, match="too small") as info:
        compressed_to_rgb(_compressed(buf.tobytes(), "png"))
    assert info.value.reason == "too small"


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """A Bayer mosaic of `rgb`: `pattern` names the 2x2 tile's colours row by row (ROS naming)."""
    out = np.zeros(rgb.shape[:2], np.uint8)
    for (dy, dx), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern.upper(), strict=True):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(colour)]
    return out


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_mosaics_are_demosaiced(pattern: str) -> None:
    smooth = cv2.resize(RGB, (64, 48), interpolation=cv2.INTER_CUBIC)
    out = image_to_rgb(roundtrip(make(_mosaic(smooth, pattern), f"bayer_{pattern}8", pad=3)))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    # Bilinear demosaicing of a smooth picture is close; a wrong tile order is off by tens of levels.
    assert np.abs(out.astype(int) - smooth)[2:-2, 2:-2].mean() < 3


def test_odd_width_yuv_is_rejected() -> None:
    msg = make(RNG.integers(0, 256, (H, 9, 2), dtype=np.uint8), "yuv422")
    with pytest.raises(BadInputError, match="even width"):
        image_to_rgb(msg)


def test_every_listed_encoding_converts() -> None:
    for enc, (channels, depth) in ENCODINGS.items():
        dtype = np.uint16 if depth == 2 else np.uint8
        pixels = RNG.integers(0, 200, (H, W, channels) if channels > 1 else (H, W)).astype(dtype)
        out = image_to_rgb(make(pixels, enc, pad=2))
        assert out.shape == (H, W, 3) and out.dtype == np.uint8, enc


def _compressed(data: bytes, fmt: str = "jpeg") -> CompressedImage:
    msg = CompressedImage(format=fmt)
    msg.data = data
    return msg


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_colour(ext: str) -> None:
    smooth = cv2.resize(RGB, (48, 32), interpolation=cv2.INTER_CUBIC)  # JPEG-friendly content
    ok, buf = cv2.imencode(ext, smooth[..., ::-1].copy())
    assert ok
    out = compressed_to_rgb(_compressed(buf.tobytes(), f"rgb8; {ext[1:]} compressed bgr8"))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    error = np.abs(out.astype(int) - smooth).mean()
    assert error == 0 if ext == ".png" else error < 10  # channel order right (a swap gives ~60)


def test_compressed_png_is_exact_and_gray_jpeg_is_three_channel() -> None:
    _, buf = cv2.imencode(".png", RGB[..., ::-1].copy())
    assert np.array_equal(compressed_to_rgb(_compressed(buf.tobytes(), "png")), RGB)
    gray = RGB[..., 1].copy()
    _, buf = cv2.imencode(".jpg", gray)
    out = compressed_to_rgb(_compressed(buf.tobytes(), "mono8; jpeg compressed mono8"))
    assert out.shape == (H, W, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize(("data", "fmt", "words"), [
    (b"", "jpeg", ("empty",)),
    (b"\xff\xd8\xff\xe0" + bytes(50), "jpeg", ("cannot decode", "54 bytes")),
    (bytes(range(256)), "png", ("cannot decode",)),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), "png", ("cannot decode",)),
    (b"anything", "16UC1; compressedDepth png", ("depth",)),
])
def test_corrupt_compressed_images(data: bytes, fmt: str, words: tuple[str, ...]) -> None:
    with pytest.raises(BadInputError) as info:
        compressed_to_rgb(_compressed(data, fmt))
    for word in words:
        assert word in str(info.value)


def test_truncated_jpeg_is_rejected() -> None:
    _, buf = cv2.imencode(".jpg", RGB)
    with pytest.raises(BadInputError):
        compressed_to_rgb(_compressed(buf.tobytes()[:40]))


def test_labels_mono8_and_mono16() -> None:
    header = Header(frame_id="cam")
    labels = RNG.integers(0, 11, (H, W)).astype(np.uint8)
    msg = roundtrip(labels_to_msg(labels, header, ImageBuffer()))
    assert (msg.encoding, msg.height, msg.width, msg.step) == ("mono8", H, W, W)
    assert msg.header.frame_id == "cam"
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(H, W), labels)
    wide = RNG.integers(0, 300, (H, W)).astype(np.uint16)
    msg = roundtrip(labels_to_msg(wide, header, ImageBuffer()))
    assert (msg.encoding, msg.step) == ("mono16", 2 * W)
    assert msg.is_bigendian == int(sys.byteorder == "big")
    assert np.array_equal(np.frombuffer(msg.data, np.uint16).reshape(H, W), wide)


def test_rgb_and_mask_messages_and_buffer_reuse() -> None:
    header = Header(frame_id="cam")
    buf = ImageBuffer()
    msg = roundtrip(rgb_to_msg(RGB, header, buf))
    assert (msg.encoding, msg.step) == ("rgb8", 3 * W)
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(H, W, 3), RGB)
    # The same buffer, a new size (resolution change), then the first size again.
    small = RGB[:3, :4].copy()
    msg = roundtrip(rgb_to_msg(small, header, buf))
    assert (msg.height, msg.width) == (3, 4)
    assert np.array_equal(np.frombuffer(msg.data, np.uint8).reshape(3, 4, 3), small)
    labels = RNG.integers(0, 4, (H, W)).astype(np.uint8)
    mbuf = ImageBuffer()
    for class_id in (0, 3):
        msg = roundtrip(mask_to_msg(labels, class_id, header, mbuf))
        mask = np.frombuffer(msg.data, np.uint8).reshape(H, W)
        assert msg.encoding == "mono8"
        assert np.array_equal(mask, np.where(labels == class_id, 255, 0))


def test_confidence_image_is_the_map_at_camera_size() -> None:
    small = np.array([[0, 255], [255, 0]], np.uint8)
    buf = ImageBuffer()
    msg = roundtrip(confidence_to_msg(small, (H, W), Header(frame_id="cam"), buf))
    assert (msg.encoding, msg.height, msg.width, msg.step, msg.header.frame_id) == ("mono8", H, W, W, "cam")
    out = np.frombuffer(msg.data, np.uint8).reshape(H, W)
    assert np.array_equal(out, cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR))
    assert out[0, 0] < 64 and out[0, -1] > 191 and out[-1, 0] > 191 and out[-1, -1] < 64


def test_classes_and_info_messages() -> None:
    from dcfm_ros.engine import FrameResult

    msg = classes_msg(["Road", "Car"], [(128, 64, 128), (0, 0, 255)], Header())
    assert list(msg.ids) == [0, 1] and list(msg.names) == ["Road", "Car"]
    assert (msg.colors[0].r, msg.colors[1].b, msg.colors[1].a) == (128 / 255, 1.0, 1.0)
    result = FrameResult(labels=np.zeros((2, 2), np.uint8), is_keyframe=False, frames_since_key=2,
                         motion_score=0.25, timings_ms={"total": 9.5, "enc_lo": 1.0, "enc_hi": 0.0,
                                                        "ffm": 0.5, "head": 0.25})
    info = info_msg(Header(frame_id="cam"), result, 12.5, 10, 8, 1, 1)
    info = deserialize_message(serialize_message(info), SegmentationInfo)
    assert np.isnan(info.confidence) and info.engine_errors == 0  # a result without confidence
    result.confidence = Confidence(mean=0.75, map_u8=np.zeros((1, 1), np.uint8))
    later = deserialize_message(serialize_message(info_msg(Header(), result, 1.0, 11, 9, 1, 1, 3)),
                                SegmentationInfo)
    assert (later.confidence, later.engine_errors) == (0.75, 3)
    assert (info.is_keyframe, info.frames_since_keyframe, info.motion_score) == (False, 2, 0.25)
    assert (info.engine_latency_ms, info.enc_lo_ms, info.ffm_ms, info.end_to_end_latency_ms) == \
        (9.5, 1, 0.5, 12.5)
    counters = (info.frames_received, info.frames_processed, info.frames_dropped, info.bad_inputs)
    assert counters == (10, 8, 1, 1)
