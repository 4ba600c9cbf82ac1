"""Keyframe schedules (sync, spread, background, lag): labels against a reference built by hand from
the model's stages, coalescing, causality, forced synchronous keyframes, run-time swaps, and a
background pass that never holds a frame up (a backend whose deep pass is held on an event).

Real PyTorch on the tiny random-init EfficientNet-Lite0 DCFM of test_engine (64x96)."""

from __future__ import annotations

import copy
import itertools
import threading

import numpy as np
import pytest
import torch
from test_engine import SIZE, clip, needs_cuda, reference_input

from dcfm_ros.engine import FixedInterval, MotionThreshold, StreamEngine, TorchBackend
from dcfm_ros.engine.schedules import (
    BackgroundSchedule,
    LagSchedule,
    SpreadSchedule,
    SyncSchedule,
    group_units,
    make_schedule,
)
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, upsample_logits


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE)).eval()


def reference_labels(model: torch.nn.Module, frames: list[np.ndarray], keys: list[int],
                     delay: int) -> list[np.ndarray]:
    """P mode with keyframes `keys` whose common part is used from `delay` frames after each keyframe
    on (frame 0 uses its own at once: nothing older exists), from the model's stages one by one."""
    with torch.inference_mode():
        f_in = [model.enc_lo(reference_input(model, f)) for f in frames]
        common = {k: model.ffm.common_part(model.enc_hi(f_in[k])) for k in keys}
        out = []
        for t in range(len(frames)):
            k = max(k for k in keys if k == 0 or k + delay <= t)
            logits = model.head(model.ffm.fuse_with_common(common[k], f_in[t]))
            out.append(upsample_logits(logits, SIZE).argmax(1)[0].to(torch.uint8).numpy())
    return out


