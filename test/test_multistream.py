"""MultiStreamEngine: several cameras over one model and one backend (issue 22).

Real PyTorch on a tiny random-init EfficientNet-Lite0 DCFM at 64x96. The reference for every camera
is a single-camera StreamEngine fed that camera's frames alone: equal outputs, frame for frame, mean
no stream state leaks between cameras.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from test_engine import SIZE, clip

from dcfm_ros.engine import FixedInterval, MotionThreshold, StreamEngine, make_backend
from dcfm_ros.engine.multistream import MultiStreamEngine
from dcfm_ros.engine.specs import check_camera_names
from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, SIZE)).eval()


def _reference(model: torch.nn.Module, frames: list[np.ndarray], policy: object,
               schedule: str = "sync") -> list[object]:
    engine = StreamEngine(model, policy, device="cpu", schedule=schedule)  # type: ignore[arg-type]
    try:
        return [engine.process(f) for f in frames]
    finally:
        engine.close()


def _feed_interleaved(multi: MultiStreamEngine, clips: dict[str, list[np.ndarray]]) -> dict[str, list]:
    """Each camera's frames submitted and run one round at a time (every camera has its i-th frame
    in round i, so nothing is dropped); the outcomes by camera, in order."""
    got: dict[str, list] = {c: [] for c in clips}
    n = max(len(v) for v in clips.values())
    for i in range(n):
        for cam, frames in clips.items():
            if i < len(frames):
                multi.submit(cam, frames[i], i)
        for o in multi.step(timeout=0):
            assert o.error is None, o.error
            got[o.camera].append(o)
    return got


def _batch_sizes(backend: object) -> list[int]:
    """Record the batch size of every enc_lo call of `backend` (the torch backend)."""
    sizes: list[int] = []
    enc_lo = backend.enc_lo  # type: ignore[attr-defined]

    def spy(x: torch.Tensor) -> torch.Tensor:
        sizes.append(int(x.shape[0]))
        return enc_lo(x)

    backend.enc_lo = spy  # type: ignore[attr-defined]
    return sizes


@pytest.mark.parametrize(("schedule", "batch"),
                         [("sync", False), ("spread", False), ("sync", True), ("spread", True)])
def test_each_camera_equals_a_single_camera_engine(model: torch.nn.Module, schedule: str,
                                                   batch: bool) -> None:
    """Three cameras, different scenes, rates (frame counts) and one at another resolution, a motion
    policy (keyframes fall on different frames per camera): each camera's labels, keyframe flags and
    common ages equal those of its own single-camera engine, frame for frame; also when each round
    runs as one batch (keyframes of some cameras beside non-key frames of others)."""
    policy = MotionThreshold(0.02, min_interval=1, max_interval=4)
    clips = {"front": clip(9, seed=1, shift=6), "left": clip(6, seed=2, shift=1),
             "rear": clip(7, seed=3, size=(48, 80), shift=4)}
    backend = make_backend("torch", model, "cpu", "fp32")
    sizes = _batch_sizes(backend)
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, list(clips), policy, backend=backend,
                                                      schedule=schedule, drop_policy="none", batch=batch)
    try:
        got = _feed_interleaved(multi, clips)
    finally:
        multi.close()
    # batched: rounds of three frames went through enc_lo together (spread's forced keyframes,
    # which time their deep units, run alone); unbatched: one frame per call
    assert (max(sizes) == 3) if batch else (set(sizes) == {1})
    keyframe_patterns = set()
    for cam, frames in clips.items():
        ref = _reference(model, frames, policy, schedule)
        assert [o.tag for o in got[cam]] == list(range(len(frames)))
        for o, r in zip(got[cam], ref, strict=True):
            np.testing.assert_array_equal(o.result.labels, r.labels)
            assert (o.result.is_keyframe, o.result.common_age) == (r.is_keyframe, r.common_age)
        assert got[cam][0].result.labels.shape == frames[0].shape[:2]
        keyframe_patterns.add(tuple(o.result.is_keyframe for o in got[cam]))
    assert len(keyframe_patterns) > 1  # the cameras did key on different frames
    c = multi.counters()
    assert {k: (v["received"], v["processed"], v["dropped"]) for k, v in c.items()} == {
        "front": (9, 9, 0), "left": (6, 6, 0), "rear": (7, 7, 0)}


@pytest.mark.parametrize("batch", [False, True])
def test_a_reduced_frame_gets_labels_at_its_camera_size(model: torch.nn.Module, batch: bool) -> None:
    """A frame handed over as a reduced decode (Pending.camera_size) gets its labels at the camera's
    size, equal to its single-camera engine's process(image, camera); batched or not."""
    import dataclasses

    frames = {"a": clip(3, seed=7), "b": clip(3, seed=8)}
    camera = (2 * frames["a"][0].shape[0], 2 * frames["a"][0].shape[1])
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, list(frames), FixedInterval(2), backend=backend,
                                                      drop_policy="none", batch=batch)
    got: dict[str, list] = {"a": [], "b": []}
    try:
        for i in range(3):
            for cam in frames:
                multi.submit(cam, frames[cam][i], i)
            round_ = [dataclasses.replace(p, camera_size=camera) if p.camera == "a" else p
                      for p in multi.take(timeout=0)]
            for o in multi.run(round_):
                got[o.camera].append(o.result)
    finally:
        multi.close()
    ref = StreamEngine(model, FixedInterval(2), backend="torch", device="cpu")
    for i, r in enumerate(got["a"]):
        assert r.labels.shape == camera
        np.testing.assert_array_equal(r.labels, ref.process(frames["a"][i], camera).labels)
    assert all(r.labels.shape == frames["b"][0].shape[:2] for r in got["b"])


