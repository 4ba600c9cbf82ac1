"""Local weight files -> state dicts -> modules, with errors that say what did not match.

Every backbone loader (ResNet, EfficientNet-Lite0, MiT) goes through here so that the rules are the
same everywhere: weights come only from a local file (nothing is ever downloaded), a file is never
unpickled beyond plain tensors (`torch.load(weights_only=True)` or safetensors), and a file that does
not fit the module fails loudly, naming the file and the keys, instead of silently leaving layers at
their random initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

_MAX_LISTED = 10

# Wrappers some training scripts put around a state dict ({"state_dict": {...}}, {"model": {...}}).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightLoadError(ValueError):
    """A weight file is missing, unreadable, or does not fit the module it is loaded into."""


@dataclass
class LoadReport:
    """What `load_into` did, for logs and tests."""

    source: str
    loaded: list[str] = field(default_factory=list)  # module keys filled from the file
    ignored: list[str] = field(default_factory=list)  # file keys dropped on purpose (ignore_prefixes)
    left_initialised: list[str] = field(default_factory=list)  # module keys allowed to stay as built


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{shown}{more}"


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a local weight file into a flat `{name: tensor}` dict on the CPU.

    `.safetensors` is read with safetensors; anything else (`.pth`, `.pt`, `.bin`, `.ckpt`) with
    `torch.load(weights_only=True)`, which refuses arbitrary pickled objects. A single wrapper level
    such as `{"state_dict": {...}}` and a uniform `module.` prefix (DataParallel) are removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightLoadError(f"weight file not found: {path} (weights are never downloaded; "
                              "pass the path of a local file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # the readers raise many unrelated types for a bad file
        raise WeightLoadError(f"cannot read weight file {path}: {type(exc).__name__}: {exc}") from exc

    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"weight file {path} does not hold a state dict (found {type(obj).__name__})")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise WeightLoadError(f"weight file {path} holds entries that are not tensors: "
                              f"{_listing(not_tensors)}")
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str,
    *,
    rename: Callable[[str], str | None] | None = None,
    ignore_prefixes: Iterable[str] = (),
    allow_missing_prefixes: Iterable[str] = (),
    target: str | None = None,
) -> LoadReport:
    """Copy `state_dict` into `module`, checking that every key and shape matches first.

    rename: maps a file key to a module key (None drops it) before any check.
    ignore_prefixes: file keys (after rename) dropped on purpose, e.g. a classifier the model lacks.
    allow_missing_prefixes: module keys the file need not provide (layers added on top of the
        backbone, left at their initialisation).
    source: the file name, quoted in every error.
    target: what is being loaded (e.g. "the efficientnet-lite0 backbone"), for the error message.
    Nothing is copied unless everything matches, so a failed load leaves `module` unchanged.
    """
    ignore = tuple(ignore_prefixes)
    allow_missing = tuple(allow_missing_prefixes)
    report = LoadReport(source=source)

    incoming: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key) if rename is not None else key
        if new_key is None or (ignore and new_key.startswith(ignore)):
            report.ignored.append(key)
            continue
        incoming[new_key] = value

    expected = module.state_dict()
    missing = [k for k in expected
               if k not in incoming and not (allow_missing and k.startswith(allow_missing))]
    unexpected = [k for k in incoming if k not in expected]
    mismatched = [
        f"{k} (file {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in incoming.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        what = target or type(module).__name__
        raise WeightLoadError(f"weights in {source} do not fit {what}: " + "; ".join(problems))

    with torch.no_grad():
        for key, dest in expected.items():
            if key in incoming:
                # state_dict() tensors share storage with the module, so copy_ writes through; it
                # also casts (e.g. a float16 file into float32 parameters).
                dest.copy_(incoming[key].to(device=dest.device, dtype=dest.dtype))
                report.loaded.append(key)
            else:
                report.left_initialised.append(key)
    return report
