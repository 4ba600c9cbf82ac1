"""dcfm_ros: DCFM (Deep Common Feature Mining) video semantic segmentation for ROS 2."""

from pkgutil import extend_path

# The generated interface module dcfm_ros.msg can live in another directory than this source
# package (pip route: rosidl installs it into the venv's site-packages); extend_path joins them.
__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
