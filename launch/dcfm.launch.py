"""Launch dcfm_node (DCFM video semantic segmentation).

    ros2 launch dcfm_ros dcfm.launch.py image_topic:=/camera/image_raw
    ros2 launch dcfm_ros dcfm.launch.py image_topic:=/camera/image_raw namespace:=front \
        model:=/path/to/model.safetensors params_file:=/path/to/my_dcfm.yaml use_sim_time:=True \
        respawn:=true
    ros2 launch dcfm_ros dcfm.launch.py cameras:=[front,left,right] \
        image_topics:=[/cam_front/image_raw,/cam_left/image_raw,/cam_right/image_raw]
    ros2 launch dcfm_ros dcfm.launch.py image_topic:=/camera/image_raw large_messages:=true

The node reads `image` (or `image/compressed` with the parameter image_transport: compressed) and
publishes segmentation/{labels,color,overlay,confidence,info,classes,masks/<class>} in `namespace`.
With `cameras` (a list of names) one node serves every camera with one model: camera <c> reads
<c>/image (remapped to the matching entry of `image_topics` when given) and publishes under
<c>/segmentation/...; `image_topic` is then not used. `model` given here overrides the params file;
left empty, the params file's value applies. A params_file or model that is not a file is an error
before the node starts (launch itself would only warn and run the node on built-in defaults).
respawn:=true restarts the node when it exits (after respawn_delay seconds); a node that cannot
start exits 1 and would be restarted too. Without respawn, a node that exits with a non-zero status
before launch was asked to shut down (a bad parameter, a missing model, a crash) ends the launch
with exit status 1, so that a script or a supervisor sees the failure (launch alone logs "process
has died" and exits 0). large_messages:=true starts the node with the shipped Fast DDS profile for
large outputs (dcfm_ros/dds/large_messages.xml: a 16 MB shared-memory segment, so a 1080p camera's
labels reach other processes on the host in ~3 ms instead of ~34 ms); it replaces Fast DDS's builtin
transports for the node only, and is ignored where FASTDDS_DEFAULT_PROFILES_FILE is set already.
"""

import os

from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from dcfm_ros.dds.profiles import PROFILE_VARIABLE, large_messages_environment
from launch import LaunchDescription

BOOLEANS = {"true": True, "True": True, "false": False, "False": False}


def parse_bool(name, text):
    """A launch argument spelled as ROS users type booleans; ValueError otherwise."""
    if text not in BOOLEANS:
        raise ValueError(f"launch argument {name}:={text!r}: use one of {', '.join(BOOLEANS)}")
    return BOOLEANS[text]


def check_file(name, path):
    """An existing file for launch argument `name`; ValueError naming it otherwise."""
    if not os.path.isfile(path):
        raise ValueError(f"launch argument {name}:={path!r} is not a file")
    return path


def parse_names(name, text):
    """A launch argument holding a list, spelled [a,b,c] (brackets optional, quotes allowed); [] or
    an empty text is the empty list."""
    inner = text.strip()
    if inner.startswith("[") != inner.endswith("]"):
        raise ValueError(f"launch argument {name}:={text!r}: write a list as [a,b,c]")
    inner = inner.strip("[]").strip()
    items = [t.strip().strip("'\"").strip() for t in inner.split(",")] if inner else []
    if any(not t for t in items):
        raise ValueError(f"launch argument {name}:={text!r} has an empty entry")
    return items


def camera_remappings(cameras, image_topics):
    """Remappings of each camera's input (raw and compressed) to its entry of image_topics; none
    when image_topics is empty (the node then reads <namespace>/<camera>/image)."""
    if not image_topics:
        return []
    if len(image_topics) != len(cameras):
        raise ValueError(f"launch argument image_topics has {len(image_topics)} entries for "
                         f"{len(cameras)} cameras {cameras}: give one topic per camera, in order")
    out = []
    for cam, topic in zip(cameras, image_topics, strict=True):
        out += [(f"{cam}/image", topic), (f"{cam}/image/compressed", topic + "/compressed")]
    return out


