"""The report pass: match the recorded labels to the input frames and ground truth by header stamp,
compute the metrics (dcfm_ros.data.metrics, the same code as dcfm-evaluate), and draw the
overlay video and the contact sheet, streaming through both bags once."""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError
from dcfm_ros.evaluation.bag_eval.playback import OUT_TOPICS
from dcfm_ros.evaluation.bagio import BadMessage, BagReader, Frame
from dcfm_ros.evaluation.report import FrameRecord
from dcfm_ros.evaluation.video import CODECS, VideoSink

IGNORE_INDEX = 255
MVC_LENGTHS = (8, 16)
CONTACT_FRAMES = 4


class StampLookup:
    """One topic's decoded items by header stamp, read lazily in log order. Items met before they are
    asked for are buffered; `known` (stamps present on the topic) stops a search for an absent stamp
    without reading to the end."""

    def __init__(self, items: Iterator[Frame | BadMessage], known: set[int]) -> None:
        self._items = items
        self.known = known
        self._buf: dict[int, Frame | BadMessage] = {}
        self.bad: list[BadMessage] = []

    def _take(self, item: Frame | BadMessage) -> None:
        if isinstance(item, BadMessage):
            self.bad.append(item)
        # only what will be asked for: a long bag played in a slice must not pile up in memory
        if item.stamp_ns in self.known and item.stamp_ns not in self._buf:
            self._buf[item.stamp_ns] = item

    def get(self, stamp: int) -> Frame | BadMessage | None:
        if stamp in self._buf:
            return self._buf.pop(stamp)
        if stamp not in self.known:
            return None
        for item in self._items:
            if isinstance(item, Frame) and item.stamp_ns == stamp:
                return item
            self._take(item)
            if stamp in self._buf:
                return self._buf.pop(stamp)
        return None

    def finish(self) -> list[BadMessage]:
        """Read the rest (to list every bad message) and return all bad messages seen."""
        for item in self._items:
            if isinstance(item, BadMessage):
                self.bad.append(item)
        return self.bad


def topic_stamps(bag: BagReader, topic: str, start_ns: int | None = None) -> set[int]:
    stamps = set()
    for raw in bag.raw([topic], start_ns=start_ns):
        with contextlib.suppress(bagio.DecodeError):
            stamps.add(bagio.cdr_header_stamp(raw.data))
    return stamps


class StreamingVC:
    """mVC_l streaming over runs of consecutive frames with labels and GT, with metrics.video_consistency
    on each window (so the numbers are those of mean_video_consistency over the runs)."""

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = tuple(lengths)
        self.window: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=max(lengths))
        self.ratios: dict[int, list[float]] = {n: [] for n in lengths}
        self.runs: dict[int, list[float]] = {n: [] for n in lengths}
        self.run_count = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        from dcfm_ros.data.metrics import video_consistency

        if self.window and self.window[-1][0].shape != gt.shape:
            self.end()
        self.window.append((gt, pred))
        for n in self.lengths:
            if len(self.window) >= n:
                win = list(self.window)[-n:]
                v = video_consistency([w[0] for w in win], [w[1] for w in win], n, IGNORE_INDEX)
                if v is not None:
                    self.ratios[n].append(v)

    def end(self) -> None:
        if self.window:
            self.run_count += 1
        for n in self.lengths:
            if self.ratios[n]:
                self.runs[n].append(float(np.mean(self.ratios[n])))
            self.ratios[n] = []
        self.window.clear()

    def result(self, n: int) -> float | None:
        self.end()
        return float(np.mean(self.runs[n])) if self.runs[n] else None


@dataclass
class Analysis:
    metrics: dict[str, Any] | None
    gt_bad: list[BadMessage]
    video: str | None
    contact_sheet: str | None
    warnings: list[str]
    video_codec: str | None = None
    contact_sheet_columns: str | None = None
    analysed: int = 0  # records gone through (all of them unless stopped)
    stopped: bool = False
    confusion: Any = None  # the ConfusionMatrix behind `metrics` (multi-camera: summed over cameras)
    mvc_runs: dict[int, list[float]] | None = None  # mVC_l of each run of frames, by l


