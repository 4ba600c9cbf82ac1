"""dcfm_ros.training.datasets."""
