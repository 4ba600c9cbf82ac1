"""Device and precision selection, mixed-precision context and per-stage timing.

Reduced precision uses `torch.autocast` (weights stay float32), not `model.half()`:
- autocast keeps the numerically fragile ops in float32 (softmax and LayerNorm inside MiT,
  BatchNorm statistics, the float32 L2 Norm the model already forces), while convolutions and
  matmuls run in fp16/bf16 on the tensor cores;
- the model object is not modified, so the same instance can be switched between precisions and
  checkpoints keep loading/saving float32 tensors;
- the cost (weight casts inside each autocast region) is small next to the encoder.
"""

from __future__ import annotations

import contextlib
import re
import time

import torch

from dcfm_ros.engine.specs import PRECISIONS  # one list of names

# torch's autocast dtypes; "auto" is resolved by the backend factory (backends.pick_precision)
_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> "cuda" if available else "cpu"; "cuda"/"cuda:N" without a usable GPU -> RuntimeError."""
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was requested but CUDA is not available (torch "
                           f"{torch.__version__}, CUDA build: {torch.version.cuda}); use device 'cpu' or "
                           f"'auto'")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise RuntimeError(f"device {device!r} was requested but only {count} CUDA device(s) exist")
    return torch.device("cuda", index)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain float32.

    fp16/bf16 are refused on CPU: CPU autocast is slower than float32 on most CPUs and changes
    results, so asking for it is treated as a configuration error rather than silently ignored.
    """
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    dtype = _DTYPES[precision]
    if dtype is None:
        return None
    if device.type != "cuda":
        raise ValueError(f"precision {precision!r} needs a CUDA device, got device '{device}'; use 'fp32' "
                         f"on CPU")
    if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"precision 'bf16' is not supported by {torch.cuda.get_device_name(device)}; use "
                         f"'fp16' or 'fp32'")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed-precision region for the network stages (a no-op for float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class StageTimer:
    """Wall time per stage without adding GPU synchronisations.

    CPU: `time.perf_counter` at each stage boundary. CUDA: a recorded `torch.cuda.Event` at each
    boundary (asynchronous); the elapsed times are read in `read()`, which the caller invokes only
    after it has read the result back to the host (so the events have already completed).
    Repeated stage names accumulate.
    """

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._device = device
        self._marks: list[tuple[str | None, object]] = []

    def _now(self) -> object:
        if self._cuda:
            event = torch.cuda.Event(enable_timing=True)
            # The stream of the engine's device, which need not be the current device.
            event.record(torch.cuda.current_stream(self._device))
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [(None, self._now())]

    def mark(self, stage: str) -> None:
        self._marks.append((stage, self._now()))

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if len(self._marks) < 2:
            return out
        if self._cuda:
            # The result is already on the host, so this waits for nothing that has not finished.
            self._marks[-1][1].synchronize()  # type: ignore[union-attr]
        for (_, t0), (stage, t1) in zip(self._marks, self._marks[1:], strict=False):
            ms = float(t0.elapsed_time(t1)) if self._cuda else (t1 - t0) * 1000.0  # type: ignore
            out[stage] = out.get(stage, 0.0) + ms  # type: ignore[index]
        return out
