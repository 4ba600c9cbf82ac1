"""dcfm_ros.engine."""
