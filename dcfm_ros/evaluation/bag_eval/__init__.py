"""dcfm-bag-eval: play a rosbag2 through the real dcfm_node over ROS, record what it publishes, and write
a report. One module per job:

  params        the node's effective parameters (defaults < params file < --param < the run's needs)
  node_process  dcfm_node as a subprocess in an isolated ROS domain; the DDS transport
  playback      publish the frames (+ /clock), record the outputs (rclpy, imported on use)
  analysis      match outputs to frames and ground truth by stamp; metrics, video, contact sheet
  stopping      SIGINT/SIGTERM: stop the run, keep what it had
  runner        one run, start to end

The command line is dcfm_ros/tools/bag_eval.py (`dcfm-bag-eval`). Nothing is imported here, so the
tool's signal handlers are in place before numpy, OpenCV, torch or rclpy load.
"""
