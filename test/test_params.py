"""Node parameters: one declaration table, config/dcfm.yaml in step with it, validation, the launch file."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from dcfm_ros.node.params import (
    PARAMETER_NAMES,
    PARAMETERS,
    RUNTIME_PARAMETERS,
    ParameterError,
    StartupError,
    apply_changes,
    build_engine,
    declare_parameters,
    default_model_path,
    mask_topic_suffix,
    read_settings,
    settings_from_values,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "dcfm.yaml"
LAUNCH = REPO / "launch" / "dcfm.launch.py"
RCLPY_BUILTIN = {"use_sim_time"}  # declared by rclpy's Node itself
DEFAULTS = {p.name: p.default for p in PARAMETERS}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_values() -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    assert list(doc) == ["/**"], "parameters for any node name and namespace"
    return flatten(doc["/**"]["ros__parameters"])


# -- config/dcfm.yaml ---------------------------------------------------------------------------------


def test_config_file_has_exactly_the_declared_parameters() -> None:
    in_file = set(config_values()) - RCLPY_BUILTIN
    assert in_file == set(PARAMETER_NAMES), (in_file ^ set(PARAMETER_NAMES))


def test_config_file_values_are_the_declared_defaults() -> None:
    for name, value in config_values().items():
        if name in RCLPY_BUILTIN:
            continue
        default = DEFAULTS[name]
        assert value == ([] if default is None else default), name


def test_every_parameter_in_the_config_file_has_a_comment() -> None:
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z_][\w]*):\s*(\S.*)?$", line)
        if not match or match.group(3) is None or line.strip().startswith("#"):
            continue  # a section (keyframe:, qos:) or not a key
        above = lines[i - 1].strip()
        assert above.startswith("#") or "#" in line, f"no comment for '{match.group(2)}' (line {i + 1})"


def test_settings_from_the_shipped_config_are_valid() -> None:
    values = {n: (None if v == [] else v) for n, v in config_values().items() if n not in RCLPY_BUILTIN}
    s = settings_from_values(values)
    assert (s.drop_policy, s.image_transport, s.qos_reliability, s.input_size, s.mask_classes) == \
        ("latest", "raw", "auto", None, ())
    assert s.model_path == default_model_path()


# -- declarations on a real rclpy node -------------------------------------------------------------------


@pytest.fixture
def node(ros_context: Any) -> Any:
    import rclpy

    n = rclpy.create_node("params_under_test", context=ros_context)
    yield n
    n.destroy_node()


def test_declared_with_descriptors_and_read_only_flags(node: Any) -> None:
    from rclpy.parameter import Parameter

    declare_parameters(node)
    runtime = {"keyframe.policy", "keyframe.interval", "keyframe.threshold", "keyframe.feature_threshold",
               "keyframe.min_interval",
               "keyframe.max_interval", "keyframe.schedule", "keyframe.spread", "overlay_alpha",
               "confidence.warn_below", "confidence.window", "viewer_rate", "jpeg_quality"}
    assert runtime == RUNTIME_PARAMETERS
    for spec in PARAMETERS:
        d = node.describe_parameter(spec.name)
        assert d.description and d.read_only == (spec.name not in RUNTIME_PARAMETERS), spec.name
        assert d.type == int(Parameter.Type[spec.type.name]), spec.name
    assert node.describe_parameter("keyframe.interval").integer_range[0].from_value == 1
    assert node.describe_parameter("overlay_alpha").floating_point_range[0].to_value == 1.0
    s = read_settings(node)  # unset arrays read as empty
    assert s.input_size is None and s.mask_classes == ()
    # rclpy enforces read_only and ranges before the node's own callback is asked
    assert not node.set_parameters([Parameter("device", value="cpu")])[0].successful
    assert not node.set_parameters([Parameter("keyframe.interval", value=0)])[0].successful
    assert node.set_parameters([Parameter("keyframe.interval", value=7)])[0].successful


def test_bad_overrides_are_reported_at_declaration(ros_context: Any) -> None:
    import rclpy
    from rclpy.parameter import Parameter

    for bad in (Parameter("keyframe.interval", value=0), Parameter("overlay_alpha", value="half"),
                Parameter("qos.depth", value=5000)):
        n = rclpy.create_node("params_bad", context=ros_context, parameter_overrides=[bad])
        try:
            with pytest.raises(ParameterError, match=re.escape(bad.name)):
                declare_parameters(n)
        finally:
            n.destroy_node()


def test_overrides_are_read(ros_context: Any) -> None:
    import rclpy
    from rclpy.parameter import Parameter

    overrides = [Parameter("input_size", value=[480, 640]), Parameter("mask_classes", value=["Road", "Car"]),
                 Parameter("drop_policy", value="none"), Parameter("keyframe.policy", value="motion")]
    n = rclpy.create_node("params_set", context=ros_context, parameter_overrides=overrides)
    try:
        declare_parameters(n)
        s = read_settings(n)
    finally:
        n.destroy_node()
    assert (s.input_size, s.mask_classes, s.drop_policy, s.keyframe.policy) == \
        ((480, 640), ("Road", "Car"), "none", "motion")
    assert type(s.keyframe.make_policy()).__name__ == "MotionThreshold"


# -- validation rules -------------------------------------------------------------------------------------


def defaults(**changes: Any) -> dict[str, Any]:
    values = dict(DEFAULTS)
    values.update({k.replace("__", "."): v for k, v in changes.items()})
    return values


@pytest.mark.parametrize(("changes", "name"), [
    ({"device": "gpu"}, "device"),
    ({"device": "cuda:x"}, "device"),
    ({"precision": "int4"}, "precision"),
    ({"labels_at": "half"}, "labels_at"),
    ({"keyframe__policy": "adaptive"}, "keyframe.policy"),
    ({"keyframe__interval": 0}, "keyframe.interval"),
    ({"keyframe__interval": True}, "keyframe.interval"),
    ({"keyframe__threshold": 1.0}, "threshold"),
    ({"keyframe__threshold": -0.1}, "keyframe.threshold"),
    ({"keyframe__feature_threshold": 1.0}, "feature_threshold"),
    ({"keyframe__feature_threshold": -0.5}, "keyframe.feature_threshold"),
    ({"keyframe__min_interval": 10, "keyframe__max_interval": 5}, "max_interval"),
    ({"keyframe__schedule": "async"}, "keyframe.schedule"),
    ({"keyframe__spread": 0}, "keyframe.spread"),
    ({"input_size": [480]}, "input_size"),
    ({"input_size": [480, 0]}, "input_size"),
    ({"camera_size": [1080, 1920, 3]}, "camera_size"),
    ({"camera_batching": "sometimes"}, "camera_batching"),
    ({"mask_classes": ["Road", "Road"]}, "mask_classes"),
    ({"mask_classes": [""]}, "mask_classes"),
    ({"overlay_alpha": 2.0}, "overlay_alpha"),
    ({"image_transport": "theora"}, "image_transport"),
    ({"qos__depth": 0}, "qos.depth"),
    ({"qos__reliability": "sometimes"}, "qos.reliability"),
    ({"drop_policy": "oldest"}, "drop_policy"),
    ({"model": 3}, "model"),
    ({"nonkey_blend": "cosine:2"}, "nonkey_blend"),
    ({"nonkey_blend": "blend"}, "nonkey_blend"),
])
def test_invalid_values_name_the_parameter(changes: dict[str, Any], name: str) -> None:
    with pytest.raises(ParameterError, match=re.escape(name)):
        settings_from_values(defaults(**changes))


def test_choices_are_case_insensitive_and_normalised() -> None:
    s = settings_from_values(defaults(device=" CUDA:1 ", drop_policy="None", keyframe__policy="Motion",
                                      nonkey_blend=" Cosine:0.5:prev"))
    assert (s.device, s.drop_policy, s.keyframe.policy) == ("cuda:1", "none", "motion")
    assert s.nonkey_blend == "cosine:logits:prev:0.5"


def test_feature_policy_from_parameters() -> None:
    from rclpy.parameter import Parameter

    from dcfm_ros.engine.feature_policy import FeatureSimilarity

    s = settings_from_values(defaults(keyframe__policy="feature", keyframe__feature_threshold=0.6,
                                      keyframe__min_interval=2, keyframe__max_interval=9))
    policy = s.keyframe.make_policy()
    assert isinstance(policy, FeatureSimilarity) and policy.needs_similarity
    assert (policy.threshold, policy.min_interval, policy.max_interval) == (0.6, 2, 9)
    # decisions follow the low-similarity share, within min/max
    assert [policy.decide(1, 0.9), policy.decide(2, 0.5), policy.decide(2, 0.7), policy.decide(9, 0.0)] \
        == [False, False, True, True]
    # a change of feature_threshold alone rebuilds the policy (it is one of its fields)
    new = apply_changes(s, [Parameter("keyframe.feature_threshold", value=0.3)])
    assert new.keyframe.policy_fields() != s.keyframe.policy_fields()
    assert new.keyframe.make_policy().threshold == 0.3


def test_run_time_changes() -> None:
    from rclpy.parameter import Parameter

    s = settings_from_values(defaults(keyframe__policy="fixed"))
    new = apply_changes(s, [Parameter("keyframe.policy", value="motion"),
                            Parameter("keyframe.threshold", value=0.2)])
    assert (new.keyframe.policy, new.keyframe.threshold) == ("motion", 0.2)
    assert s.keyframe.policy == "fixed"  # the old settings are untouched
    sched = apply_changes(s, [Parameter("keyframe.schedule", value="Spread"),
                              Parameter("keyframe.spread", value=4)])
    assert (sched.keyframe.schedule, sched.keyframe.spread) == ("spread", 4)
    assert sched.keyframe.make_schedule().describe() == "spread:4"
    assert sched.keyframe.policy_fields() == s.keyframe.policy_fields()  # the policy is not rebuilt
    with pytest.raises(ParameterError, match=r"keyframe\.schedule"):
        apply_changes(s, [Parameter("keyframe.schedule", value="later")])
    with pytest.raises(ParameterError, match="run time"):
        apply_changes(s, [Parameter("drop_policy", value="none")])
    with pytest.raises(ParameterError, match="max_interval"):
        apply_changes(s, [Parameter("keyframe.min_interval", value=31)])
    # judged together: raising both in one atomic set is fine
    both = apply_changes(s, [Parameter("keyframe.min_interval", value=40),
                             Parameter("keyframe.max_interval", value=50)])
    assert (both.keyframe.min_interval, both.keyframe.max_interval) == (40, 50)
    assert apply_changes(s, [Parameter("use_sim_time", value=True)]) == s  # rclpy's own parameter


def test_mask_topic_names() -> None:
    assert mask_topic_suffix("Road") == "Road"
    assert mask_topic_suffix("traffic light") == "traffic_light"
    assert mask_topic_suffix("person/rider") == "person_rider"
    assert mask_topic_suffix("2wheeler") == "class_2wheeler"


def test_default_model_is_the_packaged_file() -> None:
    path = default_model_path()
    assert path.name == "camvid_efficientnet_lite0.safetensors"
    assert path.parent == REPO / "dcfm_ros" / "models"


# -- building the engine: start-up errors (in process; test_node checks the exit code) ------------------


def test_engine_is_built_from_a_checkpoint(tiny_checkpoint: Path) -> None:
    s = settings_from_values(defaults(model=str(tiny_checkpoint), device="cpu", input_size=[32, 48],
                                      keyframe__policy="fixed", keyframe__interval=4,
                                      keyframe__schedule="background"))
    engine = build_engine(s)
    assert engine.input_size == (32, 48)
    assert engine.policy.interval == 4
    assert engine.schedule.name == "background"
    engine.close()
    assert type(build_engine(settings_from_values(defaults(model=str(tiny_checkpoint)))).policy).__name__ \
        == "MotionThreshold"  # the node's default policy
    assert str(engine.device) == "cpu"


def test_label_size_auto_is_network_only_for_cameras_much_larger_than_the_network() -> None:
    from dcfm_ros.engine.specs import label_size

    net = (360, 480)
    assert label_size("auto", (1080, 1440), net) == net  # 9x the pixels
    assert label_size("auto", (480, 640), net) == (480, 640)  # 1.78x: exact
    assert label_size("auto", (360, 480), net) == (360, 480)
    assert label_size("camera", (1080, 1440), net) == (1080, 1440)
    assert label_size("network", (480, 640), net) == net
    with pytest.raises(ValueError, match="labels_at"):
        label_size("half", (480, 640), net)


def test_labels_at_reaches_the_engine(tiny_checkpoint: Path) -> None:
    """auto gives the network-size labels for a camera of 4x the network's pixels, the exact ones for
    a camera of the network's size (against engines built with labels_at network / camera)."""
    rng = np.random.default_rng(3)
    big, small = (rng.integers(0, 256, (64, 96, 3), dtype=np.uint8),
                  rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    engines = {at: build_engine(settings_from_values(defaults(
        model=str(tiny_checkpoint), device="cpu", backend="onnxruntime", input_size=[32, 48],
        keyframe__policy="fixed", keyframe__interval=1, labels_at=at)))
        for at in ("auto", "network", "camera")}
    assert engines["auto"].labels_at == "auto" and engines["auto"].graph_io
    labels = {at: (e.process(big).labels, e.process(small).labels) for at, e in engines.items()}
    assert labels["auto"][0].shape == (64, 96)
    assert np.array_equal(labels["auto"][0], labels["network"][0])
    assert np.array_equal(labels["auto"][1], labels["camera"][1])
    assert not np.array_equal(labels["network"][0], labels["camera"][0])  # the choice is visible


@pytest.mark.parametrize(("changes", "words"), [
    ({"model": "/no/such/file.safetensors"}, ("model file not found",)),
    ({"mask_classes": ["Road", "Bus"]}, ("Bus", "traffic light")),
    ({"precision": "fp16", "device": "cpu"}, ("precision",)),
    # int8 is a valid choice, but not on torch, and not without calibration frames for the model
    ({"precision": "int8", "backend": "torch"}, ("has no int8", "openvino", "onnxruntime")),
    ({"precision": "int8", "backend": "onnxruntime"}, ("needs calibration frames", "dcfm-export")),
])
def test_start_up_errors(tiny_checkpoint: Path, changes: dict[str, Any], words: tuple[str, ...]) -> None:
    values = defaults(model=str(tiny_checkpoint))
    values.update(changes)
    with pytest.raises(StartupError) as info:
        build_engine(settings_from_values(values))
    for word in words:
        assert word in str(info.value)


def test_bad_checkpoint_file(tmp_path: Path) -> None:
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(StartupError, match="cannot load the model"):
        build_engine(settings_from_values(defaults(model=str(bad))))


def test_cuda_without_a_gpu(tiny_checkpoint: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(StartupError, match="CUDA is not available"):
        build_engine(settings_from_values(defaults(model=str(tiny_checkpoint), device="cuda")))


# -- launch/dcfm.launch.py (launch/launch_ros are not installable here: checked by reading it) -----------


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _str_arg(call: ast.Call) -> str:
    arg = call.args[0]
    assert isinstance(arg, ast.Constant) and isinstance(arg.value, str)
    return arg.value


def test_launch_file_arguments_are_declared_used_and_passed_to_real_parameters() -> None:
    tree = ast.parse(LAUNCH.read_text())
    declared = [_str_arg(c) for c in _calls(tree, "DeclareLaunchArgument")]
    used = {_str_arg(c) for c in _calls(tree, "LaunchConfiguration")}
    assert sorted(declared) == sorted({"image_topic", "params_file", "namespace", "use_sim_time", "model",
                                       "respawn", "respawn_delay", "cameras", "image_topics",
                                       "large_messages"})
    assert set(declared) == used, f"unused: {set(declared) - used}, undeclared: {used - set(declared)}"
    # every key put into the parameters dict is a node parameter (or rclpy's use_sim_time)
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) \
                and any(getattr(t, "id", None) == "overrides" for t in node.targets):
            keys |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.value, ast.Name) and node.value.id == "overrides":
            keys.add(node.slice.value)
    assert keys == {"use_sim_time", "model", "cameras"}
    assert keys <= set(PARAMETER_NAMES) | RCLPY_BUILTIN
    (node_call,) = _calls(tree, "Node")
    kw = {k.arg: k.value for k in node_call.keywords}
    assert ast.literal_eval(kw["package"]) == "dcfm_ros" and ast.literal_eval(kw["executable"]) == "dcfm_node"
    assert {"namespace", "parameters", "remappings", "respawn", "respawn_delay", "additional_env"} <= set(kw)
    text = LAUNCH.read_text()
    assert '"config", "dcfm.yaml"' in text and '("image", image_topic)' in text
    assert ast.unparse(kw["remappings"]) == "remappings"


