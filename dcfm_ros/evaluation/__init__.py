"""dcfm_ros.evaluation: segmentation metrics (mIoU, wIoU, mVC) and the `dcfm-evaluate` CLI.

Like dcfm_ros.training, sets OMP_WAIT_POLICY=PASSIVE (unless already set) so that CPU runs on a
shared machine do not busy-wait; see dcfm_ros/training/__init__.py.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
