"""Report rendering: statistics, report.json/report.md, plots, overlay video and contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from dcfm_ros.evaluation import report as rp
from dcfm_ros.evaluation.report import FrameRecord


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


def test_video_and_contact_sheet(tmp_path: Path) -> None:
    palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    rgb = np.full((48, 64, 3), 100, np.uint8)
    pred = np.zeros((48, 64), np.uint8)
    pred[:, 32:] = 2
    frame = rp.overlay_frame(rgb, pred, palette, 0.5)
    assert tuple(frame[10, 10]) == (178, 50, 50) and tuple(frame[10, 50]) == (50, 50, 178)
    assert rp.overlay_frame(rgb, None, palette, text="dropped").shape == rgb.shape

    sink = rp.VideoSink(tmp_path / "v.mp4", fps=15)
    for i in range(6):
        sink.write(rp.overlay_frame(rgb, (pred + i) % 3, palette, text=f"frame {i}"))
    sink.write(np.zeros((24, 32, 3), np.uint8))  # another size is resized, not an error
    sink.close()
    cap = cv2.VideoCapture(str(tmp_path / "v.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 7 and sink.codec in ("mp4v", "avc1")

    gt = rp.colorize(pred, palette)
    rows = [(f"#{i}", [("camera", rgb), ("overlay", frame), ("GT", gt)]) for i in range(3)]
    rp.contact_sheet(rows, tmp_path / "sheet.png", tile_width=128)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * (96 + 4), 3 * (128 + 4), 3)
    assert rp.pick_frames(101, 4) == [0, 33, 67, 100] and rp.pick_frames(2, 4) == [0, 1]
