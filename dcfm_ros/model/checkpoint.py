"""DCFM checkpoints: one safetensors file = learned tensors + the config that rebuilds the network.

Layout (docs/ARCHITECTURE.md): tensors are `DCFM.state_dict()`; the safetensors metadata holds
    format = "dcfm_ros", format_version = "1", dcfm_config = JSON of DCFMConfig.to_dict(),
    extra = JSON object (training info), dtype = "float32" | "float16" (how floats are stored),
    model_class = "DCFM" | "TFC" | "MRCFA" | "SDCPC" (which network the config builds; absent in older
    files = DCFM), model_options = JSON object of the class's switches (MRCFA's ablations; absent = {}).
safetensors never unpickles, so a checkpoint from anywhere is safe to open. Saving writes a temporary
file next to the target and renames it over the target, so a reader (the node, an evaluation run)
sees either the old file or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcfm_ros.model.build import build_model
from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.dcfm import DCFM
from dcfm_ros.model.mrcfa import build_mrcfa
from dcfm_ros.model.sdcpc import build_sdcpc
from dcfm_ros.model.tfc import build_tfc

FORMAT = "dcfm_ros"
FORMAT_VERSION = "1"
_MAX_LISTED = 10
# model_class -> builder(config, pretrained); the class writes its own name (`model_class` attribute).
# MRCFA / SDCPC builders also take the checkpoint's `model_options` as keyword arguments.
MODEL_CLASSES = {"DCFM": build_model, "TFC": build_tfc, "MRCFA": build_mrcfa, "SDCPC": build_sdcpc}


class CheckpointError(ValueError):
    """A checkpoint file cannot be written, read, or does not describe a usable DCFM model."""


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps in OptimizedModule (._orig_mod), DDP/DataParallel in .module.
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return model


def save_checkpoint(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None,
                    *, half: bool = False) -> None:
    """Write `model` (a DCFM) and its config to `path` atomically (temp file + os.replace).

    extra: JSON-serialisable dict (e.g. iteration, mIoU, dataset), returned by load_checkpoint.
    half: store floating tensors as float16 (half the file size); loading casts them back to float32.
    Raises CheckpointError (nothing is left behind at `path`, an existing file there is untouched).
    """
    path = Path(path)
    model = _unwrap(model)
    config = getattr(model, "config", None)
    if not isinstance(config, DCFMConfig):
        raise CheckpointError(f"cannot save {path}: model has no DCFMConfig (got {type(model).__name__})")
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(f"cannot save {path}: extra must be a dict, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save {path}: extra is not JSON-serialisable: {exc}") from exc
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dcfm_config": json.dumps(config.to_dict()),
        "extra": extra_json,
        "dtype": "float16" if half else "float32",
        "model_class": getattr(model, "model_class", "DCFM"),
    }
    options = getattr(model, "model_options", None)
    if options:
        metadata["model_options"] = json.dumps(options)

    tensors: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        if half and t.is_floating_point():
            t = t.to(torch.float16)
            if not torch.isfinite(t).all():
                raise CheckpointError(f"cannot save {path} in float16: {key} has values outside the "
                                      "float16 range; save with half=False")
        # clone(): safetensors refuses tensors that share storage (views, tied weights).
        tensors[key] = t.contiguous().clone()

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot save {path}: directory {parent} does not exist")
    from safetensors.torch import save_file

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata=metadata)
        # mkstemp creates the file 0600; a checkpoint is an ordinary shareable file (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, Exception):
            raise CheckpointError(f"cannot save {path}: {type(exc).__name__}: {exc}") from exc
        raise


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Read and validate only the metadata (cheap: no tensors are loaded).

    Returns {"config": DCFMConfig, "extra": dict, "format_version": str, "dtype": str, "path": str}.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata()
    except Exception as exc:  # SafetensorError, OSError, ... for a non-safetensors or truncated file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (wrong file type or "
                              f"truncated/corrupt file): {exc}") from exc
    if not metadata or metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a dcfm_ros checkpoint "
                              f"(metadata format={None if not metadata else metadata.get('format')!r})")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported dcfm_ros checkpoint format_version {version!r} "
                              f"(this version reads {FORMAT_VERSION!r})")
    try:
        config = DCFMConfig.from_dict(json.loads(metadata["dcfm_config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {exc}") from exc
    try:
        extra = json.loads(metadata.get("extra", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad 'extra' metadata (not JSON): {exc}") from exc
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: bad 'extra' metadata (not a JSON object)")
    model_class = metadata.get("model_class", "DCFM")
    if model_class not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: unknown model_class {model_class!r}; this version builds "
                              f"{', '.join(MODEL_CLASSES)}")
    try:
        options = json.loads(metadata.get("model_options", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad 'model_options' metadata (not JSON): {exc}") from exc
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: bad 'model_options' metadata (not a JSON object)")
    return {
        "config": config,
        "model_class": model_class,
        "model_options": options,
        "extra": extra,
        "format_version": version,
        "dtype": metadata.get("dtype", "float32"),
        "path": str(path),
    }


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    expected_num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the stored config and load its weights strictly; never unpickles.

    Returns (model in eval mode on `map_location`: DCFM, TFC, MRCFA or SDCPC, as `model_class` says;
    meta as in `read_checkpoint_meta`).
    expected_num_classes: fail if the checkpoint predicts a different number of classes.
    Raises CheckpointError naming the file for every kind of bad file; nothing half-loaded is
    ever returned.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    config: DCFMConfig = meta["config"]
    if expected_num_classes is not None and config.num_classes != expected_num_classes:
        raise CheckpointError(f"{path}: checkpoint has {config.num_classes} classes, expected "
                              f"{expected_num_classes}")
    try:
        model = MODEL_CLASSES[meta["model_class"]](config, None, **meta["model_options"])
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot build backbone {config.backbone!r} from its config: "
                              f"{type(exc).__name__}: {exc}") from exc

    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read tensors (truncated or corrupt file): {exc}") from exc

    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    mismatched = [f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
                  for k, v in tensors.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch: {_listing(mismatched)}")
        raise CheckpointError(f"{path}: weights do not match its config (backbone {config.backbone!r}, "
                              f"{config.num_classes} classes): " + "; ".join(parts))
    cast = {k: tensors[k].to(expected[k].dtype) for k in expected}
    model.load_state_dict(cast, strict=True)
    try:
        model.to(map_location)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot move the model to {map_location!r}: {exc}") from exc
    model.eval()
    return model, meta


@dataclass(frozen=True)
class InitReport:
    """What `init_from_checkpoint` did: tensor names loaded, kept at their fresh init, and unused."""

    path: str
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # in the model, absent from the file or of another shape
    unused: tuple[str, ...]  # in the file, not in the model

    def summary(self) -> str:
        mods = sorted({k.rsplit(".", 1)[0] for k in self.reinitialised})
        unused = (f"; {len(self.unused)} in the file unused ({_listing(list(self.unused))})"
                  if self.unused else "")
        return (f"init_from {self.path}: loaded {len(self.loaded)} tensors; re-initialised "
                f"{len(self.reinitialised)}" + (f" ({_listing(mods)})" if mods else "") + unused)


def init_from_checkpoint(model: DCFM, path: str | Path) -> InitReport:
    """Fine-tuning start: copy every tensor of the checkpoint at `path` whose name and shape match a
    tensor of `model` (cast to the model's dtype); the rest keep the initialisation `model` was built
    with (a new class list changes the head's last layer). Never unpickles.

    Raises CheckpointError for a bad file, a different backbone, or when nothing matches.
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    src: DCFMConfig = meta["config"]
    if src.backbone != model.config.backbone:
        raise CheckpointError(f"init_from {path}: it holds a {src.backbone!r} model, the config builds "
                              f"{model.config.backbone!r}")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"init_from {path}: cannot read tensors (truncated or corrupt file): "
                              f"{exc}") from exc
    own = model.state_dict()
    match = {k: v for k, v in tensors.items() if k in own and v.shape == own[k].shape}
    if not match:
        raise CheckpointError(f"init_from {path}: no tensor matches the model by name and shape")
    with torch.no_grad():
        for k, v in match.items():
            own[k].copy_(v.to(own[k].dtype))
    return InitReport(str(path), tuple(sorted(match)), tuple(sorted(k for k in own if k not in match)),
                      tuple(sorted(k for k in tensors if k not in own)))
