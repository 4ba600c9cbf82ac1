"""The node's parameters on an rclpy node: declared from the one schema in dcfm_ros.engine.settings
(`PARAMETERS`) with descriptors (type, range, read_only, description), read back, and changed at
run time. The schema, its validation and the engine it builds live there, rclpy-free, so the
evaluation tools share them; this module re-exports them for the node.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    ParameterUninitializedException,
)
from rclpy.parameter import Parameter

from dcfm_ros.engine.settings import (
    DEFAULT_MODEL_FILE,
    PARAMETER_NAMES,
    PARAMETERS,
    RUNTIME_PARAMETERS,
    KeyframeSettings,
    NodeSettings,
    ParameterError,
    ParamSpec,
    ParamType,
    StartupError,
    build_engine,
    build_multi_engine,
    default_model_path,
    mask_topic_suffix,
    settings_from_values,
)

if TYPE_CHECKING:
    from rclpy.node import Node

__all__ = ["DEFAULT_MODEL_FILE", "PARAMETERS", "PARAMETER_NAMES", "RUNTIME_PARAMETERS", "KeyframeSettings",
           "NodeSettings", "ParameterError", "StartupError", "apply_changes", "build_engine",
           "build_multi_engine", "declare_parameters", "default_model_path", "descriptor",
           "mask_topic_suffix", "read_settings", "read_values", "settings_from_values"]

_ROS_TYPES = {
    ParamType.STRING: Parameter.Type.STRING,
    ParamType.INTEGER: Parameter.Type.INTEGER,
    ParamType.DOUBLE: Parameter.Type.DOUBLE,
    ParamType.BOOL: Parameter.Type.BOOL,
    ParamType.INTEGER_ARRAY: Parameter.Type.INTEGER_ARRAY,
    ParamType.STRING_ARRAY: Parameter.Type.STRING_ARRAY,
}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(name=spec.name, type=int(_ROS_TYPES[spec.type]), description=spec.description,
                            additional_constraints=spec.constraints, read_only=spec.read_only,
                            dynamic_typing=False)
    if spec.int_range is not None:
        d.integer_range = [IntegerRange(from_value=spec.int_range[0], to_value=spec.int_range[1], step=1)]
    if spec.float_range is not None:
        d.floating_point_range = [FloatingPointRange(from_value=spec.float_range[0],
                                                     to_value=spec.float_range[1], step=0.0)]
    return d


def declare_parameters(node: Node) -> None:
    """Declare every parameter of PARAMETERS on `node` (values from --params-file / -p override defaults).

    Raises ParameterError when an override has the wrong type or is outside its range.
    """
    for spec in PARAMETERS:
        # Arrays without a default are declared by type only: a params file cannot express an
        # empty list (rcl reads `[]` as "not set"), so "unset" is the documented empty value.
        default = _ROS_TYPES[spec.type] if spec.default is None else spec.default
        try:
            node.declare_parameter(spec.name, default, descriptor(spec))
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