def analyze(in_bag: Path, out_bag: Path, records: Sequence[FrameRecord], *, image_topic: str,
            gt_topic: str | None, class_names: Sequence[str], palette: Sequence[Sequence[int]],
            out_dir: Path, video: bool = True, contact_frames: int = CONTACT_FRAMES,
            video_codecs: Sequence[str] = CODECS, sliced: bool = False,
            should_stop: Callable[[], bool] = lambda: False, labels_topic: str | None = None) -> Analysis:
    """Match labels and GT to frames by stamp; metrics, overlay video and contact sheet (streaming).

    `sliced`: the records are a slice of the bag, so unusable GT messages outside it are not listed.
    `should_stop()` true ends the pass at the current frame: metrics, video and sheet then cover the
    frames gone through (`analysed`). `labels_topic`: the output bag's labels topic (default
    /segmentation/labels; a camera of a multi-camera node has its own)."""
    from dcfm_ros.data.metrics import ConfusionMatrix
    from dcfm_ros.evaluation import pictures as pic
    from dcfm_ros.evaluation import report as rp

    warnings: list[str] = []
    cm = ConfusionMatrix(len(class_names), ignore_index=IGNORE_INDEX)
    vc = StreamingVC(MVC_LENGTHS)
    gt_bad: list[BadMessage] = []
    metric_frames = 0
    ok = [r for r in records if r.status == "ok"]
    wanted = {r.stamp_ns for r in records}
    start_ns = records[0].log_ns if records and sliced else None
    out = Analysis(None, gt_bad, None, None, warnings)
    with BagReader(in_bag) as src, BagReader(out_bag) as dst:
        images = StampLookup(src.frames(image_topic, start_ns=start_ns), wanted)
        gts = (StampLookup(src.frames(gt_topic, "labels", start_ns=start_ns),
                           topic_stamps(src, gt_topic, start_ns) & wanted) if gt_topic else None)
        labels_topic = labels_topic or OUT_TOPICS["labels"][0]
        preds = StampLookup(dst.frames(labels_topic, "labels"), {r.stamp_ns for r in ok})
        # contact sheet: frames with labels, preferably with ground truth
        candidates = ([r for r in ok if r.stamp_ns in gts.known] if gts is not None else []) or ok
        sheet_stamps = {candidates[i].stamp_ns for i in pic.pick_frames(len(candidates), contact_frames)}
        sheet_rows: list[tuple[str, list[tuple[str, np.ndarray]]]] = []
        last_column: set[str] = set()
        sink = VideoSink(out_dir, Path(rp.FILES["video"]).stem, _rate(records), video_codecs) \
            if video and records else None
        strip: np.ndarray | None = None
        try:
            for r in records:
                if should_stop():
                    out.stopped = True
                    break
                img = images.get(r.stamp_ns)
                if not isinstance(img, Frame):
                    raise BagEvalError(f"frame {r.index} (stamp {r.stamp_ns}) is no longer readable in "
                                       f"{in_bag}")
                pred_item = preds.get(r.stamp_ns) if r.status == "ok" else None
                pred = pred_item.image if isinstance(pred_item, Frame) else None
                if r.status == "ok" and pred is None:
                    reason = (pred_item.reason if isinstance(pred_item, BadMessage)
                              else "not in the output bag")
                    warnings.append(f"labels of frame {r.index} unusable: {reason}")
                if pred is not None and pred.shape != img.image.shape[:2]:
                    warnings.append(f"labels of frame {r.index} are {_size(pred)}, the image "
                                    f"{_size(img.image)}: left out of the metrics")
                    pred = None
                gt = None
                if gts is not None:
                    g = gts.get(r.stamp_ns)
                    if isinstance(g, BadMessage):
                        gt_bad.append(g)
                    elif isinstance(g, Frame):
                        if g.image.shape != img.image.shape[:2]:
                            reason = f"ground truth is {_size(g.image)}, the image {_size(img.image)}"
                            gt_bad.append(BadMessage(g.topic, g.index, g.log_ns, reason, g.stamp_ns))
                        else:
                            gt = g.image
                            r.has_gt = True
                if gt is not None and pred is not None:
                    try:
                        cm.update(pred, gt)
                    except ValueError as exc:
                        raise BagEvalError(f"ground truth of frame {r.index} on {gt_topic} (stamp "
                                           f"{r.stamp_ns}) does not fit the model's {len(class_names)} "
                                           f"classes: {exc}") from exc
                    vc.add(gt, pred)
                    metric_frames += 1
                else:
                    vc.end()  # a gap: windows never span a frame without labels or GT
                if sink is not None:
                    text = (f"#{r.index} {'KEY ' if r.is_keyframe else ''}{r.latency_ms or 0:.0f} ms"
                            if pred is not None else f"#{r.index} no output")
                    frame = pic.overlay_frame(img.image, pred, palette, 0.5, text)
                    if strip is None or strip.shape[1] != frame.shape[1]:
                        strip = pic.legend(class_names, palette, frame.shape[1])
                    sink.write(pic.with_legend(frame, strip))
                if r.stamp_ns in sheet_stamps:
                    # captions say what each tile is: "ground truth" only where there is one
                    cells = [("camera", img.image), ("overlay" if pred is not None else "no output",
                                                     pic.overlay_frame(img.image, pred, palette, 0.5))]
                    if gt is not None:
                        cells.append(("ground truth", pic.colorize(gt, palette)))
                    elif pred is not None:
                        cells.append(("prediction", pic.colorize(pred, palette)))
                    last_column.add(cells[-1][0] if len(cells) == 3 else "")
                    sheet_rows.append((f"#{r.index}", cells))
                out.analysed += 1
            if gts is not None and not out.stopped:
                seen = {(b.index, b.reason) for b in gt_bad}
                gt_bad += [b for b in gts.finish() if (b.index, b.reason) not in seen and
                           (not sliced or (records and b.log_ns <= records[-1].log_ns))]
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
    if sink is not None and sink.close() is not None:
        assert sink.path is not None
        out.video, out.video_codec = sink.path.name, sink.codec
        if sink.tried:
            warnings.append(f"overlay video written as {sink.codec}; passed over: {'; '.join(sink.tried)}")
        if sink.codec == "mpeg4":
            warnings.append("the overlay video is MPEG-4 Part 2, which browsers do not play: pip install "
                            "imageio-ffmpeg for H.264")
    if sheet_rows:
        names, colors = list(class_names), [tuple(c) for c in palette]
        if "ground truth" in last_column:  # void pixels of the ground truth are drawn black
            names.append(f"void ({IGNORE_INDEX} in ground truth, not scored)")
            colors.append((0, 0, 0))
        pic.contact_sheet(sheet_rows, out_dir / rp.FILES["contact_sheet"], classes=(names, colors))
        out.contact_sheet = rp.FILES["contact_sheet"]
        third = " or ".join(sorted(c for c in last_column if c))
        out.contact_sheet_columns = "camera | overlay" + (f" | {third}" if third else "")
    if gt_topic is not None:
        summary = cm.summary(class_names)
        out.metrics = {"frames": metric_frames, "ignore_index": IGNORE_INDEX, "miou": summary["mIoU"],
                       "wiou": summary["wIoU"], "pixel_acc": summary["pixel_acc"],
                       "per_class_iou": summary["per_class_IoU"], "mvc8": vc.result(8),
                       "mvc16": vc.result(16), "mvc_runs": vc.run_count}
        out.confusion, out.mvc_runs = cm, {n: list(v) for n, v in vc.runs.items()}
        if metric_frames == 0:
            warnings.append(f"no frame has both labels and ground truth on {gt_topic}: metrics are empty")
    return out


