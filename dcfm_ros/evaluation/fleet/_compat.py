"""The node's parameter schema and engine builder without rclpy: dcfm_ros.engine.settings (issue 19 moves
them there from node/params.py). Until that move is on main, node/params.py (which imports rclpy) is
the fallback. Delete this module and import dcfm_ros.engine.settings directly once the move has landed."""

from __future__ import annotations

try:
    from dcfm_ros.engine.settings import (
        PARAMETERS,
        ParameterError,
        StartupError,
        build_engine,
        settings_from_values,
    )
except ImportError:  # main before the move
    from dcfm_ros.node.params import (  # type: ignore[no-redef]
        PARAMETERS,
        ParameterError,
        StartupError,
        build_engine,
        settings_from_values,
    )

__all__ = ["PARAMETERS", "ParameterError", "StartupError", "build_engine", "settings_from_values"]
