"""The colcon route for real: `colcon build` (colcon-core + colcon-ros from PyPI) over the pip-wheel ROS.

A copy of the source tree goes into a fresh workspace's src/, `python -m colcon build
--packages-select dcfm_ros` builds it as README route 2 says (ament_cmake: the interfaces AND the
Python package beside them), and then, in a shell that did `source install/setup.bash` and has the
venv's bin off PATH and no PYTHONPATH of ours: `dcfm_ros`, `dcfm_ros.msg` and `dcfm_ros.node` import
from the install space, and the installed `lib/dcfm_ros/dcfm_node` runs there (real rclpy over Fast
DDS) and answers a camera frame with its labels. One build for the module, about a minute on a busy
2-core machine.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NODE_ENV, ROS_ENV, START_TIMEOUT_S, Harness

from dcfm_ros.data.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
BUILD_TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("colcon_core") is None or importlib.util.find_spec("colcon_ros") is None
    or shutil.which("cmake") is None or not (VENV / "share" / "rosidl_default_generators").is_dir(),
    reason="needs colcon-core, colcon-ros (requirements/dev.txt), cmake and the rosidl generators in "
           "the venv (make setup)",
)


def _copy_sources(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if rel.startswith(("demo/", "docs/")):
            continue
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _sourced_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment before `source install/setup.bash`: no PYTHONPATH of ours, venv bin off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(sys.executable).parent.resolve())
    env.update(extra or {})
    return env


def _in_install(ws: Path, command: str) -> list[str]:
    return ["bash", "-c", f"source {shlex.quote(str(ws / 'install' / 'setup.bash'))} && {command}"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / "dcfm_ros"
    src.mkdir(parents=True)
    _copy_sources(src)
    # As README route 2: colcon from the venv, the venv's Python recorded in the build. The
    # pip-wheel ROS is found through CMAKE_PREFIX_PATH / AMENT_PREFIX_PATH (an apt ROS install
    # sets them by `source /opt/ros/<distro>/setup.bash`).
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [sys.executable, "-m", "colcon", "build", "--packages-select", "dcfm_ros",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (ws / "log").rglob("stderr.log"))
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}"
    assert "1 package finished" in proc.stdout, proc.stdout
    return ws


def test_colcon_install_space_has_messages_package_executable_and_data(workspace: Path) -> None:
    prefix = workspace / "install" / "dcfm_ros"
    exe = prefix / "lib" / "dcfm_ros" / "dcfm_node"
    assert os.access(exe, os.X_OK)
    # The Python the build was configured with, not `env python3` (whatever is first on PATH).
    assert exe.read_text().splitlines()[0] == f"#!{sys.executable}"
    for rel in ("launch/dcfm.launch.py", "config/dcfm.yaml", "config/dcfm.rviz", "config/dcfm_multi.rviz",
                "msg/SegmentationInfo.msg", "package.xml", "local_setup.bash"):
        assert (prefix / "share" / "dcfm_ros" / rel).is_file(), rel
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages"
    assert (site / "dcfm_ros" / "models" / "camvid_efficientnet_lite0.safetensors").is_file()

    code = ("import dcfm_ros, dcfm_ros.msg, dcfm_ros.node.main, dcfm_ros.model; "
            "from dcfm_ros.msg import SegmentationInfo; "
            "print(dcfm_ros.__file__); print(dcfm_ros.msg.__file__); print(dcfm_ros.node.main.__file__); "
            "print(SegmentationInfo().frames_dropped)")
    proc = subprocess.run(_in_install(workspace, f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"),
                          env=_sourced_env(), cwd=workspace, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    init_file, msg_file, node_file, dropped = proc.stdout.split()
    # Both halves come from the install space: the hand-written package and the generated messages.
    for f in (init_file, msg_file, node_file):
        assert f.startswith(str(site)), f
    assert dropped == "0"


@pytest.fixture
def installed_node(workspace: Path, tiny_checkpoint: Path, tmp_path: Path) -> Iterator[subprocess.Popen]:
    exe = workspace / "install" / "dcfm_ros" / "lib" / "dcfm_ros" / "dcfm_node"
    params = workspace / "install" / "dcfm_ros" / "share" / "dcfm_ros" / "config" / "dcfm.yaml"
    args = [str(exe), "--ros-args", "--params-file", str(params), "-p", f"model:={tiny_checkpoint}",
            "-p", "device:=cpu", "-p", "drop_policy:=none", "-p", "qos.reliability:=reliable",
            "-r", "__ns:=/colcon"]
    log = open(tmp_path / "node.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(_in_install(workspace, "exec " + shlex.join(args)), cwd=tmp_path, stdout=log,
                            stderr=subprocess.STDOUT, env=_sourced_env({**ROS_ENV, **NODE_ENV}))
    try:
        yield proc
    finally:
        stop_process(proc, signal.SIGINT, 30.0)
        log.close()
        if proc.returncode not in (0, None):
            print((tmp_path / "node.log").read_text(errors="replace")[-3000:])


def test_installed_node_runs_from_the_install_space(installed_node: subprocess.Popen,
                                                    ros_context: Any) -> None:
    from sensor_msgs.msg import Image

    h = Harness(ros_context, "colcon_tester")
    try:
        labels = h.subscribe("/colcon/segmentation/labels", Image)
        pub = h.publisher("/colcon/image", Image)
        h.wait_discovery((pub,))
        assert installed_node.poll() is None, "the installed dcfm_node exited"
        rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        msg = Image(height=48, width=64, encoding="rgb8", step=64 * 3)
        msg.data = rgb.tobytes()
        msg.header.frame_id = "camera"
        pub.publish(msg)
        h.spin_until(lambda: bool(labels), START_TIMEOUT_S, "labels from the installed node")
        assert (labels[0].height, labels[0].width, labels[0].encoding) == (48, 64, "mono8")
        assert labels[0].header.frame_id == "camera"
    finally:
        h.close()
