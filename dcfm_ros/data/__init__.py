"""The shared data layer below `training` and `evaluation`: metrics (confusion matrix, mIoU, mVC),
dataset layouts and readers, image/label I/O, video frames, and the child-process helper. It imports
neither `training` nor `evaluation` (nor rclpy), so both may build on it."""
