"""What a fleet run scores with: the node's effective parameters (node defaults < params file < --param,
exactly as dcfm-bag-eval builds them), the checkpoint they name, and the run key that makes a result
reusable: a hash of the model file's bytes and every parameter that can change a number."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.bag_eval.params import effective_params, model_info

# Bump when a result file's content or meaning changes: older results are then scored again.
RESULT_VERSION = 1
# Node parameters that only shape ROS I/O (subscription, published extras), never a scored number.
ROS_IO_ONLY = frozenset({"use_sim_time", "image_transport", "qos.depth", "qos.reliability", "drop_policy",
                         "overlay_alpha", "mask_classes", "backend_cache_dir"})


@dataclass(frozen=True)
class FleetSpec:
    """Everything a worker needs to score a bag (plain data: it travels to processes and Ray tasks)."""

    values: dict[str, Any]  # the node's effective parameters
    model: dict[str, Any]  # bag_eval.params.model_info's entry (path, backbone, class_names, ...)
    palette: list[list[int]]
    model_sha256: str
    image_topic: str | None = None
    gt_topic: str | None = None
    max_frames: int | None = None
    low_percentile: float = 5.0
    threads: int | None = None  # torch threads per engine (None: PyTorch's default)
    key: str = field(default="")

    @property
    def class_names(self) -> list[str]:
        return list(self.model["class_names"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_key(spec: FleetSpec) -> str:
    """sha256 over the model's bytes, the scoring parameters and what is read from each bag."""
    scored = {k: v for k, v in sorted(spec.values.items()) if k not in ROS_IO_ONLY}
    scored.pop("model", None)  # the file's bytes count, not its path
    doc = {"result_version": RESULT_VERSION, "model_sha256": spec.model_sha256, "params": scored,
           "image_topic": spec.image_topic, "gt_topic": spec.gt_topic, "max_frames": spec.max_frames,
           "low_percentile": spec.low_percentile}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def make_spec(params_file: Path | None, overrides: Sequence[tuple[str, Any]], *, image_topic: str | None,
              gt_topic: str | None, max_frames: int | None, low_percentile: float,
              threads: int | None) -> FleetSpec:
    """The spec of a run; BagEvalError for unknown parameters, an unusable params file or model,
    ParameterError for a value the node would refuse (checked here, before any worker starts)."""
    from dcfm_ros.engine.settings import settings_from_values

    # max_mode: drop_policy none, as dcfm-bag-eval --max: every frame is processed, none dropped.
    values = effective_params(params_file, overrides, max_mode=True, transport="raw")
    settings_from_values(values)
    model, cfg = model_info(values)
    spec = FleetSpec(values=values, model=model, palette=[list(c) for c in cfg.palette],
                     model_sha256=file_sha256(Path(model["path"])), image_topic=image_topic,
                     gt_topic=gt_topic, max_frames=max_frames, low_percentile=float(low_percentile),
                     threads=threads)
    return FleetSpec(**{**asdict(spec), "key": run_key(spec)})
