"""The parameters dcfm_node runs with: node defaults < --params file < --param < what the run needs,
written to DIR/node_params.yaml; and the checkpoint those parameters name."""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dcfm_ros.evaluation.bag_eval.errors import BagEvalError


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"keyframe": {"interval": 2}} -> {"keyframe.interval": 2} (ROS parameter names)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def _applies_to_node(key: str, node_name: str) -> bool:
    last = str(key).rstrip("/").split("/")[-1]
    return last in ("**", "*", node_name)


def read_params_file(path: Path, node_name: str = "dcfm_node") -> dict[str, Any]:
    """The flat parameters a ROS params file gives `node_name` (wildcard sections and its own)."""
    if not path.is_file():
        raise BagEvalError(f"params file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BagEvalError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise BagEvalError(f"params file {path} must map node names to {{ros__parameters: ...}}")
    out: dict[str, Any] = {}
    used = False
    for key, section in doc.items():
        if not _applies_to_node(key, node_name):
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise BagEvalError(f"params file {path}: section {key!r} has no ros__parameters mapping")
        out.update(flatten(section["ros__parameters"]))
        used = True
    if not used:
        raise BagEvalError(f"params file {path} has no section for {node_name} (expected '/**' or "
                           f"'{node_name}'); sections: {', '.join(map(str, doc))}")
    return out


def parse_param(text: str) -> tuple[str, Any]:
    """"NAME=VALUE" (VALUE parsed as YAML, as `-p name:=value` does)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--param expects NAME=VALUE, got {text!r}")
    try:
        return name.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"--param {name}: value {value!r} is not valid YAML") from exc


def node_defaults() -> dict[str, Any]:
    """The node's declared parameters with their defaults (None = declared without a value)."""
    from dcfm_ros.engine.settings import PARAMETERS

    return {p.name: p.default for p in PARAMETERS}


def effective_params(params_file: Path | None, overrides: Sequence[tuple[str, Any]], *, max_mode: bool,
                     transport: str) -> dict[str, Any]:
    """Node defaults < params file < --param < what this run needs. Unknown names are an error (the
    node would ignore a typo silently)."""
    values = node_defaults()
    known = set(values) | {"use_sim_time"}
    given = dict(read_params_file(params_file)) if params_file is not None else {}
    given.update(dict(overrides))
    unknown = sorted(set(given) - known)
    if unknown:
        raise BagEvalError(f"unknown node parameter(s) {', '.join(unknown)}; the node has: "
                           f"{', '.join(sorted(known))}")
    values.update(given)
    values["use_sim_time"] = True
    values["image_transport"] = transport
    if max_mode:  # back-pressure needs every frame queued and none lost in transport
        values["drop_policy"] = "none"
        values["qos.reliability"] = "reliable"
    return values


def write_params_file(values: Mapping[str, Any], path: Path) -> None:
    # Unset parameters (None) and empty lists are left out: rcl reads `[]` as "not set" anyway.
    flat = {k: v for k, v in values.items() if v is not None and v != []}
    path.write_text("# written by dcfm-bag-eval: the parameters dcfm_node ran with\n"
                    + yaml.safe_dump({"/**": {"ros__parameters": unflatten(flat)}}, sort_keys=True))


def model_info(values: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(report entry, DCFMConfig) of the checkpoint the node will load; BagEvalError if unusable."""
    from dcfm_ros.engine.settings import default_model_path
    from dcfm_ros.model import CheckpointError, read_checkpoint_meta

    model = str(values.get("model") or "").strip()
    path = Path(model) if model else default_model_path()
    if not path.is_file():
        what = "the packaged default model" if not model else "model file"
        raise BagEvalError(f"{what} {path} not found (node parameter 'model'; set it with --model FILE)")
    try:
        meta = read_checkpoint_meta(path)
    except CheckpointError as exc:
        raise BagEvalError(f"cannot use the model: {exc}") from exc
    cfg = meta["config"]
    return ({"path": str(path), "backbone": cfg.backbone, "num_classes": cfg.num_classes,
             "input_size": list(cfg.input_size), "class_names": list(cfg.class_names),
             "extra": meta.get("extra", {})}, cfg)


def run_params(args: argparse.Namespace, transport: str) -> dict[str, Any]:
    """The node's effective parameters for this dcfm-bag-eval run (its --params, --param, --model,
    --max and the input's image transport)."""
    overrides = list(args.param) + ([("model", args.model)] if args.model else [])
    return effective_params(args.params, overrides, max_mode=args.max, transport=transport)


def prepare_output(out_dir: Path, overwrite: bool, values: Mapping[str, Any]) -> Path:
    """Make `out_dir` ready for a run: an old output bag removed (only with `overwrite`), an old report
    deleted so it can never pass for this run's, and the node's parameters written; returns the params
    file's path."""
    out_bag = out_dir / "bag"
    if out_bag.exists():
        if not overwrite:
            raise BagEvalError(f"{out_bag} exists already (use --overwrite or another --out)")
        shutil.rmtree(out_bag)
    (out_dir / "report.json").unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    params_path = out_dir / "node_params.yaml"
    write_params_file(values, params_path)
    return params_path