def test_group_units_is_contiguous_and_even() -> None:
    assert group_units([1, 1, 1, 1, 1, 1], 3) == [(0, 2), (2, 4), (4, 6)]
    assert group_units([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    groups = group_units([1.0] * 7, 3)
    assert groups[0][0] == 0 and groups[-1][1] == 7
    assert all(a < b and b == c for (a, b), (c, _) in itertools.pairwise(groups))
    assert group_units([1, 2], 5) == [(0, 1), (1, 2)]  # never an empty group
    with pytest.raises(ValueError, match="pieces"):
        group_units([1, 2], 0)


def test_make_schedule_names_and_errors() -> None:
    assert isinstance(make_schedule("sync"), SyncSchedule)
    assert make_schedule("spread", spread=4).pieces == 4
    assert make_schedule("spread:2").pieces == 2
    assert make_schedule("lag:3").lag == 3
    assert isinstance(make_schedule("background"), BackgroundSchedule)
    for bad, match in (("later", "unknown keyframe schedule"), ("spread:x", "spread:N"),
                       ("spread:0", "keyframe.spread"), ("lag:-1", "lag"), (3, "must be one of")):
        with pytest.raises(ValueError, match=match):
            make_schedule(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_spread_equals_sync_with_the_cache_swapped_n_frames_later(model: torch.nn.Module,
                                                                  pieces: int) -> None:
    frames = clip(11)
    engine = StreamEngine(model, FixedInterval(4), device="cpu", schedule="spread", spread=pieces)
    got = [engine.process(f) for f in frames]
    keys = [0, 4, 8]
    want = reference_labels(model, frames, keys, delay=pieces)
    for t, (r, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(r.labels, w, err_msg=f"frame {t}")
    assert [r.is_keyframe for r in got] == [t in keys for t in range(11)]
    # age: 0 on the first frame; afterwards the distance to the keyframe whose cache arrived
    used = [max(k for k in keys if k == 0 or k + pieces <= t) for t in range(11)]
    assert [r.common_age for r in got] == [t - k for t, k in enumerate(used)]
    assert got[4].deep_pass_in_flight and not got[4 + pieces].deep_pass_in_flight
    # each following frame ran a piece of the pass (timed as its enc_hi)
    assert all(got[t].timings_ms["enc_hi"] > 0 for t in range(5, 5 + pieces))
    assert got[4].timings_ms["enc_hi"] == 0.0
    # ... and the labels differ from sync's, so the comparison sees the delay
    sync = reference_labels(model, frames, keys, delay=0)
    assert any(not np.array_equal(got[t].labels, sync[t]) for t in range(4, 4 + pieces))


def test_lag_equals_spread(model: torch.nn.Module) -> None:
    frames = clip(9)
    runs = []
    for schedule in ("spread:2", "lag:2"):
        engine = StreamEngine(model, FixedInterval(3), device="cpu", schedule=schedule)
        runs.append([engine.process(f) for f in frames])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert (a.is_keyframe, a.common_age) == (b.is_keyframe, b.common_age)


def test_requests_during_a_pass_are_coalesced(model: torch.nn.Module) -> None:
    # K=1 asks for a keyframe on every frame; a 3-piece pass takes 3 frames, so only every third
    # frame starts one: the one whose start the running pass completes on (its request carried over).
    engine = StreamEngine(model, FixedInterval(1), device="cpu", schedule="spread:3")
    got = [engine.process(f) for f in clip(10)]
    assert [t for t, r in enumerate(got) if r.is_keyframe] == [0, 1, 4, 7]
    assert [r.common_age for r in got] == [0, 1, 2, 3, 3, 4, 5, 3, 4, 5]
    assert all(r.deep_pass_in_flight for r in got[1:])


def test_forced_keyframes_stay_synchronous(model: torch.nn.Module) -> None:
    frames = clip(4)
    engine = StreamEngine(model, FixedInterval(2), device="cpu", schedule="spread:3")
    for f in frames[:3]:
        r = engine.process(f)
    assert r.deep_pass_in_flight  # frame 2 started a pass
    engine.reset()
    r = engine.process(frames[3])
    assert r.is_keyframe and r.common_age == 0 and not r.deep_pass_in_flight
    want = reference_labels(model, [frames[3]], [0], 0)[0]
    np.testing.assert_array_equal(r.labels, want)
    # a size change, too (the pass in flight belongs to the other size and is dropped)
    engine.process(frames[0])
    engine.process(frames[1])
    assert engine.process(frames[2]).deep_pass_in_flight
    big = np.ascontiguousarray(np.concatenate([frames[0], frames[0]], axis=0))
    r = engine.process(big)
    assert r.is_keyframe and r.common_age == 0 and not r.deep_pass_in_flight


def test_spread_measures_unit_costs_on_forced_keyframes(model: torch.nn.Module) -> None:
    engine = StreamEngine(model, FixedInterval(2), device="cpu", schedule="spread:2")
    sched = engine.schedule
    assert isinstance(sched, SpreadSchedule)
    guess = sched.costs(engine.backend)
    assert guess == engine.backend.deep_unit_costs()
    engine.process(clip(1)[0])
    measured = sched.costs(engine.backend)
    assert measured != guess and len(measured) == engine.backend.num_deep_units
    assert all(ms >= 0 for ms in measured)
    plan = sched.plan(engine.backend)
    assert len(plan) == 2 and plan[0][0] == 0 and plan[-1][1] == engine.backend.num_deep_units


class HeldBackend(TorchBackend):
    """The torch backend whose background deep pass waits for `release` (the forced keyframe on the
    engine's thread does not); counts how many deep passes run at once."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model, "cpu")
        self.release = threading.Event()
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.max_running = 0
        self.calls = 0

    def enc_hi(self, f_in: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if threading.current_thread() is not threading.main_thread():
                self.entered.set()
                assert self.release.wait(60), "the test never released the deep pass"
            return super().enc_hi(f_in)
        finally:
            with self._lock:
                self.running -= 1


def test_background_never_holds_a_frame_and_runs_one_pass_at_a_time(model: torch.nn.Module) -> None:
    frames = clip(12)
    net = HeldBackend(model)
    engine = StreamEngine(model, FixedInterval(2), backend=net, schedule="background")
    try:
        got = [engine.process(f) for f in frames[:3]]  # frame 2 starts the pass, which is held
        assert net.entered.wait(30)
        # While the pass is held, every frame completes: had any frame waited for it, this would
        # block (until the 60 s guard fails the pass). Keyframe requests (4, 6, 8) are coalesced.
        got += [engine.process(f) for f in frames[3:9]]
        assert not net.release.is_set()
        assert all(r.deep_pass_in_flight and not r.is_keyframe for r in got[3:9])
        assert [r.common_age for r in got[2:9]] == [2, 3, 4, 5, 6, 7, 8]  # still frame 0's cache
        assert net.calls == 2 and net.max_running == 1  # forced frame 0, then the held pass
        net.release.set()
        assert engine.schedule.wait(30)
        r9 = engine.process(frames[9])
        # swapped in at the first frame after it finished; the carried-over request starts the next
        assert r9.common_age == 7 and r9.is_keyframe and r9.deep_pass_in_flight
        np.testing.assert_array_equal(r9.labels, reference_labels(model, frames[:10], [0, 2], 7)[9])
        assert engine.schedule.wait(30)
        r10 = engine.process(frames[10])
        assert r10.common_age == 1 and not r10.deep_pass_in_flight
        assert net.max_running == 1 and net.calls == 3
        # background work is not timed as the frames' own enc_hi
        assert all(r.timings_ms["enc_hi"] == 0.0 for r in got[1:])
    finally:
        net.release.set()
        engine.close()


def _run(model: torch.nn.Module, schedule: str, frames: list[np.ndarray]) -> list:
    engine = StreamEngine(model, MotionThreshold(0.02, 1, 3), device="cpu", schedule=schedule)
    out = []
    try:
        for f in frames:
            out.append(engine.process(f))
            if isinstance(engine.schedule, BackgroundSchedule):
                engine.schedule.wait(30)  # a fixed hand-over point, so two runs are comparable
    finally:
        engine.close()
    return out


@pytest.mark.parametrize("schedule", ["sync", "spread:2", "background", "lag:1"])
def test_every_schedule_is_causal(model: torch.nn.Module, schedule: str) -> None:
    shared = clip(6, seed=0)
    ra = _run(model, schedule, shared + clip(3, seed=1))
    rb = _run(model, schedule, shared + clip(3, seed=2))
    assert sum(r.is_keyframe for r in ra[:6]) >= 2  # the policy did pick keyframes to schedule
    for t in range(len(shared)):
        np.testing.assert_array_equal(ra[t].labels, rb[t].labels, err_msg=f"{schedule} frame {t}")
        assert (ra[t].is_keyframe, ra[t].common_age) == (rb[t].is_keyframe, rb[t].common_age)
    assert any(not np.array_equal(a.labels, b.labels) for a, b in zip(ra[6:], rb[6:], strict=True))


def test_schedule_swap_at_run_time_carries_the_request_over(model: torch.nn.Module) -> None:
    frames = clip(8)
    engine = StreamEngine(model, FixedInterval(3), device="cpu", schedule="spread:4")
    rs = [engine.process(f) for f in frames[:4]]
    assert rs[3].is_keyframe and rs[3].deep_pass_in_flight
    engine.schedule = "sync"
    r = engine.process(frames[4])
    assert r.is_keyframe and r.common_age == 0 and not r.deep_pass_in_flight
    engine.schedule = "background"
    assert isinstance(engine.schedule, BackgroundSchedule)
    engine.process(frames[5])
    engine.close()


def test_lag_schedule_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="lag"):
        LagSchedule(-2)
    with pytest.raises(ValueError, match="threads"):
        BackgroundSchedule(0)


@needs_cuda
def test_background_on_cuda_matches_lag_when_handed_over_each_frame(model: torch.nn.Module) -> None:
    frames = clip(8)
    runs = []
    gpu_model = copy.deepcopy(model)  # the backend moves its model; the fixture stays on the CPU
    for schedule in ("background", "lag:1"):
        engine = StreamEngine(gpu_model, FixedInterval(2), device="cuda", schedule=schedule)
        out = []
        for f in frames:
            out.append(engine.process(f))
            if isinstance(engine.schedule, BackgroundSchedule):
                engine.schedule.wait(30)
                torch.cuda.synchronize()
        engine.close()
        runs.append(out)
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a.labels, b.labels)
        assert a.common_age == b.common_age


def test_latency_bench_replays_every_schedule(model: torch.nn.Module, tmp_path, capsys) -> None:
    import json

    import cv2

    from dcfm_ros.model import save_checkpoint
    from dcfm_ros.tools.bench import main as bench_main

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(ckpt, model)
    frames = tmp_path / "clip"
    frames.mkdir()
    for i, f in enumerate(clip(8)):
        cv2.imwrite(str(frames / f"{i:03d}.png"), f[..., ::-1])
    assert bench_main(["--latency", "--model", str(ckpt), "--clip", str(frames), "--rate", "200",
                       "--schedules", "sync,spread:2,background", "--policy", "fixed:2", "--threads", "1",
                       "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["schedule"] for r in rows] == ["sync", "spread:2", "background"]
    for r in rows:
        assert r["processed"] + r["dropped"] == 8 and r["processed"] >= 1  # the newest frame always runs
        assert sum(r["common_age"].values()) == r["processed"]
        assert r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"]
    assert max(int(a) for a in rows[0]["common_age"]) <= 1  # sync, K=2: its own F_co or the previous frame's
    with pytest.raises(SystemExit, match="schedule"):
        bench_main(["--latency", "--model", str(ckpt), "--clip", str(frames), "--schedules", "later"])
