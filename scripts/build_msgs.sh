#!/usr/bin/env bash
# Generate the interfaces in msg/ with rosidl into a pip-installed ROS 2 venv (the pip route).
# On a ROS 2 machine colcon does this from CMakeLists.txt and this script is not used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "${1:-$root/.venv}" && pwd)
py="$venv/bin/python"
pyinc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
npinc=$("$py" -c "import numpy; print(numpy.get_include())")
site=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

# The message wheels' exported CMake files hard-code the wheel build machine's Python and NumPy
# include directories; point them at this venv's (again after any reinstall of a message wheel).
for f in "$venv"/share/*/cmake/*__rosidl_generator_pyExport.cmake; do
  sed -i -E -e "s#/opt/python/[^;\"]*/numpy/_core/include#${npinc}#g" \
            -e "s#/opt/python/[^;\"]*/include/python3\.[0-9]+#${pyinc}#g" "$f"
done

build="$root/build/msgs"
mkdir -p "$build"
export AMENT_PREFIX_PATH="$venv"
cmake -S "$root" -B "$build" -DCMAKE_PREFIX_PATH="$venv" -DCMAKE_INSTALL_PREFIX="$venv" \
  -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF -DDCFM_ROS_INSTALL_PYTHON=OFF >"$build.log" 2>&1 \
  || { cat "$build.log"; exit 1; }
cmake --build "$build" -j2 >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }
cmake --install "$build" >>"$build.log" 2>&1 || { tail -50 "$build.log"; exit 1; }

# rosidl installs an empty dcfm_ros/__init__.py beside the generated dcfm_ros/msg. Without it that
# directory is a namespace portion that the source package's __init__ (pkgutil.extend_path) joins.
rm -f "$site/dcfm_ros/__init__.py"
# rosidl also registers the generated module as a distribution named dcfm_ros; pip would take it for
# the project itself (and uninstall the generated code on the next `pip install -e .`).
rm -rf "$site"/dcfm_ros-*.egg-info
echo "dcfm_ros interfaces installed into $venv"
