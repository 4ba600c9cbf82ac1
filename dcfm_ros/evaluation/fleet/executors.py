"""Where the bags are scored: serial (one engine here), processes (--workers N: one engine per process,
torch threads split between them) or Ray (--ray [ADDRESS]: one actor per worker, each holding an engine,
a bag per call; a GPU per actor where the cluster has GPUs). All three call the same BagScorer.score, and
results come back to the caller's `on_result` as each bag finishes (the caller writes them).

A bag is one unit: the engine's state runs through a drive, so cutting a long bag into slices would give
other keyframes (and numbers) than the node's run over the whole drive.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from dcfm_ros.evaluation.fleet.run_spec import FleetSpec
from dcfm_ros.evaluation.fleet.scoring import BagScorer, error_result

OnResult = Callable[[dict[str, Any]], None]
EXECUTORS = ("serial", "processes", "ray")


class ExecutorError(RuntimeError):
    """The executor itself failed (a worker could not build its engine, Ray is missing or unreachable)."""


def _score_safely(scorer: BagScorer, path: Path) -> dict[str, Any]:
    # Any failure of one bag (unreadable, damaged midway, ground truth outside the class range) names
    # that bag and lets the others go on.
    try:
        return scorer.score(path)
    except Exception as exc:
        return error_result(path, scorer.spec, exc)


def run_serial(bags: Sequence[Path], spec: FleetSpec, on_result: OnResult) -> None:
    scorer = BagScorer(spec)
    try:
        for bag in bags:
            on_result(_score_safely(scorer, bag))
    finally:
        scorer.close()


# -- processes ------------------------------------------------------------------------------------------

_SCORER: BagScorer | None = None


def _init_process(spec: FleetSpec) -> None:
    global _SCORER
    _SCORER = BagScorer(spec)


def _score_in_process(path: str) -> dict[str, Any]:
    assert _SCORER is not None, "worker initializer did not run"
    return _score_safely(_SCORER, Path(path))


def run_processes(bags: Sequence[Path], spec: FleetSpec, workers: int, on_result: OnResult) -> None:
    """`workers` processes (spawned: no forked torch/OpenMP state), each building its engine once."""
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_process,
                                 initargs=(spec,)) as pool:
            futures = {pool.submit(_score_in_process, str(b)): b for b in bags}
            for fut in as_completed(futures):
                on_result(fut.result())
    except BrokenProcessPool as exc:
        raise ExecutorError(f"a worker process died (could it build the engine? run with --workers 1 to "
                            f"see the error): {exc}") from exc


# -- Ray ------------------------------------------------------------------------------------------------


class _RayScorer:
    """Body of the Ray actor (decorated in run_ray, so that this module imports without Ray)."""

    def __init__(self, spec: FleetSpec) -> None:
        self.scorer = BagScorer(spec)

    def score(self, path: str) -> dict[str, Any]:
        return _score_safely(self.scorer, Path(path))


def run_ray(bags: Sequence[Path], spec: FleetSpec, on_result: OnResult, *, address: str | None,
            workers: int | None, local_cpus: int | None = None) -> dict[str, Any]:
    """Score on Ray: `address` None starts a local Ray (`local_cpus` CPUs), else connects to that cluster
    ("auto": the one `ray start` runs here). The bag paths must be readable from every node (a shared
    filesystem), and dcfm_ros installed there. Returns what was used ({address, actors, gpus})."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as exc:
        raise ExecutorError("--ray needs Ray: pip install 'dcfm_ros[fleet]' (or -r requirements/fleet.txt)"
                            ) from exc
    started = not ray.is_initialized()
    if started:
        try:
            if address is None:
                ray.init(num_cpus=local_cpus, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as exc:
            raise ExecutorError(f"cannot start/connect to Ray (address {address or 'local'}): {exc}") from exc
    try:
        res = ray.cluster_resources()
        cpus, gpus = int(res.get("CPU", 1)), int(res.get("GPU", 0))
        threads = spec.threads or 1
        use_gpu = gpus > 0 and str(spec.values.get("device", "auto")).strip().lower() != "cpu"
        n = workers or (gpus if use_gpu else max(1, cpus // threads))
        n = max(1, min(n, len(bags)))
        actor_cls = ray.remote(num_cpus=threads, num_gpus=1 if use_gpu else 0)(_RayScorer)
        actors = [actor_cls.remote(spec) for _ in range(n)]
        try:
            pool = ActorPool(actors)
            for result in pool.map_unordered(lambda a, b: a.score.remote(str(b)), list(bags)):
                on_result(result)
        except ray.exceptions.RayActorError as exc:
            raise ExecutorError(f"a Ray worker died (could it build the engine?): {exc}") from exc
        finally:
            for a in actors:
                ray.kill(a)
        return {"address": address or "local", "actors": n, "gpu_per_actor": use_gpu, "cluster_cpus": cpus,
                "cluster_gpus": gpus}
    finally:
        if started:
            ray.shutdown()
