"""Report rendering: statistics, report.json/report.md, plots, overlay video and contact sheet."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from dcfm_ros.evaluation import pictures as pic
from dcfm_ros.evaluation import report as rp
from dcfm_ros.evaluation import video
from dcfm_ros.evaluation.report import FrameRecord
from dcfm_ros.evaluation.video import VideoSink


def _records() -> list[FrameRecord]:
    # 10 frames: keyframes every 3rd frame (slow), frame 7 dropped
    out = []
    for i in range(10):
        key = i % 3 == 0
        r = FrameRecord(index=i, stamp_ns=1_000 + i, log_ns=1_000 + i, sent_s=0.1 * i, has_gt=True)
        if i != 7:
            r.status = "ok"
            r.latency_ms = 50.0 + i if key else 20.0 + i
            r.engine_ms = r.latency_ms - 5
            r.is_keyframe = key
            r.frames_since_keyframe = i % 3
            r.enc_lo_ms, r.enc_hi_ms, r.ffm_ms, r.head_ms = 4.0, (30.0 if key else 0.0), 2.0, 3.0
        out.append(r)
    return out


def test_stats_percentiles_and_split() -> None:
    s = rp.stats([1.0, 2.0, 3.0, 4.0, None, float("nan")])
    assert s["n"] == 4 and s["p50"] == pytest.approx(2.5) and s["mean"] == pytest.approx(2.5)
    assert s["p99"] == pytest.approx(np.percentile([1, 2, 3, 4], 99)) and s["max"] == 4.0
    assert rp.stats([])["p50"] is None and rp.stats([])["n"] == 0
    split = rp.split_stats(_records(), "latency_ms")
    assert split["key"]["n"] == 4 and split["nonkey"]["n"] == 5 and split["all"]["n"] == 9
    assert split["key"]["mean"] == pytest.approx(np.mean([50, 53, 56, 59]))
    assert split["nonkey"]["p50"] == pytest.approx(np.median([21, 22, 24, 25, 28]))


def test_summarize_counts_and_throughput() -> None:
    recs = _records()
    s = rp.summarize(recs, skipped=[{"topic": "/cam", "index": 3, "reason": "x"}], image_skipped=1)
    assert (s["frames_in"], s["frames_out"], s["frames_dropped"], s["frames_skipped"]) == (10, 9, 1, 1)
    assert s["keyframe_ratio"] == pytest.approx(4 / 9)
    # first sent at 0 s, last output: frame 9 sent at 0.9 s + 59 ms
    assert s["wall_time_s"] == pytest.approx(0.959)
    assert s["throughput_fps"] == pytest.approx(9 / 0.959)
    assert s["stage_ms"]["enc_hi"] == pytest.approx(30.0)  # keyframes only
    assert s["stage_ms"]["enc_lo"] == pytest.approx(4.0)


def test_frames_csv_round_trip(tmp_path: Path) -> None:
    recs = _records()
    rp.write_frames_csv(recs, tmp_path / "f.csv")
    assert rp.read_frames_csv(tmp_path / "f.csv") == recs


def _metrics() -> dict:
    return {"frames": 9, "ignore_index": 255, "miou": 0.5, "wiou": 0.6, "pixel_acc": 0.7,
            "per_class_iou": {"Sky": 0.9, "Road": 0.1, "Pole": None}, "mvc8": 0.8, "mvc16": 0.75,
            "mvc_runs": 2}


def test_write_report_makes_every_file(tmp_path: Path) -> None:
    recs = _records()
    report = {
        "input": {"bag": "in", "image_topic": "/camera/image", "gt_topic": "/camera/labels",
                  "image_messages": 11},
        "output": {"bag": "out/bag", "topics": ["/segmentation/labels"]},
        "mode": {"max": True, "rate": None},
        **rp.summarize(recs, skipped=[{"topic": "/camera/image", "index": 3, "log_ns": 1, "stamp_ns": None,
                                       "reason": "CDR payload | broken"}], image_skipped=1),
        "metrics": _metrics(),
        "node_params": {"keyframe": {"interval": 3}},
        "model": {"path": "m.safetensors", "backbone": "resnet18", "num_classes": 3, "input_size": [48, 64]},
        "machine": rp.machine_info(),
        "files": {"video": "overlay.mp4", "output_bag": "bag"},
    }
    final = rp.write_report(tmp_path, report, recs)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == final
    for key in ("frames_in", "frames_out", "frames_dropped", "frames_skipped", "throughput_fps", "latency_ms",
                "engine_latency_ms", "keyframe_ratio", "metrics", "node_params", "model", "machine", "files"):
        assert key in on_disk, key
    assert set(on_disk["latency_ms"]) == {"all", "key", "nonkey"}
    assert set(on_disk["latency_ms"]["key"]) == {"p50", "p95", "p99", "mean", "max", "n"}
    files = on_disk["files"]
    for key in ("latency_plot", "latency_hist", "class_iou_plot"):
        img = cv2.imread(str(tmp_path / files[key]))
        assert img is not None and img.shape[0] > 100, key
    assert files["video"] == "overlay.mp4" and files["contact_sheet"] is None
    md = (tmp_path / "report.md").read_text()
    assert "![per-frame latency](latency.png)" in md and "![per-class IoU](class_iou.png)" in md
    assert "| 10 | 9 | 1 | 1 |" in md  # frames in/out/dropped/skipped
    assert "| Pole | n/a |" in md and "0.5000" in md
    assert "CDR payload / broken" in md  # a '|' in a reason must not break the table
    assert on_disk["machine"]["cores"] >= 1


def test_report_without_ground_truth(tmp_path: Path) -> None:
    recs = _records()
    report = {"mode": {"max": False, "rate": 1.0}, **rp.summarize(recs), "metrics": None}
    final = rp.write_report(tmp_path, report, recs)
    assert final["files"]["class_iou_plot"] is None and not (tmp_path / "class_iou.png").exists()
    assert "No ground-truth topic" in (tmp_path / "report.md").read_text()


def test_overlay_and_contact_sheet(tmp_path: Path) -> None:
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rgb = np.full((48, 64, 3), 100, np.uint8)
    pred = np.zeros((48, 64), np.uint8)
    pred[:, 32:] = 2
    frame = pic.overlay_frame(rgb, pred, palette, 0.5)
    assert tuple(frame[10, 10]) == (178, 50, 50) and tuple(frame[10, 50]) == (50, 50, 178)
    assert pic.overlay_frame(rgb, None, palette, text="dropped").shape == rgb.shape

    gt = pic.colorize(pred, palette)
    rows = [(f"#{i}", [("camera", rgb), ("overlay", frame), ("GT", gt)]) for i in range(3)]
    pic.contact_sheet(rows, tmp_path / "sheet.png", tile_width=128)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * (96 + 4), 3 * (128 + 4), 3)
    assert pic.pick_frames(101, 4) == [0, 33, 67, 100] and pic.pick_frames(2, 4) == [0, 1]

    # with the class legend below the grid: every class colour is in the added strip
    names = ["Road", "Sky", "Pedestrian"]
    pic.contact_sheet(rows, tmp_path / "legend_sheet.png", tile_width=128, classes=(names, palette))
    with_legend = cv2.cvtColor(cv2.imread(str(tmp_path / "legend_sheet.png")), cv2.COLOR_BGR2RGB)
    assert with_legend.shape[1] == sheet.shape[1] and with_legend.shape[0] > sheet.shape[0]
    strip = with_legend[sheet.shape[0]:].reshape(-1, 3)
    for color in palette:
        assert (strip == color).all(axis=1).sum() > 20, color
    assert not list(tmp_path.glob(".*partial*"))  # written under a temporary name, then renamed


def _colour_pixels(img: np.ndarray, color: tuple[int, int, int]) -> int:
    return int((img.reshape(-1, 3) == color).all(axis=1).sum())


def test_legend_swatches_names_and_wrapping() -> None:
    names = [f"class {i}" for i in range(11)]
    palette = [(20 * i + 10, 255 - 20 * i, (37 * i) % 256) for i in range(11)]
    wide = pic.legend(names, palette, 1600)
    narrow = pic.legend(names, palette, 320)
    assert wide.shape[1] == 1600 and narrow.shape[1] == 320
    assert narrow.shape[0] > wide.shape[0]  # wrapped into more rows, nothing cut off
    for legend in (wide, narrow):
        for color in palette:
            assert _colour_pixels(legend, color) > 20, color  # one swatch per class
        grey = (legend.min(axis=2) > 150) & (np.ptp(legend, axis=2) < 10)
        assert grey.sum() > 100  # white names on black
    # names differ in length, so dropping one changes the layout: the names are really drawn
    assert not np.array_equal(pic.legend(["a", "bbbbbbbbbbbb"], palette[:2], 400),
                              pic.legend(["bbbbbbbbbbbb", "a"], palette[:2], 400))
    with pytest.raises(ValueError, match="2 class names but 3 palette colours"):
        pic.legend(["a", "b"], palette[:3], 400)
    frame = np.zeros((60, 320, 3), np.uint8)
    out = pic.with_legend(frame, pic.legend(names, palette, 640))  # a wider strip is scaled down
    assert out.shape[1] == 320 and out.shape[0] > 60 and np.array_equal(out[:60], frame)


def _read_video(path: Path) -> tuple[int, str]:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode(errors="replace")
    return n, fourcc


@pytest.mark.parametrize(("codec", "suffix", "fourccs"), [("h264", ".mp4", {"h264", "avc1"}),
                                                          ("vp9", ".webm", {"VP90", "vp09"}),
                                                          ("mpeg4", ".mp4", {"FMP4", "mp4v"})])
def test_video_codecs(tmp_path: Path, codec: str, suffix: str, fourccs: set[str]) -> None:
    rgb = np.zeros((47, 65, 3), np.uint8)  # odd sizes: cropped to even for yuv420p
    sink = VideoSink(tmp_path, "overlay", fps=15, codecs=(codec,))
    for i in range(6):
        frame = rgb.copy()
        frame[:, : 10 * i] = (200, 30, 30)
        sink.write(frame)
    sink.write(np.zeros((24, 32, 3), np.uint8))  # another size is resized, not an error
    assert not (tmp_path / f"overlay{suffix}").exists()  # only the temporary file while writing
    path = sink.close()
    assert path == tmp_path / f"overlay{suffix}" and sink.codec == codec and sink.frames == 7
    n, fourcc = _read_video(path)
    assert n == 7 and fourcc in fourccs
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no partial file left
    if codec == "h264":  # what browsers need: yuv420p and the index (moov) before the data (mdat)
        data = path.read_bytes()
        assert data.index(b"moov") < data.index(b"mdat")
        probe = subprocess.run([video.ffmpeg_with_x264() or "ffmpeg", "-hide_banner", "-i", str(path)],
                               capture_output=True, text=True)
        assert "Video: h264" in probe.stderr and "yuv420p" in probe.stderr


def test_video_auto_prefers_h264_and_abort_leaves_nothing(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path, "v", fps=10)
    sink.write(np.zeros((32, 32, 3), np.uint8))
    assert sink.codec == ("h264" if video.ffmpeg_with_x264() else "vp9")
    sink.abort()
    assert list(tmp_path.iterdir()) == [] and sink.close() is None
    with pytest.raises(ValueError, match="video codecs must be among"):
        VideoSink(tmp_path, "v", fps=10, codecs=("avi",))


def test_incomplete_report_slice_and_legend(tmp_path: Path) -> None:
    recs = _records()
    report = {"complete": False, "incomplete_reason": "playback stopped by SIGINT after 10 frames sent",
              "mode": {"max": True, "rate": None}, "transport": "UDPv4",
              "slice": {"start_s": 2.5, "max_frames": 10, "first_s": 2.5, "last_s": 3.1},
              **rp.summarize(recs), "metrics": None,
              "classes": rp.class_table(["Road", "Sky"], [(128, 64, 128), (0, 0, 0)]),
              "video_codec": "h264", "contact_sheet_columns": "camera | overlay | prediction",
              "files": {"video": "overlay.mp4", "contact_sheet": "contact_sheet.png"}}
    final = rp.write_report(tmp_path, report, recs)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == final and on_disk["complete"] is False
    assert on_disk["incomplete_reason"].startswith("playback stopped by SIGINT")
    assert on_disk["classes"] == [{"id": 0, "name": "Road", "color": [128, 64, 128]},
                                  {"id": 1, "name": "Sky", "color": [0, 0, 0]}]
    md = (tmp_path / "report.md").read_text()
    assert md.splitlines()[2].startswith("**Incomplete run: playback stopped by SIGINT after 10 frames")
    assert "from 2.5 s after the bag's start, at most 10 frames (sent: 2.500 s to 3.100 s" in md
    assert "| 0 | Road | `#804080` (128, 64, 128) |" in md and "![class legend](legend.png)" in md
    assert "![camera | overlay | prediction](contact_sheet.png)" in md and "| ground truth" not in md
    assert "Overlay video (H.264; legend burnt in)" in md and "Fast DDS transport UDPv4" in md
    legend = cv2.cvtColor(cv2.imread(str(tmp_path / final["files"]["legend"])), cv2.COLOR_BGR2RGB)
    assert _colour_pixels(legend, (128, 64, 128)) > 20
    assert not list(tmp_path.glob(".*partial*"))

    # a whole run says so, and the report of a complete run has no banner
    whole = rp.write_report(tmp_path, {"mode": {"max": True}, **rp.summarize(recs), "metrics": None}, recs)
    assert whole["complete"] is True and whole["incomplete_reason"] is None
    assert "Incomplete" not in (tmp_path / "report.md").read_text()
