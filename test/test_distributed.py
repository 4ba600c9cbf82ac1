"""dcfm-train under `torchrun --nproc_per_node 2` (gloo, CPU): one step equals one process on the same
global batch, rank 0 writes one checkpoint that runs in the engine, resume continues the schedule on
another process count, and a rank that dies ends the run with an error instead of a hang.

How the equivalence is made a real check (the brief's BatchNorm / randomness caveats):
- BatchNorm: `model.freeze_bn: true` (eval-mode BN). Per-rank batch statistics (2 pairs per rank vs 4
  in one process) would differ, and PyTorch's SyncBatchNorm refuses CPU tensors.
- Randomness: ResNet-18 (no stochastic depth, unlike EfficientNet-Lite0's drop-connect), dropout 0,
  no augmentation (full-frame crop, scale 1, no flip/rotation/jitter), one neighbour offset. So a
  sample is the same whichever rank draws it.
- The fixture has exactly 4 labeled frames and the global batch is 4 (train.batch_scope: global, 2
  per rank): the union of the ranks' shards is the single process's batch, whatever the shuffle.
- Loss terms are global-batch means (distributed.global_mean): the ranks hold different numbers of
  valid pixels and of agreeing L_C positions, so averaging per-rank means would NOT match.
The weights after the step must match to 1e-4 of the step's size, while one process stepping on only
half of the batch (2 of the 4 frames) lands far outside that: the check sees the batch composition.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import FOLDER_CLASSES, FOLDER_PALETTE, make_folder

from dcfm_ros.model import load_checkpoint
from dcfm_ros.training.config import load_config
from dcfm_ros.training.distributed import DistContext, DistributedError, apply_sync_bn, per_rank_batch
from dcfm_ros.training.train import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_TIMEOUT_S = 300


def _config(tmp: Path, root: Path, name: str = "tiny.yaml", **train: object) -> Path:
    cfg = {
        "seed": 0, "device": "cpu", "threads": 1,
        "model": {"backbone": "resnet18", "pretrained": None, "input_size": [32, 48], "dropout": 0.0,
                  "freeze_bn": True},
        "dataset": {"type": "folder", "root": str(root), "val_split": None, "neighbour_offsets": [1],
                    "crop_size": [32, 48], "scale_range": [1.0, 1.0], "rotate_deg": 0, "hflip": False,
                    "jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0}},
        "optim": {"warmup_iters": 0},
        "train": {"iterations": 1, "batch_size": 4, "batch_scope": "global", "workers": 0,
                  "save_fp16": False, "out_dir": str(tmp / "unused"), **train},
    }
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def torchrun(nproc: int, args: list[str], log: Path, timeout: float = TORCHRUN_TIMEOUT_S) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("torchrun")
    cmd = ([str(exe)] if exe.is_file() else [sys.executable, "-m", "torch.distributed.run"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = log.open("w")
    return subprocess.Popen([*cmd, "--standalone", "--nproc_per_node", str(nproc), "-m",
                             "dcfm_ros.tools.train", *args, "--no-progress"],
                            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def run_torchrun(nproc: int, args: list[str], log: Path) -> None:
    proc = torchrun(nproc, args, log)
    rc = proc.wait(TORCHRUN_TIMEOUT_S)
    assert rc == 0, log.read_text()[-4000:]


def _flat(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in sd.items() if v.is_floating_point()}


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """|a - b| / |a - ref| over all float tensors (ref = the weights before the step)."""
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    den = sum(float(((a[k] - ref[k]) ** 2).sum()) for k in a)
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_folder(tmp / "data", sequences={"run1": 4, "run2": 4})  # 4 labeled frames (0, 2 of each)
    half = make_folder(tmp / "half", sequences={"run1": 4})  # the same first sequence alone
    cfg = _config(tmp, root)
    single = Trainer(load_config(cfg), tmp / "single", progress=False)
    before = _flat({k: v.clone() for k, v in single.model.state_dict().items()})
    single.run()
    run_torchrun(2, ["--config", str(cfg), "--out", str(tmp / "ddp")], tmp / "ddp.log")
    return {"tmp": tmp, "root": root, "half": half, "cfg": cfg, "single": tmp / "single", "ddp": tmp / "ddp",
            "before": before}  # type: ignore[dict-item]


def test_one_ddp_step_equals_one_process_on_the_global_batch(fixture):
    before = fixture["before"]
    single = _flat(load_file(fixture["single"] / "model.safetensors"))
    ddp = _flat(load_file(fixture["ddp"] / "model.safetensors"))
    assert single.keys() == ddp.keys() and not any(k.startswith("module.") for k in ddp)
    rel = _rel(single, ddp, before)
    assert rel < 1e-4, rel
    # Control: one process on half the batch is far from it, so the tolerance above does see a
    # missing shard, a duplicated one, or per-rank means.
    half_cfg = load_config(_config(fixture["tmp"], fixture["half"], "half.yaml", batch_size=2))
    half = Trainer(half_cfg, fixture["tmp"] / "half_run", progress=False)
    half.run()
    rel_half = _rel(single, _flat(load_file(fixture["tmp"] / "half_run" / "model.safetensors")), before)
    assert rel_half > 1000 * max(rel, 1e-7), (rel, rel_half)
    cfg = yaml.safe_load((fixture["ddp"] / "config.yaml").read_text())
    assert cfg["train"]["world_size"] == 2 and cfg["train"]["global_batch"] == 4


def test_rank0_writes_one_checkpoint_with_user_classes_that_runs_in_the_engine(fixture):
    from dcfm_ros.data.datasets.pairs import read_rgb
    from dcfm_ros.engine import FixedInterval, StreamEngine

    out = fixture["ddp"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.yaml", "last.safetensors", "last.state.pt", "log.csv", "model.safetensors"]
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 2  # header + one iteration, written once (rank 0), not once per rank
    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta["config"].class_names == FOLDER_CLASSES and meta["config"].palette == FOLDER_PALETTE
    engine = StreamEngine(model, FixedInterval(2), device="cpu")
    frames = sorted((fixture["root"] / "train" / "images" / "run1").glob("*.png"))
    results = [engine.process(read_rgb(f)) for f in frames]
    assert [r.is_keyframe for r in results] == [True, False, True, False]
    assert all(r.labels.shape == (32, 48) and int(r.labels.max()) < len(FOLDER_CLASSES) for r in results)


def test_resume_under_ddp_from_a_one_process_checkpoint_continues_the_schedule(fixture):
    tmp = fixture["tmp"]
    ckpt_single = tmp / "resume_single"
    ckpt_ddp = tmp / "resume_ddp"
    for d in (ckpt_single, ckpt_ddp):
        shutil.copytree(fixture["single"], d)
    cfg2 = load_config(fixture["cfg"], ["train.iterations=2"])
    one = Trainer(cfg2, ckpt_single, resume=ckpt_single / "last.safetensors", progress=False)
    assert one.start_iter == 1
    one.run()
    run_torchrun(2, ["--config", str(fixture["cfg"]), "--out", str(ckpt_ddp), "--iterations", "2",
                     "--resume", str(ckpt_ddp / "last.safetensors")], tmp / "resume.log")
    rows_one = [r.split(",") for r in (ckpt_single / "log.csv").read_text().splitlines()[1:]]
    rows_ddp = [r.split(",") for r in (ckpt_ddp / "log.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows_ddp] == ["1", "2"]
    assert rows_ddp[1][1] == rows_one[1][1]  # iteration 2's lr: the poly schedule went on, not restarted
    state = torch.load(ckpt_ddp / "last.state.pt", weights_only=True)
    assert state["iteration"] == 2 and state["scheduler"]["last_iter"] == 2
    # The resumed DDP step (restored momentum, same global batch) is the resumed single step.
    a = _flat(load_file(ckpt_single / "model.safetensors"))
    b = _flat(load_file(ckpt_ddp / "model.safetensors"))
    assert _rel(a, b, _flat(load_file(fixture["single"] / "model.safetensors"))) < 1e-4


def _rank_pid(parent: int, rank: int) -> int | None:
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(d.name)
    return None


def test_a_rank_that_dies_ends_the_run_with_an_error(fixture):
    tmp = fixture["tmp"]
    out = tmp / "killed"
    cfg = _config(tmp, fixture["root"], "long.yaml", iterations=100000)
    log = tmp / "killed.log"
    proc = torchrun(2, ["--config", str(cfg), "--out", str(out)], log)
    try:
        deadline = time.monotonic() + TORCHRUN_TIMEOUT_S
        while not ((out / "log.csv").is_file() and len((out / "log.csv").read_text().splitlines()) >= 3):
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None, "rank 1 not found among torchrun's children"
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(120)  # torchrun notices, stops rank 0 and reports; no hang
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert rc != 0
    assert "rank" in text and ("SIGKILL" in text or "Signal 9" in text), text[-3000:]
    assert not (out / "model.safetensors").exists()  # the run did not end as if complete


def test_batch_split_and_sync_bn_rules():
    assert per_rank_batch(8, "rank", 4) == 8 and per_rank_batch(8, "global", 4) == 2
    with pytest.raises(DistributedError, match="multiple of 3"):
        per_rank_batch(8, "global", 3)
    from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model

    cfg = DCFMConfig("resnet18", 11, CAMVID_CLASSES, CAMVID_PALETTE, (32, 48))
    model = build_model(cfg, None)
    bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # one device, or the flag off: plain BatchNorm stays
    assert apply_sync_bn(model, True, DistContext(), torch.device("cpu")) is model
    assert apply_sync_bn(model, False, DistContext(0, 2, 0, "nccl"), torch.device("cuda", 0)) is model
    with pytest.raises(DistributedError, match="CUDA"):
        apply_sync_bn(model, True, DistContext(0, 2, 0, "gloo"), torch.device("cpu"))
    keys = list(model.state_dict())
    synced = apply_sync_bn(model, True, DistContext(0, 2, 0, "nccl"), torch.device("cuda", 0))
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) == bn > 0
    assert list(synced.state_dict()) == keys  # so its checkpoint loads into the node's plain-BN model


def test_a_bad_label_stops_every_rank_at_start_up_with_the_file_named(fixture):
    import cv2

    tmp = fixture["tmp"]
    root = tmp / "bad_data"
    shutil.copytree(fixture["root"], root)
    label = root / "train" / "labels" / "run2" / "0002.png"
    lab = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    lab[0, 0] = 7
    assert cv2.imwrite(str(label), lab)
    log = tmp / "bad.log"
    proc = torchrun(2, ["--config", str(_config(tmp, root, "bad.yaml")), "--out", str(tmp / "bad_run")], log)
    assert proc.wait(TORCHRUN_TIMEOUT_S) != 0
    text = log.read_text()
    for rank in (0, 1):  # rank 0 scanned; rank 1 got its verdict and stops with the same message
        want = f"dcfm-train: rank {rank}: error: folder split 'train': 1 of 4 label files"
        assert want in text, text[-3000:]
    assert f"{label}: values [7]" in text
    assert not (tmp / "bad_run").exists()  # stopped before any step or file


def test_a_rank_error_file_is_whole_or_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun reads a failed rank's error file; ours is written in one step: what torchrun parses
    names the exception, and a write cut short leaves no file (torch's own handler left an empty one,
    which made torchrun's failure summary crash in a CI run)."""
    import json

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from dcfm_ros.training.distributed import AtomicErrorHandler

    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    try:
        raise RuntimeError("Connection closed by peer")
    except RuntimeError as exc:
        AtomicErrorHandler().record_exception(exc)
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path))
    assert failure.message["message"] == "RuntimeError: Connection closed by peer"  # type: ignore[index]
    assert failure.timestamp > 0 and not list(tmp_path.glob("*.tmp"))

    cut = tmp_path / "cut.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(cut))

    def dies_halfway(data: object, fp: object) -> None:
        fp.write('{"message": ')  # type: ignore[attr-defined]
        raise KeyboardInterrupt  # the rank is stopped here

    monkeypatch.setattr(json, "dump", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        AtomicErrorHandler().record_exception(RuntimeError("x"))
    assert not cut.exists()
