"""Shared fixtures for the ROS tests: an isolated DDS domain, a tiny checkpoint, the node as a subprocess
and a test-side rclpy node that waits on discovery (never on a fixed sleep).

Isolation: one ROS_DOMAIN_ID per pytest run (from the pid), discovery limited to localhost, and Fast
DDS on UDPv4 only (no shared-memory segments left in /dev/shm when a node is killed).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dcfm_ros.data.processes import stop_process

REPO = Path(__file__).resolve().parents[1]
PARAMS_FILE = REPO / "config" / "dcfm.yaml"
NODE_EXE = Path(sys.executable).parent / "dcfm_node"
DOMAIN_ID = 1 + os.getpid() % 101
ROS_ENV = {
    "ROS_DOMAIN_ID": str(DOMAIN_ID),
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "FASTDDS_BUILTIN_TRANSPORTS": "UDPv4",
    "PYTHONUNBUFFERED": "1",
    "RCUTILS_COLORIZED_OUTPUT": "0",
}
# Node subprocesses run torch on one thread: on a small shared machine, OpenMP threads of several
# processes competing for the same cores stall each other (seconds per frame instead of milliseconds).
# Tests that compare with an in-process engine use one thread there too (same kernels, same results).
NODE_ENV = {"OMP_NUM_THREADS": "1"}
# The node subprocess loads torch (several seconds on a busy 2-core machine).
START_TIMEOUT_S = 90.0

# The graph backends (onnxruntime, tensorrt; the node's default `auto` is one of them) export models
# into a cache folder: the tests, node subprocesses included, use a fresh one, never ~/.cache.
_BACKEND_CACHE = tempfile.mkdtemp(prefix="dcfm-test-cache-")
os.environ["XDG_CACHE_HOME"] = _BACKEND_CACHE
atexit.register(shutil.rmtree, _BACKEND_CACHE, ignore_errors=True)

TINY_CLASSES = ("Road", "Car", "Sky", "traffic light", "Person")
TINY_PALETTE = ((128, 64, 128), (64, 0, 128), (128, 128, 128), (250, 170, 30), (220, 20, 60))
TINY_INPUT_SIZE = (64, 96)


def ros_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_ENV)
    env.update(extra or {})
    return env


@pytest.fixture(scope="session")
def ros_context() -> Iterator[Any]:
    """An rclpy Context of its own for the test process, in the run's private domain."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ROS_ENV.items():
            mp.setenv(key, value)
        import rclpy
        from rclpy.context import Context

        ctx = Context()
        rclpy.init(context=ctx, domain_id=DOMAIN_ID)
        try:
            yield ctx
        finally:
            rclpy.try_shutdown(context=ctx)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """torch on one thread in this process for a module (restored after), like the node subprocesses."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random EfficientNet-Lite0 DCFM with 5 classes at 64x96 (one with a space in its name)."""
    import torch

    from dcfm_ros.model import DCFMConfig, build_model, save_checkpoint

    torch.manual_seed(0)
    config = DCFMConfig(backbone="efficientnet-lite0", num_classes=len(TINY_CLASSES),
                        class_names=TINY_CLASSES, palette=TINY_PALETTE, input_size=TINY_INPUT_SIZE)
    model = build_model(config, pretrained=None)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, model)
    return path


def _param_arg(name: str, value: Any) -> str:
    # -p values are parsed as YAML; JSON is valid YAML and quotes strings unambiguously.
    return f"{name}:={json.dumps(value)}"


_LIVE: set[subprocess.Popen] = set()


@atexit.register
def _kill_leftovers() -> None:
    # A test run that dies half-way must not leave nodes running in the background.
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


class NodeProcess:
    """`dcfm_node --ros-args --params-file config/dcfm.yaml -p ...` as a subprocess, output in a file."""

    def __init__(self, params: Mapping[str, Any], log_dir: Path, name: str = "node",
                 params_file: Path | None = PARAMS_FILE, env: Mapping[str, str] | None = None,
                 ros_args: tuple[str, ...] = ()) -> None:
        self.cmd = [str(NODE_EXE), "--ros-args"]
        if params_file is not None:
            self.cmd += ["--params-file", str(params_file)]
        for key, value in params.items():
            self.cmd += ["-p", _param_arg(key, value)]
        self.cmd += list(ros_args)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/stop()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=ros_env({**NODE_ENV, **(env or {})}),
                                     cwd=REPO)
        _LIVE.add(self.proc)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"dcfm_node exited with {self.proc.returncode}:\n{self.output()}")

    def wait(self, timeout: float = START_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()
                _LIVE.discard(self.proc)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Send `sig`, wait; kill (and fail the caller's check via the return code) if it hangs."""
        stop_process(self.proc, sig, timeout)
        self._log.close()
        _LIVE.discard(self.proc)
        return self.proc.returncode


class Harness:
    """A test-side rclpy node: publishers, collecting subscriptions, service calls, spin-until."""

    def __init__(self, ctx: Any, name: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.node = rclpy.create_node(name, context=ctx)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)
        self.received: dict[str, list[Any]] = {}
        self.subs: dict[str, Any] = {}
        self.watch: NodeProcess | None = None  # fail fast when the node under test dies

    def subscribe(self, topic: str, msg_type: type, qos: Any = None) -> list[Any]:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = qos or QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        box = self.received.setdefault(topic, [])
        self.subs[topic] = self.node.create_subscription(msg_type, topic, box.append, qos)
        return box

    def unsubscribe(self, topic: str) -> None:
        self.node.destroy_subscription(self.subs.pop(topic))

    def publisher(self, topic: str, msg_type: type, depth: int = 200) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        return self.node.create_publisher(msg_type, topic,
                                          QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE))

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.watch is not None:
                self.watch.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.executor.spin_once(timeout_sec=0.05)

    def wait_discovery(self, publishers: tuple[Any, ...] = (), timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every subscription has a publisher and every publisher a subscriber."""
        subs = list(self.subs.items())

        def ready() -> bool:
            return (all(s.get_publisher_count() > 0 for _, s in subs)
                    and all(p.get_subscription_count() > 0 for p in publishers))

        missing = lambda: [t for t, s in subs if s.get_publisher_count() == 0] + [  # noqa: E731
            p.topic_name for p in publishers if p.get_subscription_count() == 0]
        try:
            self.spin_until(ready, timeout, "discovery")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; not matched: {missing()}") from exc

    def call(self, srv_type: type, name: str, request: Any, timeout: float = 30.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            self.spin_until(client.service_is_ready, timeout, f"service {name}")
            future = client.call_async(request)
            self.spin_until(future.done, timeout, f"reply of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
