"""dcfm_ros.dds: Fast DDS configuration shipped with the package (no rclpy import here): profiles a
process loads through its environment before rclpy starts, used by the launch file and dcfm-bag-eval."""