def _launch_helpers() -> dict[str, Any]:
    """The launch file's own pure-Python helpers (parse_bool, check_file), run as written: the file's
    module-level code without its launch/launch_ros imports, which cannot be installed here."""
    tree = ast.parse(LAUNCH.read_text())
    keep = [n for n in tree.body if not (isinstance(n, ast.ImportFrom) and n.module
                                        and n.module.split(".")[0] in ("launch", "launch_ros"))]
    namespace: dict[str, Any] = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(LAUNCH), "exec"), namespace)
    return namespace


def test_launch_large_messages_gives_the_node_the_shipped_profile_unless_one_is_set() -> None:
    from dcfm_ros.dds.profiles import LARGE_MESSAGES_PROFILE, PROFILE_VARIABLE

    node_environment = _launch_helpers()["node_environment"]
    assert node_environment(True, {}) == {PROFILE_VARIABLE: str(LARGE_MESSAGES_PROFILE)}
    assert LARGE_MESSAGES_PROFILE.is_file()
    assert node_environment(False, {}) == {}
    assert node_environment(True, {PROFILE_VARIABLE: "/etc/my_fastdds.xml"}) == {}  # the user's own wins


def test_launch_use_sim_time_and_respawn_accept_the_usual_spellings() -> None:
    helpers = _launch_helpers()
    parse_bool = helpers["parse_bool"]
    assert [parse_bool("use_sim_time", t) for t in ("true", "True", "false", "False")] == [
        True, True, False, False]
    for text in ("yes", "1", "TRUE", ""):
        with pytest.raises(ValueError, match="use_sim_time"):
            parse_bool("use_sim_time", text)
    # the declared choices are exactly what parse_bool accepts
    tree = ast.parse(LAUNCH.read_text())
    for call in _calls(tree, "DeclareLaunchArgument"):
        if _str_arg(call) in ("use_sim_time", "respawn"):
            choices = next(k.value for k in call.keywords if k.arg == "choices")
            assert ast.unparse(choices) == "list(BOOLEANS)"
    assert set(helpers["BOOLEANS"]) == {"true", "True", "false", "False"}


