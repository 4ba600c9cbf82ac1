"""Python packaging for the pip route (no ROS install). On a ROS 2 machine colcon uses CMakeLists.txt."""

from setuptools import find_packages, setup

setup(
    name="dcfm_ros",
    version="0.1.0",
    description="DCFM video semantic segmentation for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dcfm_ros", "dcfm_ros.*"]),
    package_data={"dcfm_ros": ["models/*.safetensors", "models/*.json", "models/calibration/*/*",
                              "dds/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/dcfm_ros"]),
        ("share/dcfm_ros", ["package.xml"]),
        ("share/dcfm_ros/launch", ["launch/dcfm.launch.py"]),
        ("share/dcfm_ros/config", ["config/dcfm.yaml", "config/dcfm.rviz", "config/dcfm_multi.rviz"]),
    ],
    # pip install '.[fleet]': Ray for dcfm-fleet-eval --ray (the serial and --workers runs need nothing more)
    extras_require={"fleet": ["ray>=2.40"]},
    entry_points={
        "console_scripts": [
            "dcfm_node = dcfm_ros.node.main:main",
            "dcfm-bench = dcfm_ros.tools.bench:main",
            "dcfm-export = dcfm_ros.tools.export:main",
            "dcfm-bench-node = dcfm_ros.tools.bench_node:main",
            "dcfm-stress = dcfm_ros.tools.stress.cli:main",
            "dcfm-train = dcfm_ros.tools.train:main",
            "dcfm-evaluate = dcfm_ros.tools.evaluate:main",
            "dcfm-compare = dcfm_ros.tools.compare:main",
            "dcfm-bag-eval = dcfm_ros.tools.bag_eval:main",
            "dcfm-make-bag = dcfm_ros.tools.make_bag:main",
            "dcfm-fleet-eval = dcfm_ros.tools.fleet_eval:main",
        ]
    },
)