def node_failure(returncode, shutting_down, respawn):
    """Why the launch must fail when the node exited with `returncode`, or None: only a non-zero exit
    that launch did not cause (a Ctrl-C makes the node exit during launch's shutdown) and that no
    respawn will retry."""
    if returncode in (0, None) or shutting_down or respawn:
        return None
    return (f"dcfm_node exited with status {returncode} (see its log above); the launch fails with it")


def _on_node_exit(event, context):
    # Raised from an event handler, the error ends LaunchService.run() with a non-zero return, which
    # `ros2 launch` passes on as its exit status.
    why = node_failure(event.returncode, bool(getattr(context, "is_shutdown", False)), False)
    if why is not None:
        raise RuntimeError(why)


def node_environment(large_messages, environ):
    """Variables the node runs with beyond launch's own: the large-messages profile when asked for,
    unless the environment names a Fast DDS profile of its own."""
    if not large_messages or environ.get(PROFILE_VARIABLE):
        return {}
    return large_messages_environment()


def _node(context, *args, **kwargs):
    image_topic = LaunchConfiguration("image_topic").perform(context)
    params_file = check_file("params_file", LaunchConfiguration("params_file").perform(context))
    model = LaunchConfiguration("model").perform(context)
    sim_time = parse_bool("use_sim_time", LaunchConfiguration("use_sim_time").perform(context))
    overrides = {"use_sim_time": sim_time}
    if model:
        # Only when given: an empty value must not override the params file's model.
        overrides["model"] = check_file("model", os.path.expanduser(model))
    respawn = parse_bool("respawn", LaunchConfiguration("respawn").perform(context))
    large = parse_bool("large_messages", LaunchConfiguration("large_messages").perform(context))
    cameras = parse_names("cameras", LaunchConfiguration("cameras").perform(context))
    image_topics = parse_names("image_topics", LaunchConfiguration("image_topics").perform(context))
    # Raw and compressed input (image_transport names the compressed topic <base>/compressed).
    remappings = [("image", image_topic), ("image/compressed", image_topic + "/compressed")]
    if cameras:
        overrides["cameras"] = cameras
        remappings = camera_remappings(cameras, image_topics)
    elif image_topics:
        raise ValueError("launch argument image_topics goes with cameras (one topic per camera); a "
                         "single camera's topic is image_topic")
    node = Node(
        package="dcfm_ros",
        executable="dcfm_node",
        name="dcfm_node",
        namespace=LaunchConfiguration("namespace"),
        parameters=[params_file, overrides],
        remappings=remappings,
        respawn=respawn,
        respawn_delay=float(LaunchConfiguration("respawn_delay").perform(context)),
        additional_env=node_environment(large, os.environ),
        output="screen",
        emulate_tty=True,
    )
    if respawn:  # the node is restarted: its exit is not the launch's failure
        return [node]
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_on_node_exit))]


def generate_launch_description():
    default_params = PathJoinSubstitution([FindPackageShare("dcfm_ros"), "config", "dcfm.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="Camera image topic (sensor_msgs/Image); its /compressed "
                                          "sibling is used when image_transport is compressed"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameters file (see config/dcfm.yaml); must exist"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the node and its topics"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=list(BOOLEANS),
                              description="Use /clock (rosbag playback with --clock)"),
        DeclareLaunchArgument("model", default_value="",
                              description="Checkpoint file; empty: the params file's model parameter "
                                          "(whose empty default is the packaged model)"),
        DeclareLaunchArgument("cameras", default_value="[]",
                              description="Camera names, e.g. [front,left,right]: one node, one model, "
                                          "camera <c> on <c>/image and <c>/segmentation/...; [] = one "
                                          "camera on image_topic"),
        DeclareLaunchArgument("image_topics", default_value="[]",
                              description="With cameras: each camera's image topic, in order (remaps "
                                          "<c>/image); [] = <namespace>/<c>/image"),
        DeclareLaunchArgument("respawn", default_value="false", choices=list(BOOLEANS),
                              description="Restart the node whenever it exits (on the vehicle)"),
        DeclareLaunchArgument("respawn_delay", default_value="2.0",
                              description="Seconds to wait before a respawn"),
        DeclareLaunchArgument("large_messages", default_value="false", choices=list(BOOLEANS),
                              description="Run the node with the shipped Fast DDS profile for large "
                                          "outputs (cameras of ~1 MP and up)"),
        OpaqueFunction(function=_node),
    ])
