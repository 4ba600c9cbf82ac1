"""Imports that move with the data-layer redesign (issue 19: evaluation/metrics.py -> data/metrics.py,
training/datasets -> data/datasets). The new paths first; the old ones until main has the move. Delete
this module (import from dcfm_ros.data directly) once the move has landed."""

from __future__ import annotations

try:
    from dcfm_ros.data.metrics import ConfusionMatrix
except ImportError:  # main before the move
    from dcfm_ros.evaluation.metrics import ConfusionMatrix  # type: ignore[no-redef]

__all__ = ["ConfusionMatrix"]
