"""dcfm_ros.node."""
