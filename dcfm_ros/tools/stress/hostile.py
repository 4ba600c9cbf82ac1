"""Malformed and hostile camera messages for the fuzz run, each with what the node must do with it.

"refused": the node must count it in bad_inputs and publish nothing for it. "answered": a valid image
wrapped in a hostile header or carrying extra bytes (10 kB frame_id, extreme stamps, data longer than
step * height); the node must process it like any frame. Deterministic for a given seed.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dcfm_ros.node.convert import ENCODINGS

REFUSED, ANSWERED = "refused", "answered"
INT32_MAX, UINT32_MAX = 2**31 - 1, 2**32 - 1


@dataclass
class Hostile:
    kind: str
    expect: str  # REFUSED or ANSWERED
    msg: Any
    stamp: tuple[int, int] | None = None  # a hostile stamp to send with (None: the sender's own)


def _raw(h: int, w: int, encoding: str, step: int, data: bytes, bigendian: int = 0) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=bigendian)
    msg.data = data
    msg.header.frame_id = "fuzz"
    return msg


def _compressed(fmt: str, data: bytes) -> Any:
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(format=fmt)
    msg.data = data
    msg.header.frame_id = "fuzz"
    return msg


def _picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def raw_messages(rng: np.random.Generator, count: int) -> Iterator[Hostile]:
    """sensor_msgs/Image cases, round robin over the kinds."""
    letters = string.ascii_letters + string.digits + "_;: "
    supported = list(ENCODINGS)

    def random_encoding() -> str:
        while True:
            n = int(rng.choice([1, 5, 12, 300]))
            enc = "".join(rng.choice(list(letters), n))
            if enc not in ENCODINGS:
                return enc

    def wrong_step() -> Hostile:
        enc = str(rng.choice(supported))
        ch, depth = ENCODINGS[enc]
        w, h = int(rng.integers(8, 64)) * 2, int(rng.integers(8, 64))
        row = w * ch * depth
        step = int(rng.integers(0, row))
        return Hostile("step smaller than a row", REFUSED, _raw(h, w, enc, step, bytes(row * h)))

    def truncated() -> Hostile:
        enc = str(rng.choice(supported))
        ch, depth = ENCODINGS[enc]
        w, h = int(rng.integers(8, 64)) * 2, int(rng.integers(8, 64))
        step = w * ch * depth + int(rng.integers(0, 8))
        data = bytes(int(rng.integers(0, step * h)))
        return Hostile("truncated data", REFUSED, _raw(h, w, enc, step, data))

    def huge_declared() -> Hostile:
        w, h = int(rng.choice([65_536, 10**6, UINT32_MAX])), int(rng.choice([65_536, 10**6, UINT32_MAX]))
        return Hostile("huge declared size, tiny data", REFUSED,
                       _raw(h, w, "rgb8", min(w * 3, UINT32_MAX), bytes(int(rng.integers(0, 64)))))

    def too_small() -> Hostile:
        w, h = [(1, 1), (3, 5001), (5001, 3), (7, 7), (2, 400)][int(rng.integers(0, 5))]
        return Hostile("too small / elongated", REFUSED, _raw(h, w, "rgb8", w * 3, bytes(w * 3 * h)))

    def zero() -> Hostile:
        return Hostile("zero size", REFUSED, _raw(0, int(rng.integers(0, 9)), "bgr8", 0, b""))

    def odd_yuv() -> Hostile:
        w, h = int(rng.integers(4, 30)) * 2 + 1, 16
        return Hostile("odd-width yuv", REFUSED, _raw(h, w, "yuv422", w * 2, bytes(w * 2 * h)))

    def bad_encoding() -> Hostile:
        return Hostile("unknown encoding", REFUSED, _raw(16, 16, random_encoding(), 48, bytes(48 * 16)))

    def oversized() -> Hostile:
        h, w = 24, 32
        data = _picture(rng, h, w).tobytes() + rng.bytes(int(rng.integers(1, 200_000)))
        return Hostile("oversized data (extra bytes ignored)", ANSWERED, _raw(h, w, "rgb8", w * 3, data,
                                                                              int(rng.integers(0, 256))))

    def long_frame_id() -> Hostile:
        h, w = 24, 32
        msg = _raw(h, w, "bgr8", w * 3, _picture(rng, h, w).tobytes())
        msg.header.frame_id = "x" * 10_000
        return Hostile("10 kB frame_id", ANSWERED, msg)

    def extreme_stamp() -> Hostile:
        h, w = 24, 32
        stamp = [(INT32_MAX, 999_999_999), (-(2**31), 0), (0, 0), (-1, 999_999_999),
                 (INT32_MAX, 0)][int(rng.integers(0, 5))]
        msg = _raw(h, w, "rgb8", w * 3, _picture(rng, h, w).tobytes())
        return Hostile("extreme stamp", ANSWERED, msg, stamp)

    kinds = [bad_encoding, wrong_step, truncated, huge_declared, too_small, zero, odd_yuv, oversized,
             long_frame_id, extreme_stamp]
    for i in range(count):
        yield kinds[i % len(kinds)]()


def compressed_messages(rng: np.random.Generator, count: int) -> Iterator[Hostile]:
    """sensor_msgs/CompressedImage cases: zero-byte, random, truncated and bit-flipped JPEG/PNG."""
    ok, jpeg = cv2.imencode(".jpg", _picture(rng, 48, 64))
    ok2, png = cv2.imencode(".png", _picture(rng, 48, 64))
    assert ok and ok2
    jpeg_b, png_b = jpeg.tobytes(), png.tobytes()
    _, tiny = cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))

    def zero() -> Hostile:
        return Hostile("zero-byte", REFUSED, _compressed(str(rng.choice(["jpeg", "png"])), b""))

    def garbage() -> Hostile:
        return Hostile("random bytes", REFUSED, _compressed("jpeg", rng.bytes(int(rng.integers(1, 5000)))))

    def truncated_header() -> Hostile:
        src = jpeg_b if rng.random() < 0.5 else png_b
        return Hostile("truncated header", REFUSED, _compressed("jpeg", src[: int(rng.integers(1, 60))]))

    def flipped_png() -> Hostile:
        data = bytearray(png_b)  # PNG chunks carry CRCs: a flipped byte inside IDAT fails decoding
        for _ in range(8):
            data[int(rng.integers(40, len(data) - 12))] ^= 0xFF
        return Hostile("corrupt png", REFUSED, _compressed("png", bytes(data)))

    def tiny_image() -> Hostile:
        return Hostile("2x2 png", REFUSED, _compressed("png", tiny.tobytes()))

    def depth() -> Hostile:
        return Hostile("compressedDepth", REFUSED, _compressed("16UC1; compressedDepth png", png_b))

    kinds = [zero, garbage, truncated_header, flipped_png, tiny_image, depth]
    for i in range(count):
        yield kinds[i % len(kinds)]()
