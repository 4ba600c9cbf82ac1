"""`dcfm-train`: DCFM training on one device (CPU or one GPU), or on N under torchrun, from a YAML config.

    dcfm-train --config config/train/camvid_efficientnet_lite0.yaml [--set key=value ...]
               [--out DIR] [--resume CKPT] [--ablate-lb] [--iterations N]
    torchrun --nproc_per_node N -m dcfm_ros.tools.train --config ...    # DDP (distributed.py)

Each iteration takes a batch of pairs (labeled frame x_l, label y_l, neighbour x_u) and minimises
L = L_I + lambda_B L_B + lambda_C L_C (losses.py), optionally with per-class weights on the
cross-entropies (loss.class_weights; class_weights.py). One device: plain BatchNorm, no launcher
needed; under torchrun: DistributedDataParallel (distributed.py). fp16 AMP on CUDA, bf16 autocast on
CPU when train.cpu_bf16. model.init_from starts from a checkpoint's matching weights (fine-tuning).
Every train/val label is checked at start-up (datasets/checks.py). Output directory (rank 0 only):
    config.yaml                 the resolved config (after overrides)
    log.csv                     one row per iteration: iter, lr, loss, L_I, L_B, L_C, mask, time
    eval.csv                    periodic key-frame mIoU on the val split
    last.safetensors            latest checkpoint (dcfm_ros.model format) + last.state.pt (resume)
    best.safetensors            best val mIoU so far (when a val split is configured)
    model.safetensors           final weights; model_fp16.safetensors (half) when train.save_fp16
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import json
import random
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from dcfm_ros.data.datasets import (
    DatasetSpec,
    LabeledFrames,
    dataset_spec,
    video_frames,
)
from dcfm_ros.data.datasets.checks import check_labels
from dcfm_ros.data.metrics import ConfusionMatrix
from dcfm_ros.data.transforms import ColorJitter, PairAugment
from dcfm_ros.model import DCFM, DCFMConfig, load_checkpoint, save_checkpoint, upsample_logits
from dcfm_ros.model.checkpoint import init_from_checkpoint
from dcfm_ros.training import distributed
from dcfm_ros.training.class_weights import class_pixel_counts, median_frequency_weights
from dcfm_ros.training.config import ConfigError, TrainConfig
from dcfm_ros.training.losses import TrainingObjective
from dcfm_ros.training.methods import build_training_model, normalize_frames, training_losses, training_set
from dcfm_ros.training.optim import DECODER_KEYS, PolyWarmup, build_optimizer

SHIPPED, SHIPPED_FILE = "shipped", "camvid_efficientnet_lite0.safetensors"
LOG_FIELDS = ("iter", "lr", "loss", "L_I", "L_B", "L_C", "mask_ratio", "time", "L_sim")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return dev


def init_from_path(value: str) -> Path:
    """`shipped` = the package's default model (what the node runs without a `model` parameter)."""
    if value == SHIPPED:
        return Path(str(importlib.resources.files("dcfm_ros").joinpath("models", SHIPPED_FILE)))
    return Path(value)


def train_spec(cfg: TrainConfig) -> DatasetSpec:
    d = cfg.dataset
    return dataset_spec(d.type, d.root, d.class_names, d.zero_label)


def model_config(cfg: TrainConfig) -> DCFMConfig:
    spec = train_spec(cfg)
    names = spec.class_names
    palette = tuple(tuple(c) for c in cfg.dataset.palette) if cfg.dataset.palette else spec.palette
    return DCFMConfig(backbone=cfg.model.backbone, num_classes=len(names), class_names=names,
                      palette=palette, input_size=cfg.model.input_size, head=cfg.model.head,
                      dropout=cfg.model.dropout)


def build_augment(cfg: TrainConfig, mean: tuple[float, float, float]) -> PairAugment:
    d = cfg.dataset
    return PairAugment(crop_size=d.crop_size, scale_range=d.scale_range, base_size=d.base_size,
                       hflip=d.hflip, rotate_deg=d.rotate_deg, jitter=ColorJitter(**d.jitter),
                       fill_rgb=tuple(round(m * 255) for m in mean),  # type: ignore[arg-type]
                       ignore_index=d.ignore_index)


