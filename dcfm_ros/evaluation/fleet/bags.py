"""Which bags a fleet run scores (paths, globs, list files) and which topics of each it reads."""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dcfm_ros.evaluation import bagio
from dcfm_ros.evaluation.bag_eval.runner import choose_image_topic
from dcfm_ros.evaluation.bagio import BagReader

GLOB_CHARS = frozenset("*?[")


class FleetInputError(ValueError):
    """The bag list itself is unusable (a glob matching nothing, a missing list file, no bags)."""


def _is_bag(p: Path) -> bool:
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or (p.is_file() and p.suffix in (".mcap", ".db3"))


def _expand_one(spec: str, base: Path | None = None) -> list[Path]:
    text = spec.strip()
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if GLOB_CHARS & set(text):
        hits = sorted(Path(h) for h in glob.glob(str(path)))
        hits = [h for h in hits if _is_bag(h) or (h.is_dir() and any(_is_bag(c) for c in h.iterdir()))]
        if not hits:
            raise FleetInputError(f"{spec!r} matches no bag")
        return [b for h in hits for b in _expand_one(str(h))]
    if path.is_dir() and not _is_bag(path):
        # a folder of drives: the bags directly inside it (a folder with none stays, and is reported)
        children = sorted((c for c in path.iterdir() if _is_bag(c)), key=lambda c: bagio.natural_key(c.name))
        if children:
            return children
    return [path]


def expand_bags(specs: Iterable[str], list_files: Iterable[Path] = ()) -> list[Path]:
    """Bags in the order given, each once. A spec is a bag (rosbag2 folder or .mcap/.db3 file), a folder
    of bags or a glob; a list file holds one spec a line (# comments; relative to the file's folder).
    A path that does not exist or is not a bag stays in the list: it is reported as unreadable."""
    out: list[Path] = []
    for spec in specs:
        out += _expand_one(spec)
    for lf in list_files:
        if not lf.is_file():
            raise FleetInputError(f"bag list file not found: {lf}")
        for line in lf.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out += _expand_one(line, lf.parent)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if not unique:
        raise FleetInputError("no bags given")
    return unique


def bag_id(path: Path) -> str:
    """File-name-safe id of a bag: its name and a hash of its absolute path (two drives named alike in
    different folders do not share a result file)."""
    resolved = str(path.resolve())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)[:80] or "bag"
    return f"{name}-{hashlib.sha1(resolved.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class BagTopics:
    image: bagio.TopicInfo
    gt: str | None  # None: this bag has no ground truth (no metrics for it)
    gt_source: str  # "--gt-topic", "dcfm-make-bag" or "none"


def choose_topics(bag: BagReader, image_topic: str | None, gt_topic: str | None) -> BagTopics:
    """The camera topic (as dcfm-bag-eval chooses it) and the ground truth: --gt-topic where the bag has
    it, else the label topic dcfm-make-bag recorded in the bag's custom data, else none."""
    gt, source = None, "none"
    if gt_topic is not None:
        if gt_topic in bag.topics:
            bag.require_topic(gt_topic, bagio.IMAGE_TYPES, "ground-truth")
            gt, source = gt_topic, "--gt-topic"
    else:
        try:
            made = json.loads(bag.custom_data.get("dcfm_ros.make_bag", "") or "{}")
        except json.JSONDecodeError:
            made = {}
        label = made.get("label_topic") if isinstance(made, dict) else None
        if isinstance(label, str) and label in bag.topics:
            gt, source = label, "dcfm-make-bag"
    image = choose_image_topic(bag, image_topic, gt)
    return BagTopics(image, gt, source)