def test_one_backend_and_a_keyframe_stays_with_its_camera(model: torch.nn.Module) -> None:
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["a", "b"], FixedInterval(100), backend=backend)
    try:
        assert multi.engine("a").backend is multi.engine("b").backend is backend
        frames_a, frames_b = clip(3, seed=5), clip(3, seed=6)
        multi.submit("a", frames_a[0], 0)
        multi.submit("b", frames_b[0], 0)
        assert all(o.result.is_keyframe for o in multi.step(timeout=0))
        multi.reset("a")  # a's next frame is a keyframe; b keeps its common feature
        multi.submit("a", frames_a[1], 1)
        multi.submit("b", frames_b[1], 1)
        out = {o.camera: o.result for o in multi.step(timeout=0)}
        assert out["a"].is_keyframe and out["a"].common_age == 0
        assert not out["b"].is_keyframe and out["b"].common_age == 1
    finally:
        multi.close()


def test_latest_policy_is_fair_and_counts_per_camera(model: torch.nn.Module) -> None:
    """A camera sending 5x the frames of another: with drop_policy latest every round serves each
    camera that has a frame once, the fast one's surplus is dropped (counted for it only), the
    newest frame wins, and the camera served first rotates."""
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["fast", "slow"], FixedInterval(2),
                                                      backend=backend, drop_policy="latest")
    frame = clip(1, seed=7)[0]
    served: list[list[tuple[str, int]]] = []
    try:
        for rnd in range(4):
            for k in range(5):
                multi.submit("fast", frame, 5 * rnd + k)
            multi.submit("slow", frame, rnd)
            served.append([(o.camera, o.tag) for o in multi.step(timeout=0)])
    finally:
        multi.close()
    assert [sorted(r) for r in served] == [sorted([("fast", 5 * r + 4), ("slow", r)]) for r in range(4)]
    assert [r[0][0] for r in served] == ["fast", "slow", "fast", "slow"]  # round robin
    c = multi.counters()
    assert c["fast"] == {"received": 20, "processed": 4, "dropped": 16, "failed": 0, "keyframes": 2}
    assert c["slow"] == {"received": 4, "processed": 4, "dropped": 0, "failed": 0, "keyframes": 2}