def label_classes_warning(custom_data: Mapping[str, str], gt_topic: str | None,
                          class_names: Sequence[str]) -> str | None:
    """A warning when the bag says (dcfm-make-bag's custom data) that `gt_topic` holds the train ids
    of a class list other than the model's: the ids would then be compared with a different meaning
    and the metrics be numbers about nothing. None when they agree or the bag does not say."""
    text = custom_data.get("dcfm_ros.make_bag")
    if gt_topic is None or not text:
        return None
    try:
        made = json.loads(text)
    except json.JSONDecodeError:
        return None
    names = made.get("class_names") if isinstance(made, dict) else None
    if not isinstance(names, list) or made.get("label_topic") != gt_topic:
        return None
    if [str(n) for n in names] == list(class_names):
        return None
    def short(seq: Sequence[object]) -> str:
        return ", ".join(map(str, list(seq)[:5])) + (", ..." if len(seq) > 5 else "")

    return (f"the labels on {gt_topic} are {made.get('dataset', 'dataset')} train ids of {len(names)} "
            f"classes ({short(names)}), the model has {len(class_names)} ({short(class_names)}): the "
            "metrics compare different class maps")


def _size(a: np.ndarray) -> str:
    return f"{a.shape[1]}x{a.shape[0]}"


def _rate(records: Sequence[FrameRecord]) -> float:
    if len(records) < 2:
        return 15.0
    span = (records[-1].log_ns - records[0].log_ns) / 1e9
    return (len(records) - 1) / span if span > 0 else 15.0

