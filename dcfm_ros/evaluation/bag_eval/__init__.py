"""dcfm-bag-eval: play a rosbag2 through the real dcfm_node over ROS, record what it publishes, and write
a report. One module per job:

  params        the node's effective parameters (defaults < params file < --param < the run's needs)
  node_process  dcfm_node as a subprocess in an isolated ROS domain
  playback      publish the frames (+ /clock), record the outputs (rclpy, imported on use)
  analysis      match outputs to frames and ground truth by stamp; metrics, video, contact sheet
  runner        one run, start to end
  cli           the command line (`dcfm-bag-eval`, main)
"""

from dcfm_ros.evaluation.bag_eval.analysis import analyze, label_classes_warning
from dcfm_ros.evaluation.bag_eval.cli import build_parser, main
from dcfm_ros.evaluation.bag_eval.errors import BagEvalError, NodeFailedError
from dcfm_ros.evaluation.bag_eval.params import effective_params, read_params_file

__all__ = ["BagEvalError", "NodeFailedError", "analyze", "build_parser", "effective_params",
           "label_classes_warning", "main", "read_params_file"]