def state_path(ckpt: str | Path) -> Path:
    """Optimizer/scheduler state saved next to a checkpoint: X.safetensors -> X.state.pt."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.name.removesuffix(".safetensors") + ".state.pt")


def _infinite(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


@torch.no_grad()
def evaluate_keyframes(model: DCFM, dataset: LabeledFrames, device: torch.device,
                       ignore_index: int = 255, stride: int = 1) -> dict[str, Any]:
    """Every evaluated frame as a keyframe (per-frame segmentation): mIoU, wIoU, per-class IoU."""
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(model.config.num_classes, ignore_index)
    for i in range(0, len(dataset), stride):
        item = dataset[i]
        x = model.normalize_input(item["image"].unsqueeze(0).to(device))
        logits = model.forward_key(x)[0]
        label = item["label"].numpy()
        pred = upsample_logits(logits, label.shape).argmax(1)[0].cpu().numpy()
        cm.update(pred, label)
    model.train(was_training)
    return cm.summary(model.config.class_names)


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path | None = None, resume: str | Path | None = None,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir if out_dir is not None else cfg.train.out_dir)
        # Under torchrun: join the process group (this rank's device); otherwise a plain single run.
        self.dist, rank_device = distributed.init(cfg.device, cfg.train.dist_timeout_min)
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        if cfg.seed is not None:
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
        self.device = rank_device if rank_device is not None else resolve_device(cfg.device)
        spec = train_spec(cfg)
        self.mcfg = model_config(cfg)
        self.model = build_training_model(cfg, self.mcfg)  # DCFM, or TFC (model.method)
        self.init_report = None
        if cfg.model.init_from is not None:
            self.init_report = init_from_checkpoint(self.model, init_from_path(cfg.model.init_from))
            self._say(self.init_report.summary())
        self.start_iter = 0
        self.best_miou = -1.0
        resume_state = None
        if resume is not None:
            resume_state = self._load_resume(Path(resume))
        self.model = distributed.apply_sync_bn(self.model, cfg.model.sync_bn, self.dist, self.device)
        self.model.to(self.device)
        self._train_mode()
        cl = cfg.train.channels_last
        self.memory_format = (torch.channels_last if (cl if cl is not None else self.device.type == "cpu")
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)

        decoder_keys = cfg.decoder_keys or DECODER_KEYS
        self.optimizer = build_optimizer(self.model, cfg.optim, decoder_keys)
        o = cfg.optim
        self.scheduler = PolyWarmup(self.optimizer, cfg.train.iterations, o.power, o.warmup_iters,
                                    o.warmup_ratio, o.min_lr_ratio)
        self.use_amp = bool(cfg.train.amp and self.device.type == "cuda")
        self.use_cpu_bf16 = bool(cfg.train.cpu_bf16 and self.device.type == "cpu")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        if resume_state is not None:
            self.optimizer.load_state_dict(resume_state["optimizer"])
            self.scheduler.load_state_dict(resume_state["scheduler"])
            if resume_state.get("scaler"):
                self.scaler.load_state_dict(resume_state["scaler"])
            self.start_iter = int(resume_state["iteration"])
            self.best_miou = float(resume_state.get("best_miou", -1.0))
            if "torch_rng" in resume_state and not self.dist.active:
                torch.set_rng_state(resume_state["torch_rng"])
        if self.dist.active and cfg.seed is not None:
            # Ranks must not replay each other's augmentations (and a resumed leg not its own).
            torch.manual_seed(cfg.seed + self.start_iter * 1009 + self.dist.rank)

        self.lut = spec.lut
        d = cfg.dataset
        self.batch_size = distributed.per_rank_batch(cfg.train.batch_size, cfg.train.batch_scope,
                                                     self.dist.world_size)
        self.global_batch = self.batch_size * self.dist.world_size
        # pairs (DCFM, TFC) or clips of earlier references (MRCFA, SD-CPC)
        self.train_set = training_set(cfg, self.model, self.lut, build_augment(cfg, self.mcfg.mean))
        if len(self.train_set) < self.global_batch:
            raise ConfigError(f"global batch {self.global_batch} ({self.dist.world_size} rank(s) x "
                              f"{self.batch_size}) > {len(self.train_set)} training pairs")
        self.val_set = None
        val_frames = []
        if d.val_split:
            val_frames = [f for v in video_frames(d.type, d.root, d.val_split).values() for f in v]
            self.val_set = LabeledFrames(val_frames, self.lut, self.mcfg.input_size)
        if d.check_labels:
            self._check_labels(spec, val_frames)
        self.class_weight = self._class_weight()
        mean = distributed.global_mean if self.dist.active else None
        self.objective = TrainingObjective(self.model, functools.partial(
            training_losses, cfg=cfg, class_weight=self.class_weight, mean=mean))
        self.step_module: torch.nn.Module = self.objective
        if self.dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.step_module = DistributedDataParallel(self.objective, device_ids=ids)

    def _say(self, text: str) -> None:
        if self.is_main:
            print(f"dcfm-train: {text}", file=sys.stderr, flush=True)

    def _train_mode(self) -> None:
        self.model.train()
        if self.cfg.model.freeze_bn:  # running statistics, not the batch's (small per-device batches)
            for m in self.model.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()

    def _check_labels(self, spec: DatasetSpec, val_frames: list) -> None:
        """Every train/val label against the class list, on rank 0; all ranks stop with its message."""
        error = None
        if self.is_main:
            d = self.cfg.dataset
            try:
                check_labels([(s.image, s.label) for s in self.train_set.samples], spec.lut,
                             self.mcfg.num_classes, spec.ignore_values, spec.convention,
                             f"{d.type} split {d.train_split!r}")
                if val_frames:
                    check_labels([(f.image, f.label) for f in val_frames if f.label is not None], spec.lut,
                                 self.mcfg.num_classes, spec.ignore_values, spec.convention,
                                 f"{d.type} split {d.val_split!r}")
            except ValueError as exc:
                error = str(exc)
        error = distributed.broadcast_error(error, self.dist)
        if error:
            raise ConfigError(error)

    def _class_weight(self) -> torch.Tensor | None:
        w = self.cfg.loss.class_weights
        n = self.mcfg.num_classes
        if w is None:
            return None
        if w == "median_frequency":
            counts, image_pixels = class_pixel_counts([s.label for s in self.train_set.samples], self.lut, n)
            w = median_frequency_weights(counts, image_pixels, self.cfg.loss.class_weight_power).tolist()
        if len(w) != n:
            raise ConfigError(f"loss.class_weights has {len(w)} weights for {n} classes")
        return torch.tensor(w, dtype=torch.float32, device=self.device)

    # --- checkpoints -------------------------------------------------------------------------------
    def _load_resume(self, ckpt: Path) -> dict:
        loaded, _ = load_checkpoint(ckpt)
        if loaded.config != self.mcfg:
            raise ConfigError(f"--resume {ckpt}: its model config differs from the YAML's "
                              f"({loaded.config.to_dict()} vs {self.mcfg.to_dict()})")
        self.model.load_state_dict(loaded.state_dict())
        sp = state_path(ckpt)
        if not sp.is_file():
            raise ConfigError(f"--resume {ckpt}: optimizer state {sp} not found (only weights?); "
                              "a weights-only file cannot be resumed (model.pretrained loads backbone "
                              "weights only)")
        return torch.load(sp, map_location="cpu", weights_only=True)

    def _extra(self, iteration: int, val: dict | None) -> dict:
        return {"iteration": iteration, "dataset": self.cfg.dataset.type,
                "val_mIoU": None if val is None else val.get("mIoU"),
                "train_config": self.cfg.to_dict()}

    def save(self, name: str, iteration: int, val: dict | None, with_state: bool = True) -> Path:
        path = self.out / name
        save_checkpoint(path, self.model, self._extra(iteration, val))
        if with_state:
            state = {
                "iteration": iteration,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.use_amp else {},
                "best_miou": self.best_miou,
                "torch_rng": torch.get_rng_state(),
            }
            tmp = state_path(path).with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(state_path(path))
        return path

    # --- loop --------------------------------------------------------------------------------------
    def evaluate(self) -> dict | None:
        if self.val_set is None:
            return None
        out = evaluate_keyframes(self.model, self.val_set, self.device, self.cfg.dataset.ignore_index,
                                 self.cfg.dataset.eval_stride)
        self._train_mode()
        return out

    def _autocast(self) -> Any:
        if self.use_amp:
            return torch.autocast("cuda", dtype=torch.float16)
        if self.use_cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def _loader(self) -> Iterator[dict]:
        t, seed = self.cfg.train, (self.cfg.seed or 0) + self.start_iter
        common = dict(batch_size=self.batch_size, drop_last=True, num_workers=t.workers,
                      pin_memory=self.device.type == "cuda", persistent_workers=t.workers > 0)
        if not self.dist.active:
            gen = torch.Generator()
            gen.manual_seed(seed)
            return _infinite(DataLoader(self.train_set, shuffle=True, generator=gen, **common))  # type: ignore[arg-type]
        # Every rank shuffles with the same seed and takes its own 1/N of each epoch.
        sampler = DistributedSampler(self.train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                                     seed=seed, drop_last=True)
        loader = DataLoader(self.train_set, sampler=sampler, **common)  # type: ignore[arg-type]

        def epochs() -> Iterator[dict]:
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from loader
                epoch += 1

        return epochs()

    def run(self) -> Path:
        try:
            return self._run()
        finally:
            distributed.shutdown(self.dist)

    def _run(self) -> Path:
        cfg, t = self.cfg, self.cfg.train
        main = self.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            resolved = cfg.to_dict()
            if self.class_weight is not None:  # the weights used, not only how they were chosen
                resolved["loss"]["class_weights_used"] = [round(float(x), 6) for x in self.class_weight]
            resolved["train"]["world_size"] = self.dist.world_size
            resolved["train"]["global_batch"] = self.global_batch
            (self.out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        batches = self._loader()
        log_path = self.out / "log.csv"
        new_log = self.start_iter == 0 or not log_path.exists()
        log_f = log_path.open("w" if new_log else "a", newline="") if main else None
        log = csv.writer(log_f) if log_f is not None else None
        if log is not None and new_log:
            log.writerow(LOG_FIELDS)
        eval_path = self.out / "eval.csv"
        clip = cfg.optim.grad_clip
        val: dict | None = None
        bar = tqdm(range(self.start_iter, t.iterations), initial=self.start_iter, total=t.iterations,
                   disable=not self.progress, dynamic_ncols=True, desc="train")
        try:
            for it in bar:
                t0 = time.perf_counter()
                batch = next(batches)
                mf = self.memory_format
                x_l = self.model.normalize_input(batch["image"].to(self.device, non_blocking=True))
                # (B, 3, H, W) neighbour, or (B, R, 3, H, W) references of a clip
                x_u = normalize_frames(self.model, batch["neighbour"].to(self.device, non_blocking=True))
                x_l = x_l.contiguous(memory_format=mf)
                x_u = x_u.contiguous(memory_format=mf) if x_u.dim() == 4 else x_u
                y_l = batch["label"].to(self.device, non_blocking=True)
                y_u = batch["neighbour_label"].to(self.device) if "neighbour_label" in batch else None
                with self._autocast():
                    terms = TrainingObjective.terms(self.step_module(x_l, y_l, x_u, y_u))
                if not torch.isfinite(terms.total):
                    raise FloatingPointError(f"loss is {float(terms.total)} at iteration {it + 1} "
                                             f"({terms.as_floats()}); lower the learning rate?")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(terms.total).backward()
                if clip:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                lr = self.optimizer.param_groups[0]["lr"]
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                dt = time.perf_counter() - t0
                f = distributed.average_floats(terms.as_floats(), self.dist, self.device)
                if log is not None and log_f is not None:
                    log.writerow([it + 1, f"{lr:.6g}", f"{f['loss']:.5f}", f"{f['L_I']:.5f}",
                                  f"{f['L_B']:.5f}", f"{f['L_C']:.6f}", f"{f['mask_ratio']:.3f}",
                                  f"{dt:.3f}", f"{f['L_sim']:.5f}"])
                    log_f.flush()
                bar.set_postfix(loss=f"{f['loss']:.3f}", L_I=f"{f['L_I']:.3f}", L_B=f"{f['L_B']:.3f}",
                                L_C=f"{f['L_C']:.4f}", s_it=f"{dt:.2f}")
                step = it + 1
                last = step == t.iterations
                if main and ((t.eval_interval and step % t.eval_interval == 0) or last):
                    val = self.evaluate()
                    if val is not None:
                        self._log_eval(eval_path, step, val)
                        miou = val["mIoU"] if val["mIoU"] is not None else -1.0
                        if miou > self.best_miou:
                            self.best_miou = miou
                            self.save("best.safetensors", step, val, with_state=False)
                if main and ((t.ckpt_interval and step % t.ckpt_interval == 0) or last):
                    self.save("last.safetensors", step, val)
        finally:
            if log_f is not None:
                log_f.close()
            bar.close()
        final = self.out / "model.safetensors"
        if main:
            save_checkpoint(final, self.model, self._extra(t.iterations, val))
            if t.save_fp16:
                save_checkpoint(self.out / "model_fp16.safetensors", self.model,
                                self._extra(t.iterations, val), half=True)
        distributed.barrier(self.dist)  # no rank reports success before rank 0's files are written
        return final

    def _log_eval(self, path: Path, step: int, val: dict) -> None:
        new = not path.exists()
        with path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["iter", "mIoU", "wIoU", "pixel_acc", "per_class_IoU"])
            w.writerow([step, val["mIoU"], val["wIoU"], val["pixel_acc"], json.dumps(val["per_class_IoU"])])
        if self.progress:
            miou = val["mIoU"]
            tqdm.write(f"[eval @ {step}] key-frame mIoU {'n/a' if miou is None else f'{100 * miou:.2f}'}"
                       f" (val split {self.cfg.dataset.val_split})")
