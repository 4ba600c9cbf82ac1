"""Training: optimiser groups and schedule, config handling, one real step lowers the loss, and a
checkpoint written by dcfm-train loads through load_checkpoint with identical logits (and resumes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from train_fixtures import make_camvid

from dcfm_ros.model import CAMVID_CLASSES, CAMVID_PALETTE, DCFMConfig, build_model, load_checkpoint
from dcfm_ros.tools.train import main
from dcfm_ros.training.config import ConfigError, config_from_dict, load_config
from dcfm_ros.training.losses import dcfm_losses
from dcfm_ros.training.optim import OptimConfig, PolyWarmup, build_optimizer, split_parameters
from dcfm_ros.training.train import Trainer, state_path

REPO = Path(__file__).resolve().parents[1]


# One intra-op thread (conftest.one_torch_thread): the CI box has 2 cores shared with other work, and
# OpenMP threads that outnumber free cores make a tiny step take seconds instead of milliseconds.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = DCFMConfig("efficientnet-lite0", 11, CAMVID_CLASSES, CAMVID_PALETTE, (64, 96), dropout=0.0)
    return build_model(cfg, None)


def test_parameter_split_encoder_vs_decoder(tiny_model):
    enc, dec = split_parameters(tiny_model)
    enc_names = {n for n, _ in enc}
    dec_names = {n for n, _ in dec}
    assert not enc_names & dec_names
    assert len(enc_names) + len(dec_names) == len(list(tiny_model.parameters()))
    assert all(n.startswith(("enc_lo.", "enc_hi.blocks.")) for n in enc_names)
    # the all-MLP fuse inside enc_hi is new (not ImageNet) and trains at the decoder rate
    assert any(n.startswith("enc_hi.fuse.") for n in dec_names)
    assert any(n.startswith("enc_hi.proj.") for n in dec_names)
    assert any(n.startswith("ffm.") for n in dec_names) and any(n.startswith("head.") for n in dec_names)


def test_optimizers_and_poly_warmup(tiny_model):
    sgd = build_optimizer(tiny_model, OptimConfig("sgd", 1e-2, 2e-2, warmup_iters=10))
    assert isinstance(sgd, torch.optim.SGD)
    assert {g["name"]: g["base_lr"] for g in sgd.param_groups} == {"encoder": 1e-2, "decoder": 2e-2}
    sched = PolyWarmup(sgd, max_iters=100, power=1.0, warmup_iters=10, warmup_ratio=0.1)
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-3)  # warm-up start: 0.1 x
    for _ in range(10):
        sched.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9)  # poly (1 - 10/100)^1
    assert sgd.param_groups[1]["lr"] == pytest.approx(2e-2 * 0.9)
    for _ in range(90):
        sched.step()
    assert sgd.param_groups[0]["lr"] == pytest.approx(0.0)
    adamw = build_optimizer(tiny_model, OptimConfig("adamw", 6e-5, 6e-4, weight_decay=0.01))
    assert isinstance(adamw, torch.optim.AdamW)
    groups = {g["name"]: g for g in adamw.param_groups}
    assert groups["encoder_no_decay"]["weight_decay"] == 0.0 and groups["encoder"]["weight_decay"] == 0.01


def test_config_defaults_overrides_and_errors():
    raw = {"model": {"backbone": "mit-b2", "input_size": [64, 96]},
           "dataset": {"type": "vspw", "root": "/nowhere"}}
    cfg = config_from_dict(raw)
    assert (cfg.loss.lambda_b, cfg.loss.lambda_c) == (0.2, 5.0)  # Table I, VSPW
    assert cfg.optim.type == "adamw" and cfg.optim.lr_encoder == 6e-5
    with pytest.raises(ConfigError, match="backbone"):
        config_from_dict({"model": {"input_size": [8, 8]}, "dataset": {"type": "camvid", "root": "x"}})
    with pytest.raises(ConfigError, match="lr_encodr"):
        config_from_dict({**raw, "optim": {"lr_encodr": 1.0}})
    with pytest.raises(ConfigError, match=r"dataset\.type"):
        config_from_dict({**raw, "dataset": {"type": "kitti", "root": "x"}})
    default = load_config(REPO / "config" / "train" / "camvid_efficientnet_lite0.yaml",
                          ["train.iterations=5", "loss.lambda_b=0", "optim.grad_clip=null"])
    assert default.model.backbone == "efficientnet-lite0" and default.model.input_size == (360, 480)
    assert default.train.iterations == 5 and default.loss.lambda_b == 0.0 and default.optim.grad_clip is None
    assert len(default.dataset.class_names) == 11
    for name in ("cityscapes_mit_b2.yaml", "vspw_mit_b2.yaml"):
        c = load_config(REPO / "config" / "train" / name)
        assert c.model.backbone == "mit-b2"
    # the resolved config round-trips through its dict form
    assert config_from_dict(default.to_dict()).to_dict() == default.to_dict()


def test_a_few_sgd_steps_lower_the_loss_on_a_fixed_batch(tiny_model):
    torch.manual_seed(0)
    model = tiny_model.train()
    x_l, x_u = torch.randn(2, 3, 64, 96), torch.randn(2, 3, 64, 96)
    y = torch.randint(0, 3, (2, 64, 96))
    opt = build_optimizer(model, OptimConfig("sgd", 1e-2, 2e-2))
    first = None
    for _ in range(5):
        terms = dcfm_losses(model, x_l, y, x_u, 0.4, 10.0)
        first = terms.total.item() if first is None else first
        opt.zero_grad()
        terms.total.backward()
        opt.step()
    after = dcfm_losses(model, x_l, y, x_u, 0.4, 10.0).total.item()
    assert after < first - 0.05, (first, after)


def _tiny_config(tmp_path: Path, root: Path) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "train" / "camvid_efficientnet_lite0.yaml").read_text())
    cfg["threads"] = 1
    cfg["device"] = "cpu"
    cfg["model"].update(pretrained=None, input_size=[32, 48], dropout=0.0)
    cfg["dataset"].update(root=str(root), crop_size=[32, 48], eval_stride=3)
    cfg["optim"]["warmup_iters"] = 1
    cfg["train"].update(iterations=2, batch_size=2, workers=0, eval_interval=1, ckpt_interval=1,
                        out_dir=str(tmp_path / "unused"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_dcfm_train_cli_writes_checkpoints_that_load_with_same_logits(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    cfg_path = _tiny_config(tmp_path, root)
    out = tmp_path / "run"
    assert main(["--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    for name in ("model.safetensors", "model_fp16.safetensors", "last.safetensors", "last.state.pt",
                 "best.safetensors", "log.csv", "eval.csv", "config.yaml"):
        assert (out / name).is_file(), name
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "iter,lr,loss,L_I,L_B,L_C,mask_ratio,time,L_sim" and len(rows) == 3

    model, meta = load_checkpoint(out / "model.safetensors")
    assert meta["extra"]["iteration"] == 2 and meta["config"].class_names == CAMVID_CLASSES
    half, _ = load_checkpoint(out / "model_fp16.safetensors")
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        a = model(model.normalize_input(x))
        b = half(half.normalize_input(x))
    assert torch.allclose(a, b, atol=0.05)
    # The optimizer state is plain tensors/primitives: loads with weights_only=True.
    state = torch.load(state_path(out / "last.safetensors"), weights_only=True)
    assert state["iteration"] == 2 and state["scheduler"]["last_iter"] == 2


def test_trainer_model_equals_loaded_checkpoint_and_resume_continues(tmp_path: Path):
    root = make_camvid(tmp_path / "camvid")
    cfg = load_config(_tiny_config(tmp_path, root), ["dataset.val_split=null"])
    out = tmp_path / "run"
    trainer = Trainer(cfg, out, progress=False)
    final = trainer.run()
    loaded, _ = load_checkpoint(final)
    trainer.model.eval()
    x = torch.rand(2, 3, 32, 48)
    # The trainer runs channels_last on CPU (different conv kernels): equal up to float rounding.
    with torch.no_grad():
        ref = loaded(loaded.normalize_input(x))
        assert torch.allclose(trainer.model(trainer.model.normalize_input(x)), ref, rtol=1e-4, atol=1e-6)

    cfg3 = load_config(_tiny_config(tmp_path, root), ["dataset.val_split=null", "train.iterations=3"])
    resumed = Trainer(cfg3, out, resume=out / "last.safetensors", progress=False)
    assert resumed.start_iter == 2
    with torch.no_grad():  # resumed from exactly the saved weights
        resumed.model.eval()
        assert torch.allclose(resumed.model(resumed.model.normalize_input(x)), ref, rtol=1e-4, atol=1e-6)
    resumed.model.train()
    resumed.run()
    rows = (out / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    # Resuming with a different model config is refused.
    bad = load_config(_tiny_config(tmp_path, root), ["dataset.val_split=null", "model.input_size=[64, 96]"])
    with pytest.raises(ConfigError, match="differs"):
        Trainer(bad, out, resume=out / "last.safetensors", progress=False)


def test_cli_reports_bad_config(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {backbone: efficientnet-lite0, input_size: [8, 8]}\n"
                   "dataset: {type: camvid, root: /does/not/exist}\n")
    assert main(["--config", str(bad), "--no-progress"]) == 2
    assert "trainannot" in capsys.readouterr().err
