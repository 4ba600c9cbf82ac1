"""Optimiser, parameter groups and the poly-with-warm-up schedule (paper Table I).

Parameter split ("encoder" vs "decoder" learning rates):
- encoder: `enc_lo` and `enc_hi`, EXCEPT the parts of `enc_hi` that are decoder layers (randomly
  initialised, not ImageNet-pretrained): for MiT the SegFormer all-MLP decoder that produces the common
  feature, for ResNet the PPM and the 1x1 reduction conv, for EfficientNet-Lite0 its all-MLP fuse
  (`enc_hi.proj`, `enc_hi.fuse`). They are recognised by the name of enc_hi's direct sub-module
  (`DECODER_KEYS`, overridable from the YAML as optim.decoder_keys).
- decoder: `ffm`, `head` and the decoder parts of `enc_hi`.
Transformers (mit-*) use AdamW (enc 6e-5, dec 10x), CNNs (resnet*, efficientnet-lite0) SGD with
momentum 0.9 and weight decay 5e-4 (enc 1e-2, dec 2e-2 as Table I's CamVid column).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

# Names of enc_hi's direct sub-modules that are decoder layers (see module doc). Matched exactly
# against the first name under enc_hi, never as fragments: MiT blocks have their own "proj" layers.
DECODER_KEYS: tuple[str, ...] = (
    "proj", "fuse", "decode", "decoder", "linear_c", "linear_fuse", "ppm", "psp", "bottleneck",
    "reduce", "conv_co", "neck",
)


def is_transformer(backbone: str) -> bool:
    return backbone.startswith("mit-")


def default_optim(backbone: str) -> dict:
    """Table I defaults for a backbone family (the YAML overrides any of them)."""
    if is_transformer(backbone):
        return {"type": "adamw", "lr_encoder": 6e-5, "lr_decoder": 6e-4, "weight_decay": 0.01,
                "betas": [0.9, 0.999], "momentum": 0.9, "power": 1.0}
    return {"type": "sgd", "lr_encoder": 1e-2, "lr_decoder": 2e-2, "weight_decay": 5e-4,
            "betas": [0.9, 0.999], "momentum": 0.9, "power": 0.9}


def _is_decoder_name(name: str, keys: Iterable[str]) -> bool:
    """`name` is relative to enc_hi, e.g. "fuse.0.weight" (decoder) or "blocks.3.conv.weight"."""
    return name.split(".", 1)[0] in keys


def split_parameters(model: nn.Module, decoder_keys: Iterable[str] = DECODER_KEYS
                     ) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(encoder, decoder) named trainable parameters as described in the module doc."""
    keys = tuple(decoder_keys)
    enc, dec = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        top = name.split(".", 1)[0]
        if top == "enc_lo":
            enc.append((name, p))
        elif top == "enc_hi":
            (dec if _is_decoder_name(name.split(".", 1)[1], keys) else enc).append((name, p))
        else:  # ffm, head, anything new the model adds after the encoder
            dec.append((name, p))
    if not enc or not dec:
        raise ValueError(f"could not split the model into encoder ({len(enc)}) and decoder ({len(dec)}) "
                         "parameters; does it have enc_lo/enc_hi/ffm/head?")
    return enc, dec


@dataclass
class OptimConfig:
    type: str = "sgd"  # "sgd" | "adamw"
    lr_encoder: float = 1e-2
    lr_decoder: float = 2e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    power: float = 0.9  # poly exponent
    warmup_iters: int = 0
    warmup_ratio: float = 1e-1  # lr factor at iteration 0 of the warm-up
    min_lr_ratio: float = 0.0  # floor of the poly factor
    grad_clip: float | None = None  # max global grad norm; None/0 = off
    no_decay_norm_bias: bool | None = None  # None: True for AdamW (SegFormer practice), False for SGD

    def __post_init__(self) -> None:
        self.type = str(self.type).lower()
        if self.type not in ("sgd", "adamw"):
            raise ValueError(f"optim.type must be 'sgd' or 'adamw', got {self.type!r}")
        for k in ("lr_encoder", "lr_decoder"):
            if not float(getattr(self, k)) > 0:
                raise ValueError(f"optim.{k} must be > 0, got {getattr(self, k)!r}")
        if self.warmup_iters < 0 or self.power <= 0:
            raise ValueError("optim.warmup_iters must be >= 0 and optim.power > 0")
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    decoder_keys: Iterable[str] = DECODER_KEYS) -> torch.optim.Optimizer:
    """Parameter groups tagged with `base_lr` (the schedule scales it) and a `name`."""
    enc, dec = split_parameters(model, decoder_keys)
    no_decay = cfg.no_decay_norm_bias if cfg.no_decay_norm_bias is not None else cfg.type == "adamw"
    groups = []
    for gname, params, lr in (("encoder", enc, cfg.lr_encoder), ("decoder", dec, cfg.lr_decoder)):
        if no_decay:
            # 1-D tensors are biases and norm scales: decaying them only hurts (SegFormer recipe).
            decay = [p for _, p in params if p.ndim > 1]
            rest = [p for _, p in params if p.ndim <= 1]
            for suffix, ps, wd in (("", decay, cfg.weight_decay), ("_no_decay", rest, 0.0)):
                if ps:
                    groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd,
                                   "name": gname + suffix})
        else:
            groups.append({"params": [p for _, p in params], "lr": lr, "base_lr": lr,
                           "weight_decay": cfg.weight_decay, "name": gname})
    if cfg.type == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr_encoder, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr_encoder, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


class PolyWarmup:
    """lr = base_lr * factor(it): linear warm-up from `warmup_ratio` to 1, then (1 - it/max)^power.

    The state is the iteration counter only, so it saves as primitives (weights_only loading).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, power: float = 0.9,
                 warmup_iters: int = 0, warmup_ratio: float = 0.1, min_lr_ratio: float = 0.0) -> None:
        if max_iters < 1:
            raise ValueError(f"max_iters must be >= 1, got {max_iters}")
        self.optimizer = optimizer
        self.max_iters = int(max_iters)
        self.power = float(power)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.min_lr_ratio = float(min_lr_ratio)
        self.last_iter = 0
        self._apply()

    def factor(self, it: int) -> float:
        poly = max(1.0 - it / self.max_iters, 0.0) ** self.power
        poly = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * poly
        if it < self.warmup_iters:
            warm = self.warmup_ratio + (1.0 - self.warmup_ratio) * it / self.warmup_iters
            return warm * poly
        return poly

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter, "max_iters": self.max_iters}

    def load_state_dict(self, state: dict) -> None:
        self.last_iter = int(state["last_iter"])
        self._apply()
