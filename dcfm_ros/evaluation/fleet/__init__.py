"""dcfm-fleet-eval's library: score many recorded drives (rosbag2) with the node's StreamEngine, read
straight from the bags with rosbags (no ROS graph, no replay), one engine per worker. One job per module:

  bags        which bags (paths, globs, list files), their camera and ground-truth topics
  run_spec    the run's node parameters, model and the key that says "same model + parameters"
  scoring     one bag through one engine: per-frame confidence, class shares, metrics, stretches
  results     per-bag result files (atomic), resume
  executors   serial, processes (--workers N) and Ray (--ray [ADDRESS]): the same per-bag scoring
  aggregate   the fleet report (json, md, plots)
  hard        --export-hard N: the lowest-confidence frames as a folder dataset (dataset.type folder)

The CLI is dcfm_ros/tools/fleet_eval.py. Nothing here imports rclpy: the engine comes from
dcfm_ros.engine.settings, the functions the node builds its engine with.
"""
