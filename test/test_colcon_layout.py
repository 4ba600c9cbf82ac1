"""The colcon route: CMakeLists.txt builds the interfaces AND installs the Python package beside them.

colcon itself is not installable here, so this runs the same CMake steps colcon's ament_cmake build
runs (configure, build, install into a prefix) against the pip-wheel ROS in the venv, from a copy
of the source tree, and checks what a ROS user gets: `dcfm_ros.msg` and `dcfm_ros.node` importable
together from the install prefix, the `ros2 run` executable, launch and config files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None or not (VENV / "share" / "rosidl_default_generators").is_dir(),
    reason="needs cmake and the rosidl generators in the venv (make setup)",
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


def test_cmake_install_gives_messages_python_package_and_executable(tmp_path: Path) -> None:
    src, build, prefix = tmp_path / "src" / "dcfm_ros", tmp_path / "build", tmp_path / "install"
    src.mkdir(parents=True)
    _copy_sources(src)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV))
    steps = [
        ["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_PREFIX_PATH={VENV}",
         f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DPython3_EXECUTABLE={sys.executable}",
         "-DBUILD_TESTING=OFF"],
        ["cmake", "--build", str(build), "-j2"],
        ["cmake", "--install", str(build)],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        log = f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        assert proc.returncode == 0, f"{' '.join(cmd[:2])} failed:\n{log}"

    exe = prefix / "lib" / "dcfm_ros" / "dcfm_node"
    assert os.access(exe, os.X_OK)
    # The Python the build was configured with, not `env python3` (whatever is first on PATH).
    assert exe.read_text().splitlines()[0] == f"#!{sys.executable}"
    for rel in ("launch/dcfm.launch.py", "config/dcfm.yaml", "config/dcfm.rviz", "config/dcfm_multi.rviz",
                "msg/SegmentationInfo.msg"):
        assert (prefix / "share" / "dcfm_ros" / rel).is_file(), rel
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages"
    assert (site / "dcfm_ros" / "models" / "camvid_efficientnet_lite0.safetensors").is_file()

    code = (
        "import dcfm_ros, dcfm_ros.msg, dcfm_ros.node.main, dcfm_ros.model; "
        "from dcfm_ros.msg import SegmentationInfo, SegmentationClasses; "
        "print(dcfm_ros.__file__); print(dcfm_ros.msg.__file__); print(dcfm_ros.node.main.__file__); "
        "print(SegmentationInfo().frames_dropped)"
    )
    run_env = dict(os.environ, PYTHONPATH=str(site),
                   LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    proc = subprocess.run([sys.executable, "-c", code], env=run_env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    init_file, msg_file, node_file, dropped = proc.stdout.split()
    # Both halves come from the install prefix: the hand-written package and the generated messages.
    assert init_file.startswith(str(site)) and node_file.startswith(str(site))
    assert msg_file.startswith(str(site))
    assert dropped == "0"

    # The installed executable runs as it is (its shebang), with the venv's bin off PATH: a bad
    # parameter is refused by the node's own code, so rclpy and dcfm_ros were found by that Python.
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if Path(p).resolve() != Path(sys.executable).parent.resolve())
    proc = subprocess.run([str(exe), "--ros-args", "-p", "drop_policy:=sometimes"],
                          env={**run_env, "PATH": path, "ROS_DOMAIN_ID": "0",
                               "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "cannot start" in out and "drop_policy" in out, out