def test_a_camera_that_stops_never_stalls_the_others(model: torch.nn.Module) -> None:
    """The worker waits for frames of any camera: one camera going silent (here: after its first
    frame) does not hold back the frames the others keep sending, fed from another thread."""
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["dead", "live"], FixedInterval(2),
                                                      backend=backend, drop_policy="none")
    frames = clip(6, seed=8)
    multi.submit("dead", frames[0], 0)

    def camera() -> None:
        for i, f in enumerate(frames):
            multi.submit("live", f, i)

    t = threading.Thread(target=camera)
    t.start()
    got: list[tuple[str, int]] = []
    try:
        while sum(1 for c, _ in got if c == "live") < len(frames):
            outs = multi.step(timeout=60)
            assert outs, "take() timed out although the live camera kept sending"
            got += [(o.camera, o.tag) for o in outs]
    finally:
        t.join()
        multi.close()
    assert [tag for cam, tag in got if cam == "live"] == list(range(6))
    assert [tag for cam, tag in got if cam == "dead"] == [0]


@pytest.mark.parametrize("batch", [False, True])
def test_a_bad_frame_counts_for_its_camera_only(model: torch.nn.Module, batch: bool) -> None:
    policy = FixedInterval(3)
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["good", "bad"], policy, backend=backend,
                                                      drop_policy="none", batch=batch)
    good, bad = clip(4, seed=9), clip(4, seed=10)
    broken = np.zeros((SIZE[0], SIZE[1], 4), np.uint8)  # four channels: refused by the engine
    outs = []
    try:
        for i in range(4):
            multi.submit("good", good[i], i)
            multi.submit("bad", broken if i == 1 else bad[i], i)
            outs += multi.step(timeout=0)
    finally:
        multi.close()
    errors = [(o.camera, o.tag) for o in outs if o.error is not None]
    assert errors == [("bad", 1)]
    assert all(isinstance(o.error, ValueError) for o in outs if o.error is not None)
    c = multi.counters()
    assert (c["good"]["processed"], c["good"]["failed"]) == (4, 0)
    assert (c["bad"]["processed"], c["bad"]["failed"]) == (3, 1)
    # the good camera's stream is untouched by its neighbour's bad frame
    ref = _reference(model, good, policy)
    for o, r in zip([o for o in outs if o.camera == "good"], ref, strict=True):
        np.testing.assert_array_equal(o.result.labels, r.labels)
    # and the bad camera's engine went on as if the bad frame had never come (a bad image is
    # refused before any state is touched): its outputs equal a reference without that frame
    ref_bad = _reference(model, [bad[0], bad[2], bad[3]], policy)
    for o, r in zip([o for o in outs if o.camera == "bad" and o.error is None], ref_bad, strict=True):
        np.testing.assert_array_equal(o.result.labels, r.labels)


def test_an_engine_error_resets_only_that_camera(model: torch.nn.Module) -> None:
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["a", "b"], FixedInterval(100), backend=backend,
                                                      drop_policy="none")
    frames = clip(3, seed=11)

    def process(engine: StreamEngine, image: np.ndarray, camera: tuple[int, int] | None) -> object:
        if engine is multi.engine("a") and calls.setdefault("a", 0) == 1:
            calls["a"] += 1
            raise RuntimeError("injected out of memory")
        if engine is multi.engine("a"):
            calls["a"] += 1
        return engine.process(image, camera)

    calls: dict[str, int] = {}
    outs = []
    try:
        for i in range(3):
            multi.submit("a", frames[i], i)
            multi.submit("b", frames[i], i)
            outs += multi.run(multi.take(timeout=0), process)
    finally:
        multi.close()
    res = {(o.camera, o.tag): o for o in outs}
    assert isinstance(res[("a", 1)].error, RuntimeError)
    assert res[("a", 2)].result.is_keyframe  # reset after the error: the next frame keys again
    assert not res[("b", 1)].result.is_keyframe and not res[("b", 2)].result.is_keyframe
    assert multi.counters()["a"]["failed"] == 1 and multi.counters()["b"]["failed"] == 0