def test_launch_refuses_a_missing_params_file_or_model(tmp_path: Path) -> None:
    check_file = _launch_helpers()["check_file"]
    real = tmp_path / "dcfm.yaml"
    real.write_text("/**: {}\n")
    assert check_file("params_file", str(real)) == str(real)
    for name, path in (("params_file", tmp_path / "missing.yaml"), ("model", tmp_path / "m.safetensors"),
                       ("params_file", tmp_path)):
        with pytest.raises(ValueError, match=f"{name}.*is not a file"):
            check_file(name, str(path))
    # both are checked in the node's OpaqueFunction, before the Node action exists
    text = LAUNCH.read_text()
    assert 'check_file("params_file"' in text and 'check_file("model"' in text


def test_launch_fails_when_the_node_fails_at_start_up() -> None:
    """`ros2 launch` exits 0 when its only node dies; the launch file's exit handler turns a non-zero
    exit of the node (not caused by launch's own shutdown, not respawned) into an error in launch,
    which makes LaunchService.run() return 1. launch cannot be installed here: the decision is run as
    written, the handler's wiring is read from the file."""
    node_failure = _launch_helpers()["node_failure"]
    assert "status 1" in node_failure(1, False, False)
    assert "status -11" in node_failure(-11, False, False)  # a crash (SIGSEGV)
    assert node_failure(0, False, False) is None  # a clean exit
    assert node_failure(-2, True, False) is None  # Ctrl-C: launch was shutting down already
    assert node_failure(1, False, True) is None  # respawn:=true restarts it instead
    tree = ast.parse(LAUNCH.read_text())
    (handler,) = _calls(tree, "OnProcessExit")
    kw = {k.arg: ast.unparse(k.value) for k in handler.keywords}
    assert kw == {"target_action": "node", "on_exit": "_on_node_exit"}
    assert len(_calls(tree, "RegisterEventHandler")) == 1
    on_exit = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_on_node_exit")
    assert any(isinstance(n, ast.Raise) for n in ast.walk(on_exit))
    assert "node_failure(event.returncode" in ast.unparse(on_exit)


