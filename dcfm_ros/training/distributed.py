"""`dcfm-train` under torchrun: PyTorch DistributedDataParallel, one process (rank) per device.

    torchrun --nproc_per_node N -m dcfm_ros.tools.train --config X.yaml  # N GPUs (NCCL) / CPU procs (gloo)

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them nothing here is used and `dcfm-train`
runs as it always did on one device (no process group, plain BatchNorm). Under torchrun:
- GPUs: backend NCCL, rank r uses cuda:LOCAL_RANK; CPU: backend gloo.
- Each rank draws its own shard of every epoch (DistributedSampler); `train.batch_scope: global`
  makes `train.batch_size` the global batch (per-rank = batch_size / N), so a recipe keeps its global
  batch whatever N; `rank` (default) makes it the per-rank batch (global = batch_size x N).
- Loss terms are means over the GLOBAL batch (`global_mean`), so one step under N ranks is the step
  one process takes on the union of the ranks' samples (test_distributed.py checks it).
- `model.sync_bn: true` converts BatchNorm to SyncBatchNorm (CUDA only: PyTorch's SyncBatchNorm
  refuses CPU tensors); one device keeps plain BatchNorm whatever the flag says.
- Logs, the progress bar, evaluation and checkpoints happen on rank 0 only.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(ValueError):
    """The distributed set-up is wrong (device naming, SyncBatchNorm on CPU, batch split)."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: no process group (plain single-device run)

    @property
    def active(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class AtomicErrorHandler(ErrorHandler):
    """A rank's torchrun error file, written whole or not at all.

    torch's handler opens the file (emptying it) and then writes it. When one rank dies, torchrun
    SIGTERMs the others; a rank caught between the two (reporting its broken connection to the dead
    one) leaves an empty file, and torchrun's failure summary then dies parsing it (JSONDecodeError)
    instead of naming the rank and its signal (seen in a CI run). Here the JSON, in torch's own
    layout, goes to a temporary file that replaces the error file in one step.
    """

    def record_exception(self, e: BaseException) -> None:
        path = self._get_error_file_path()
        if not path:
            super().record_exception(e)  # no file to write: torch logs what it would have written
            return
        data = {"message": {"message": f"{type(e).__name__}: {e}",
                            "extraInfo": {"py_callstack": traceback.format_exc(),
                                          "timestamp": str(int(time.time()))}}}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fp:
            json.dump(data, fp)
        os.replace(tmp, path)


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return all(k in env for k in _TORCHRUN_VARS)


def device_for_rank(name: str, local_rank: int) -> torch.device:
    """The device of one rank: cuda:LOCAL_RANK for `auto` (with CUDA) and `cuda`, else the CPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise DistributedError(f"device {name!r} requested but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): "
                                   "start at most one process per GPU (torchrun --nproc_per_node)")
        return torch.device("cuda", local_rank)
    raise DistributedError(f"under torchrun the device must be auto, cuda or cpu (each rank takes GPU "
                           f"LOCAL_RANK), got {name!r}")


def init(device_name: str, timeout_min: float = 30.0) -> tuple[DistContext, torch.device | None]:
    """Join the process group when launched by torchrun; (DistContext(), None) otherwise.

    Returns the context and, under torchrun, this rank's device. The timeout bounds how long a rank
    waits in a collective for the others (rank 0's periodic evaluation must fit in it).
    """
    if not launched_by_torchrun():
        return DistContext(), None
    rank, world, local = (int(os.environ[k]) for k in _TORCHRUN_VARS)
    device = device_for_rank(device_name, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min),
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DistContext(rank, world, local, backend), device


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, scope: str, world_size: int) -> int:
    """train.batch_size read as `rank` (per process) or `global` (split over the ranks)."""
    if scope == "rank":
        return batch_size
    if batch_size % world_size:
        raise DistributedError(f"train.batch_size {batch_size} (batch_scope: global) does not split over "
                               f"{world_size} ranks; use a multiple of {world_size}")
    return batch_size // world_size


def apply_sync_bn(model: nn.Module, sync_bn: bool, ctx: DistContext, device: torch.device) -> nn.Module:
    """BatchNorm -> SyncBatchNorm when asked AND under DDP with more than one rank; else unchanged.

    The state dict keys do not change (SyncBatchNorm holds the same weight/bias/running stats), so a
    checkpoint from a SyncBatchNorm run loads into the plain-BatchNorm model the node builds.
    """
    if not sync_bn or not ctx.active or ctx.world_size < 2:
        return model
    if device.type != "cuda":
        raise DistributedError("model.sync_bn needs CUDA: PyTorch's SyncBatchNorm runs on GPUs only; "
                               "on CPU (gloo) set model.sync_bn: false (or model.freeze_bn: true)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def global_mean(total: Tensor, count: Tensor) -> Tensor:
    """This rank's share of the global-batch mean: total_r * N / count_all.

    DDP averages gradients over the N ranks, so the step follows d(sum_r total_r / count_all), the
    mean one process would take over the union of the batches. count carries no gradient.
    """
    world = dist.get_world_size()
    count_all = count.detach().to(torch.float32).reshape(1).clone()
    dist.all_reduce(count_all)
    # No host sync: with nothing counted anywhere, total is 0 on every rank and so is the result.
    return total * world / count_all[0].clamp_min(torch.finfo(torch.float32).tiny).to(total.dtype)


def average_floats(values: dict[str, float], ctx: DistContext, device: torch.device) -> dict[str, float]:
    """Mean of logged numbers over the ranks (each rank's loss is its share of the global mean)."""
    if not ctx.active or ctx.world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def broadcast_error(message: str | None, ctx: DistContext) -> str | None:
    """Rank 0's start-up check result (None = fine) on every rank, so all ranks stop with one message."""
    if not ctx.active:
        return message
    box: list[Any] = [message]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
