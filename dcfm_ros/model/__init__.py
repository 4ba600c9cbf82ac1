"""dcfm_ros.model."""