def test_runtime_policy_and_schedule_apply_to_every_camera(model: torch.nn.Module) -> None:
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["a", "b", "c"], FixedInterval(100),
                                                      backend=backend, drop_policy="none")
    frames = clip(4, seed=12)
    try:
        for cam in multi.cameras:
            multi.submit(cam, frames[0], 0)
        multi.step(timeout=0)
        multi.policy = FixedInterval(1)  # every frame a keyframe from now on, on every camera
        multi.set_schedule("spread")
        assert {repr(multi.engine(c).policy) for c in multi.cameras} == {repr(FixedInterval(1))}
        schedules = [multi.engine(c).schedule for c in multi.cameras]
        assert len({id(s) for s in schedules}) == 3  # one schedule object per camera
        assert all(type(s).__name__ == type(schedules[0]).__name__ for s in schedules)
        for cam in multi.cameras:
            multi.submit(cam, frames[1], 1)
        outs = multi.step(timeout=0)
        assert len(outs) == 3 and all(o.result.is_keyframe for o in outs)
    finally:
        multi.close()


def test_close_wakes_the_worker_and_names_are_checked(model: torch.nn.Module) -> None:
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["a"], FixedInterval(2), backend=backend)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(multi.take()))
    t.start()
    multi.close()
    t.join(30)
    assert not t.is_alive() and got == [[]]
    assert check_camera_names(["front", "left_2"]) == ("front", "left_2")
    for bad in (["front", "front"], ["2cam"], ["a/b"], [""]):
        with pytest.raises(ValueError):
            check_camera_names(bad)
    with pytest.raises(KeyError, match="unknown camera 'x'"):
        multi.submit("x", np.zeros((4, 4, 3), np.uint8), 0)


def test_a_failed_batch_fails_its_frames_and_resets_their_cameras(model: torch.nn.Module) -> None:
    backend = make_backend("torch", model, "cpu", "fp32")
    multi: MultiStreamEngine[int] = MultiStreamEngine(model, ["a", "b"], FixedInterval(100), backend=backend,
                                                      drop_policy="none", batch=True)
    frames = clip(3, seed=13)
    enc_lo = backend.enc_lo
    calls = {"n": 0}

    def flaky(x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected out of memory")
        return enc_lo(x)

    backend.enc_lo = flaky  # type: ignore[method-assign]
    outs = []
    try:
        for i in range(3):
            multi.submit("a", frames[i], i)
            multi.submit("b", frames[i], i)
            outs += multi.step(timeout=0)
    finally:
        multi.close()
    res = {(o.camera, o.tag): o for o in outs}
    assert isinstance(res[("a", 1)].error, RuntimeError) and isinstance(res[("b", 1)].error, RuntimeError)
    # both cameras' caches were dropped: their next frames key again, together in one batch
    assert res[("a", 2)].result.is_keyframe and res[("b", 2)].result.is_keyframe
    assert {c: v["failed"] for c, v in multi.counters().items()} == {"a": 1, "b": 1}


def test_camera_batching_parameter() -> None:
    from dcfm_ros.engine.settings import batch_cameras

    class Net:
        def __init__(self, name: str, device: str) -> None:
            self.name, self.device = name, torch.device(device)

    assert batch_cameras("auto", Net("torch", "cuda")) is True
    assert batch_cameras("auto", Net("torch", "cpu")) is False  # measured slower on the CPU
    assert batch_cameras("auto", Net("openvino", "cpu")) is False
    assert batch_cameras("on", Net("openvino", "cpu")) is True  # asked for; batch-1 graphs run alone
    assert batch_cameras("off", Net("torch", "cuda")) is False
