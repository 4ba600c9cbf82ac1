"""The deep pass in pieces (DCFM.deep_units): every backbone's pieces compose to exactly enc_hi, the
pieces add nothing to the state dict, and the model package's imports point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from dcfm_ros.engine import TorchBackend
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, run_deep_units

MODEL_DIR = Path(__file__).resolve().parents[1] / "dcfm_ros" / "model"
BACKBONES = ["mit-b0", "mit-b1", "resnet18", "resnet50", "efficientnet-lite0"]


def _model(backbone: str):
    torch.manual_seed(0)
    cfg = DCFMConfig(backbone=backbone, num_classes=11, class_names=CAMVID_CLASSES, palette=CAMVID_PALETTE,
                     input_size=(64, 96))
    return build_model(cfg).eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pieces_compose_to_exactly_enc_hi(backbone: str) -> None:
    model = _model(backbone)
    x = torch.randn(1, 3, 64, 96)
    units = model.deep_units()
    assert len(units) > 3, "a backbone should be cut at least at its blocks"
    with torch.inference_mode():
        f_in = model.enc_lo(x)
        ref = model.enc_hi(f_in)
        out = run_deep_units(units, (f_in,))
        # Any split point: the first k pieces then the rest.
        k = len(units) // 2
        split = run_deep_units(units[k:], run_deep_units(units[:k], (f_in,)))
    assert len(out) == 1 and torch.equal(out[0], ref)
    assert torch.equal(split[0], ref)
    # Every parameter of enc_hi is used by some piece (none skipped).
    used = {id(p) for u in units for p in u.parameters()}
    assert all(id(p) in used for p in model.enc_hi.parameters())


def test_pieces_leave_the_state_dict_alone() -> None:
    model = _model("mit-b0")
    before = list(model.state_dict())
    model.deep_units()
    assert list(model.state_dict()) == before


def test_torch_backend_runs_pieces_in_ranges() -> None:
    model = _model("efficientnet-lite0")
    net = TorchBackend(model, "cpu")
    with torch.inference_mode():
        f_in = net.enc_lo(torch.randn(1, 3, 64, 96))
        n = net.num_deep_units
        state = (f_in,)
        for start in range(0, n, 3):
            state = net.run_deep_units(start, min(start + 3, n), state)
        assert torch.equal(state[0], net.enc_hi(f_in))
    assert len(net.deep_unit_costs()) == n and min(net.deep_unit_costs()) > 0
    with pytest.raises(ValueError, match="outside"):
        net.run_deep_units(0, n + 1, (f_in,))


def _model_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dcfm_ros.model."):
            names.add(node.module.rsplit(".", 1)[1])
    return names


def test_model_package_has_no_import_circle() -> None:
    graph = {p.stem: _model_imports(p) for p in MODEL_DIR.glob("*.py") if p.stem != "__init__"}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import circle in dcfm_ros.model: {' -> '.join([*path, name])}"
        state[name] = 1
        for dep in graph.get(name, ()):
            visit(dep, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])
    # The shared pieces sit below every backbone and the network.
    assert "layers" in graph["dcfm"] and all("dcfm" not in graph[b] and "backbone" not in graph[b]
                                              for b in ("mit", "resnet", "efficientnet"))