def test_launch_cameras_and_their_topics() -> None:
    helpers = _launch_helpers()
    parse_names, remap = helpers["parse_names"], helpers["camera_remappings"]
    assert parse_names("cameras", "[front,left,right]") == ["front", "left", "right"]
    assert parse_names("cameras", "[ 'front', \"left\" ]") == ["front", "left"]
    assert parse_names("cameras", "[]") == parse_names("cameras", "") == []
    for bad in ("[front,,left]", "[front", "front]"):
        with pytest.raises(ValueError, match="cameras"):
            parse_names("cameras", bad)
    assert remap(["front", "left"], ["/a/image_raw", "/b/image_raw"]) == [
        ("front/image", "/a/image_raw"), ("front/image/compressed", "/a/image_raw/compressed"),
        ("left/image", "/b/image_raw"), ("left/image/compressed", "/b/image_raw/compressed")]
    assert remap(["front", "left"], []) == []
    with pytest.raises(ValueError, match="one topic per camera"):
        remap(["front", "left"], ["/a/image_raw"])
    # the camera names the launch file passes are the node's own parameter, checked by the node
    assert "cameras" in PARAMETER_NAMES


def test_cameras_parameter() -> None:
    """cameras: unset or [] is the single-camera node; names are ROS name tokens, each once."""
    assert settings_from_values(defaults()).cameras == ()
    assert settings_from_values(defaults(cameras=[])).cameras == ()
    assert settings_from_values(defaults(cameras=["front", "left_2"])).cameras == ("front", "left_2")
    for bad, word in ((["front", "front"], "twice"), (["2nd"], "name token"), (["a/b"], "name token"),
                      ("front", "list")):
        with pytest.raises(ParameterError, match=f"cameras.*{word}"):
            settings_from_values(defaults(cameras=bad))
    assert next(p for p in PARAMETERS if p.name == "cameras").read_only  # topics are made at start-up
