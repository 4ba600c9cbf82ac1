"""dcfm_ros.evaluation."""
