"""Launch dcfm_node (DCFM video semantic segmentation).

    ros2 launch dcfm_ros dcfm.launch.py image_topic:=/camera/image_raw
    ros2 launch dcfm_ros dcfm.launch.py image_topic:=/camera/image_raw namespace:=front \
        model:=/path/to/model.safetensors params_file:=/path/to/my_dcfm.yaml use_sim_time:=true

The node reads `image` (or `image/compressed` with the parameter image_transport: compressed) and
publishes segmentation/{labels,color,overlay,info,classes,masks/<class>} in `namespace`. `model`
given here overrides the params file; left empty, the params file's value applies.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _node(context, *args, **kwargs):
    image_topic = LaunchConfiguration("image_topic").perform(context)
    model = LaunchConfiguration("model").perform(context)
    overrides = {"use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)}
    if model:
        # Only when given: an empty value must not override the params file's model.
        overrides["model"] = model
    return [
        Node(
            package="dcfm_ros",
            executable="dcfm_node",
            name="dcfm_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            # Raw and compressed input (image_transport names the compressed topic <base>/compressed).
            remappings=[("image", image_topic), ("image/compressed", image_topic + "/compressed")],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("dcfm_ros"), "config", "dcfm.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Camera image topic (sensor_msgs/Image); its /compressed "
                                          "sibling is used when image_transport is compressed"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameters file (see config/dcfm.yaml)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock (rosbag playback with --clock)"),
        DeclareLaunchArgument("model", default_value="",
                              description="Checkpoint file; empty: the params file's model parameter "
                                          "(whose empty default is the packaged model)"),
        OpaqueFunction(function=_node),
    ])
