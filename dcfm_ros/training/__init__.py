"""dcfm_ros.training."""
