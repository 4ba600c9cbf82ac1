"""The package's import rules, read from the source (every import statement, also those inside
functions): no import circle, no import against the layer order, rclpy and ROS messages only where
ROS I/O is the job. docs/ARCHITECTURE.md draws the same picture."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcfm_ros"

# layer -> the layers it may import (itself included). `msg` is the generated interface module.
ALLOWED: dict[str, set[str]] = {
    "model": {"model"},
    "engine": {"model", "engine"},
    "data": {"model", "data"},
    "dds": {"dds"},  # Fast DDS profiles: files and their paths, for the ROS layers
    "node": {"model", "engine", "node", "msg", "dds"},
    "training": {"model", "engine", "data", "training"},
    "evaluation": {"model", "engine", "data", "evaluation", "msg", "dds"},
    "tools": {"model", "engine", "data", "node", "training", "evaluation", "tools", "msg", "dds"},
}
ROS_LAYERS = {"node", "evaluation", "tools"}  # may import rclpy and ROS message packages


def is_ros(name: str) -> bool:
    top = name.split(".")[0]
    return top in ("rclpy", "rcl_interfaces", "builtin_interfaces") or top.endswith("_msgs") \
        or name.startswith("dcfm_ros.msg")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file; relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                yield f"{base}.{alias.name}", node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported dcfm_ros module or external name: line}."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        edges: dict[str, int] = {}
        for name, line in imports_of(path, mod):
            if name.startswith(f"{root.name}.") and not name.startswith(f"{root.name}.msg"):
                # `from pkg import name` names a module only if such a file exists
                if name in files:
                    edges.setdefault(name, line)
            elif is_ros(name):
                edges.setdefault(name, line)
        graph[mod] = edges
    return graph


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def layer_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for mod, edges in sorted(graph.items()):
        src = layer_of(mod)
        if src is None:
            continue
        if src not in ALLOWED:
            bad.append(f"{mod}: layer {src!r} is not in the layer table (add it to ALLOWED)")
            continue
        for target, line in sorted(edges.items()):
            if is_ros(target):
                if src not in ROS_LAYERS:
                    bad.append(f"{mod}:{line} imports {target}: only {sorted(ROS_LAYERS)} may use ROS")
                continue
            dst = layer_of(target)
            if dst is not None and dst not in ALLOWED[src]:
                bad.append(f"{mod}:{line} imports {target}: {src} may import only {sorted(ALLOWED[src])}")
    return bad


def import_circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_against_the_layers() -> None:
    bad = layer_violations(import_graph(PACKAGE))
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_circle() -> None:
    circles = import_circles(import_graph(PACKAGE))
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "dcfm_ros" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [p for p in (root / "dcfm_ros").rglob("*") if p.is_dir()] + [root / "dcfm_ros"]:
        (d / "__init__.py").touch()
    return root / "dcfm_ros"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The rules fire on the kinds of import this redesign removed: a library module importing a CLI
    (inside a function), training and evaluation importing each other, rclpy below the node, and a
    circle through a package-relative import."""
    root = _write(tmp_path, {
        "engine/backends/export.py": "def main():\n    from dcfm_ros.tools.bench import parse_size\n",
        "tools/bench.py": "from dcfm_ros.engine.backends import export\n",
        "training/train.py": "from dcfm_ros.evaluation.metrics import ConfusionMatrix\n",
        "evaluation/metrics.py": "from ..training import train\n",
        "engine/stream.py": "import rclpy\n",
        "data/io.py": "import cv2\nfrom sensor_msgs.msg import Image\n",
    })
    graph = import_graph(root)
    bad = "\n".join(layer_violations(graph))
    assert "dcfm_ros.engine.backends.export:2 imports dcfm_ros.tools.bench" in bad
    assert "dcfm_ros.training.train:1 imports dcfm_ros.evaluation.metrics" in bad
    assert "dcfm_ros.evaluation.metrics:1 imports dcfm_ros.training.train" in bad
    assert "dcfm_ros.engine.stream:1 imports rclpy" in bad
    assert "dcfm_ros.data.io:2 imports sensor_msgs.msg" in bad
    assert "cv2" not in bad
    circles = import_circles(graph)
    assert ["dcfm_ros.evaluation.metrics", "dcfm_ros.training.train"] in circles
    assert ["dcfm_ros.engine.backends.export", "dcfm_ros.tools.bench"] in circles


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_every_layer_exists(layer: str) -> None:
    assert (PACKAGE / layer / "__init__.py").is_file(), f"layer {layer} has no package"
