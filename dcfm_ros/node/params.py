"""The node's parameters on the ROS side: declared on the node with descriptors, read back, changed at
run time. The table, the validation and the engine construction are in node/settings.py (no rclpy
there, so that tools build the node's engine without ROS); they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.parameter import Parameter

from dcfm_ros.node.settings import (  # noqa: F401  (re-exported: the node's parameter API)
    BACKENDS,
    DEFAULT_MODEL_FILE,
    DEVICE_RE,
    DROP_POLICIES,
    KEYFRAME_POLICIES,
    KEYFRAME_SCHEDULES,
    PARAMETER_NAMES,
    PARAMETERS,
    PRECISIONS,
    RELIABILITIES,
    RUNTIME_PARAMETERS,
    TRANSPORTS,
    KeyframeSettings,
    NodeSettings,
    ParameterError,
    ParamSpec,
    ParamType,
    StartupError,
    build_engine,
    default_model_path,
    mask_topic_suffix,
    settings_from_values,
)

if TYPE_CHECKING:
    from rclpy.node import Node


def declare_parameters(node: Node) -> None:
    """Declare every parameter of PARAMETERS on `node` (values from --params-file / -p override defaults).

    Raises ParameterError when an override has the wrong type or is outside its range.
    """
    for spec in PARAMETERS:
        # Arrays without a default are declared by type only: a params file cannot express an
        # empty list (rcl reads `[]` as "not set"), so "unset" is the documented empty value.
        default = Parameter.Type(int(spec.type)) if spec.default is None else spec.default
        try:
            node.declare_parameter(spec.name, default, spec.descriptor())
        except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
            raise ParameterError(f"parameter '{spec.name}': {exc}") from exc


def read_values(node: Node) -> dict[str, Any]:
    """{name: value} of every declared parameter; None for those declared without a value."""
    out: dict[str, Any] = {}
    for name in PARAMETER_NAMES:
        try:
            out[name] = node.get_parameter(name).value
        except ParameterUninitializedException:
            out[name] = None
    return out


def read_settings(node: Node) -> NodeSettings:
    """Validated settings from the node's declared parameters (raises ParameterError)."""
    return settings_from_values(read_values(node))


def apply_changes(settings: NodeSettings, changes: Sequence[Parameter]) -> NodeSettings:
    """The settings after `changes` (run-time parameter set); raises ParameterError when rejected.

    Only run-time parameters may change (rclpy already refuses read_only ones); the whole new
    combination is validated, so a set of several keyframe values is judged together. Parameters
    that are not the node's own (use_sim_time, ...) are left to rclpy.
    """
    values = dict(settings.values)
    for p in changes:
        if p.name not in values:
            continue  # not ours (use_sim_time, ...): rclpy judges those
        if p.name not in RUNTIME_PARAMETERS:
            raise ParameterError(f"parameter '{p.name}' cannot be changed at run time (restart the node)")
        values[p.name] = p.value
    return settings_from_values(values)
