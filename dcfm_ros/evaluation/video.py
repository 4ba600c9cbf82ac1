"""The overlay video, in a codec browsers play.

Encoders, tried in this order (the first that works is used; `VideoSink.codec` says which):
  h264   H.264 (libx264, yuv420p, +faststart) in .mp4, by the ffmpeg binary that the PyPI wheel
         `imageio-ffmpeg` ships (or $IMAGEIO_FFMPEG_EXE). Plays in every current browser.
  vp9    VP9 in .webm by OpenCV's own FFmpeg (opencv-python-headless has libvpx but no H.264
         encoder). Plays in Chrome, Firefox and Edge; about 15x slower to encode here than h264.
  mpeg4  MPEG-4 Part 2 ('mp4v') in .mp4 by OpenCV, the last resort: players such as VLC or mpv
         play it, browsers do not.
The file is written under a temporary name and renamed on close: a run cut short never leaves a
half-written video that looks whole.
"""

from __future__ import annotations

import contextlib
import functools
import math
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np

CODECS = ("h264", "vp9", "mpeg4")
SUFFIX = {"h264": ".mp4", "vp9": ".webm", "mpeg4": ".mp4"}
BROWSER_PLAYABLE = {"h264": True, "vp9": True, "mpeg4": False}


@functools.cache
def ffmpeg_with_x264() -> str | None:
    """Path of an ffmpeg binary with libx264 (imageio-ffmpeg's), or None."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        probe = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30)
    except (ImportError, RuntimeError, OSError, subprocess.SubprocessError):
        return None
    return exe if probe.returncode == 0 and " libx264 " in probe.stdout else None


class _FFmpegH264:
    def __init__(self, exe: str, path: Path, fps: float, size: tuple[int, int]) -> None:
        self._err: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close/abort)
        w, h = size
        cmd = [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{fps:.6g}", "-i", "-", "-an", "-c:v", "libx264",
               "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p", "-movflags", "+faststart",
               "-f", "mp4", str(path)]
        # a session of its own: a Ctrl-C in the terminal must not kill the encoder of a partial video
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err,
                                      start_new_session=True)

    def _failed(self, doing: str) -> RuntimeError:
        self._proc.kill()
        self._proc.wait()
        self._err.seek(0)
        return RuntimeError(f"ffmpeg failed {doing}: {self._err.read().decode(errors='replace')[-2000:]}")

    def write(self, rgb: np.ndarray) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(rgb).tobytes())
        except (BrokenPipeError, OSError) as exc:
            raise self._failed("while encoding the overlay video") from exc

    def close(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise self._failed(f"finishing the overlay video (exit {self._proc.returncode})")
        self._err.close()

    def abort(self) -> None:
        self._proc.kill()
        self._proc.wait()
        self._err.close()


OPENCV_FOURCC = {"vp9": "VP90", "mpeg4": "mp4v"}


class _OpenCV:

    def __init__(self, codec: str, path: Path, fps: float, size: tuple[int, int]) -> None:
        self._w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*OPENCV_FOURCC[codec]), fps, size)
        if not self._w.isOpened():
            self._w.release()
            raise RuntimeError(f"OpenCV cannot write {codec} ({OPENCV_FOURCC[codec]})")

    def write(self, rgb: np.ndarray) -> None:
        self._w.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._w.release()

    abort = close


class VideoSink:
    """RGB frames -> DIR/STEM.mp4 (or .webm). A frame of another size is resized to the first one's
    (cropped to even sizes: yuv420p needs them). `codecs` limits and orders the encoders tried."""

    def __init__(self, out_dir: Path, stem: str, fps: float, codecs: Sequence[str] = CODECS) -> None:
        unknown = [c for c in codecs if c not in CODECS]
        if unknown or not codecs:
            raise ValueError(f"video codecs must be among {', '.join(CODECS)}, got {list(codecs)}")
        self.out_dir, self.stem = Path(out_dir), stem
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else 15.0
        self.codecs = tuple(codecs)
        self.codec: str | None = None
        self.path: Path | None = None  # the finished file, set by close()
        self.frames = 0
        self.tried: list[str] = []  # why earlier encoders were passed over
        self._enc: _FFmpegH264 | _OpenCV | None = None
        self._partial: Path | None = None
        self._size: tuple[int, int] | None = None

    def _open(self, size: tuple[int, int]) -> None:
        for codec in self.codecs:
            partial = self.out_dir / f".{self.stem}.partial{SUFFIX[codec]}"
            try:
                if codec == "h264":
                    exe = ffmpeg_with_x264()
                    if exe is None:
                        raise RuntimeError("no ffmpeg with libx264 (pip install imageio-ffmpeg)")
                    self._enc = _FFmpegH264(exe, partial, self.fps, size)
                else:
                    self._enc = _OpenCV(codec, partial, self.fps, size)
            except RuntimeError as exc:
                self.tried.append(f"{codec}: {exc}")
                continue
            self.codec, self._partial, self._size = codec, partial, size
            return
        raise RuntimeError(f"cannot write the overlay video ({'; '.join(self.tried)})")

    def write(self, rgb: np.ndarray) -> None:
        if self._enc is None:
            h, w = rgb.shape[:2]
            self._open((max(2, w - w % 2), max(2, h - h % 2)))
        assert self._enc is not None and self._size is not None
        if (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        self._enc.write(rgb)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and give it its name; None when no frame was written."""
        if self._enc is None or self._partial is None:
            return self.path
        enc, self._enc = self._enc, None
        try:
            enc.close()
            final = self.out_dir / f"{self.stem}{SUFFIX[self.codec or 'mpeg4']}"
            self._partial.replace(final)
            self.path = final
        finally:
            self._partial.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop a video that will not be finished."""
        if self._enc is not None:
            self._enc.abort()
            self._enc = None
        if self._partial is not None:
            self._partial.unlink(missing_ok=True)
