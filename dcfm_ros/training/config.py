"""Training configuration: YAML file -> validated dataclasses, with `--set key=value` overrides.

YAML layout (every key optional unless marked; see config/train/*.yaml):

    seed: 0                  # fixed seed (torch, numpy, random); null = do not seed
    device: cpu              # cpu | cuda | cuda:N | auto
    threads: 2               # torch.set_num_threads; null = leave PyTorch's default
    model:
      backbone: efficientnet-lite0   # REQUIRED: which DCFM model is built
      pretrained: package    # "package" (efficientnet-lite0 only), a local weight file, or null
      input_size: [360, 480] # REQUIRED (H, W) the network runs at in evaluation / deployment
      head: conv             # conv | linear
      dropout: 0.1
      init_from: null        # fine-tuning: a dcfm_ros .safetensors, or `shipped` (the package's model);
                             # weights whose name and shape match are loaded, the rest keep their fresh
                             # initialisation (listed at start-up)
      sync_bn: false         # SyncBatchNorm under torchrun with N > 1 GPUs; one device: plain BN
      freeze_bn: false       # BatchNorm layers use their running statistics (eval mode) while training
    dataset:
      type: camvid           # REQUIRED: camvid | cityscapes | vspw | folder (your own recordings)
      root: /path            # REQUIRED
      train_split: train     # CamVid also accepts "train+val"
      val_split: val         # null = no periodic evaluation
      crop_size: [288, 384]  # (H, W) training crop
      scale_range: [0.5, 2.0]
      base_size: null        # (H, W) the scale factors refer to; null = the image's own size
      rotate_deg: 10
      hflip: true
      jitter: {brightness: 0.1, contrast: 0.1, saturation: 0.1}
      ignore_index: 255
      class_names: [...]     # default: the dataset's; stored in the checkpoint (folder: classes.yaml only)
      palette: [[R, G, B], ...]
      eval_stride: 1         # periodic evaluation on every n-th val frame (speed)
      neighbour_offsets: [-1, 1]  # folder only: frames (labeled or not) that may be x_u, relative to x_l
      zero_label: null       # vspw with your own class_names: `others` (VSPW: 0 ignored, v -> class v-1)
                             # or `class` (v -> class v); REQUIRED then, VSPW's own 124 classes: others
      check_labels: true     # scan every train/val label at start-up (values, sizes) before training
    loss:
      lambda_b: 0.4          # 0 = the ablation without L_B (also: dcfm-train --ablate-lb)
      lambda_c: 10.0         # default per dataset from Table I
      class_weights: null    # null | median_frequency (from the training labels) | [w_0, ..., w_C-1]
      class_weight_power: 1.0  # median_frequency weights ** power (0.5 = square root: softer); not on a list
    optim:                   # defaults per backbone family (optim.default_optim), any key overrides
      type: sgd              # sgd | adamw
      lr_encoder: 0.01
      lr_decoder: 0.02
      momentum: 0.9
      weight_decay: 0.0005
      betas: [0.9, 0.999]
      power: 0.9
      warmup_iters: 50
      warmup_ratio: 0.1
      min_lr_ratio: 0.0
      grad_clip: 10.0        # max global grad norm; null/0 = off
      no_decay_norm_bias: null
      decoder_keys: null     # names of enc_hi sub-modules on the decoder LR (default optim.DECODER_KEYS)
    train:
      iterations: 700
      batch_size: 8
      workers: 1
      batch_scope: rank      # under torchrun: rank = batch_size per process; global = split over ranks
      dist_timeout_min: 30   # how long a rank waits for the others in a collective (torchrun)
      eval_interval: 250     # 0 = only at the end
      ckpt_interval: 250     # 0 = only at the end
      out_dir: runs/camvid_efficientnet_lite0   # log.csv, checkpoints, config copy
      save_fp16: true        # final model also as model_fp16.safetensors (half precision)
      amp: true              # mixed precision on CUDA (fp16 autocast + grad scaling)
      cpu_bf16: false        # bf16 autocast on CPU (pays off on CPUs with AMX / AVX512-BF16)
      channels_last: null    # NHWC memory format; null = on for CPU (faster oneDNN convs), off on CUDA
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dcfm_ros.training.optim import OptimConfig, default_optim

# Table I: (lambda_B, lambda_C) per dataset.
LOSS_DEFAULTS: dict[str, tuple[float, float]] = {
    "camvid": (0.4, 10.0), "cityscapes": (0.4, 10.0), "vspw": (0.2, 5.0),
    "folder": (0.4, 10.0),  # your own driving-like recordings: the CamVid/Cityscapes column
}
DATASET_TYPES = tuple(LOSS_DEFAULTS)
METHODS = ("dcfm", "tfc", "mrcfa", "sdcpc")


class ConfigError(ValueError):
    """The training YAML (or an override) is wrong; the message names the key."""


def _pair(value: Any, key: str, kind: type = int) -> tuple:
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key} must be a pair of {kind.__name__}s, got {value!r}") from exc
    if len(out) != 2:
        raise ConfigError(f"{key} must be a pair, got {value!r}")
    return out


@dataclass
class ModelSection:
    backbone: str
    input_size: tuple[int, int]
    pretrained: str | None = None
    head: str = "conv"
    dropout: float = 0.1
    init_from: str | None = None
    sync_bn: bool = False
    freeze_bn: bool = False
    method: str = "dcfm"  # "dcfm" | "tfc" | "mrcfa" | "sdcpc" (the comparison methods, dcfm_ros.model)
    options: dict[str, Any] = field(default_factory=dict)  # mrcfa/sdcpc switches (e.g. {sar: false})

    def __post_init__(self) -> None:
        self.input_size = _pair(self.input_size, "model.input_size")  # type: ignore[assignment]
        if self.method not in METHODS:
            raise ConfigError(f"model.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not isinstance(self.options, dict):
            raise ConfigError(f"model.options must be a mapping, got {self.options!r}")
        if self.options and self.method not in ("mrcfa", "sdcpc"):
            raise ConfigError("model.options are for model.method mrcfa or sdcpc")
        if self.pretrained is not None:
            self.pretrained = str(self.pretrained)
        if self.init_from is not None:
            self.init_from = str(self.init_from)


@dataclass
class DatasetSection:
    type: str
    root: str
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: tuple[int, int] = (512, 512)
    scale_range: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None
    rotate_deg: float = 10.0
    hflip: bool = True
    jitter: dict[str, float] = field(default_factory=lambda: {"brightness": 0.1, "contrast": 0.1,
                                                                "saturation": 0.1})
    ignore_index: int = 255
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    eval_stride: int = 1
    neighbour_offsets: list[int] | None = None
    zero_label: str | None = None
    check_labels: bool = True

    def __post_init__(self) -> None:
        self.type = str(self.type).lower()
        if self.type not in DATASET_TYPES:
            raise ConfigError(f"dataset.type must be one of {DATASET_TYPES}, got {self.type!r}")
        self.root = str(self.root)
        self.crop_size = _pair(self.crop_size, "dataset.crop_size")  # type: ignore[assignment]
        self.scale_range = _pair(self.scale_range, "dataset.scale_range", float)  # type: ignore[assignment]
        if self.base_size is not None:
            self.base_size = _pair(self.base_size, "dataset.base_size")  # type: ignore[assignment]
        unknown = set(self.jitter) - {"brightness", "contrast", "saturation"}
        if unknown:
            raise ConfigError(f"dataset.jitter has unknown keys {sorted(unknown)}")
        if self.eval_stride < 1:
            raise ConfigError("dataset.eval_stride must be >= 1")
        if self.neighbour_offsets is not None:
            if self.type != "folder":
                raise ConfigError("dataset.neighbour_offsets is for dataset.type folder only (the other "
                                  "layouts have fixed neighbours)")
            try:
                self.neighbour_offsets = [int(o) for o in self.neighbour_offsets]
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"dataset.neighbour_offsets: a list of frame offsets expected, got "
                                  f"{self.neighbour_offsets!r}") from exc
            if not self.neighbour_offsets or 0 in self.neighbour_offsets:
                raise ConfigError(f"dataset.neighbour_offsets must be non-zero frame offsets, e.g. "
                                  f"[-2, -1, 1, 2]; got {self.neighbour_offsets!r}")
        if self.zero_label is not None:
            if self.type != "vspw":
                raise ConfigError("dataset.zero_label is for dataset.type vspw only (folder: index 0 is "
                                  "the first name of classes.yaml)")
            if self.zero_label not in ("others", "class"):
                raise ConfigError(f"dataset.zero_label must be 'others' or 'class', got {self.zero_label!r}")
        if self.type == "folder" and (self.class_names or self.palette):
            raise ConfigError("dataset.type folder takes its class names and palette from ROOT/classes.yaml; "
                              "remove dataset.class_names / dataset.palette")


@dataclass
class LossSection:
    lambda_b: float | None = None  # None: Table I value for the dataset
    lambda_c: float | None = None
    class_weights: str | list[float] | None = None  # None | "median_frequency" | one weight per class
    class_weight_power: float = 1.0  # exponent on median-frequency weights; a given list is used as it is
    lambda_sim: float = 0.0  # TFC's focal BCE on the shallow-feature similarity (needs labeled neighbours)
    lambda_cr: float = 0.0  # SD-CPC's prototype contrastive loss L_CR (eq. 7 lambda_1)
    lambda_mf: float = 0.0  # SD-CPC's multivariate decorrelation L_MF (eq. 7 lambda_2)
    tau: float = 0.1  # SD-CPC's contrastive temperature (eq. 5)

    def __post_init__(self) -> None:
        for k in ("lambda_cr", "lambda_mf", "tau"):
            try:
                setattr(self, k, float(getattr(self, k)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"loss.{k}: a number expected, got {getattr(self, k)!r}") from exc
        if self.lambda_cr < 0 or self.lambda_mf < 0 or not self.tau > 0:
            raise ConfigError("loss.lambda_cr / lambda_mf must be >= 0 and loss.tau > 0")
        if float(self.lambda_sim) < 0:
            raise ConfigError(f"loss.lambda_sim must be >= 0, got {self.lambda_sim!r}")
        self.lambda_sim = float(self.lambda_sim)
        for k in ("lambda_b", "lambda_c"):
            v = getattr(self, k)
            if v is not None and float(v) < 0:
                raise ConfigError(f"loss.{k} must be >= 0, got {v!r}")
        power = self.class_weight_power
        try:
            self.class_weight_power = float(power)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"loss.class_weight_power: a number expected, got {power!r}") from exc
        if self.class_weight_power <= 0:
            raise ConfigError(f"loss.class_weight_power must be > 0, got {power!r}")
        w = self.class_weights
        if isinstance(w, str):
            if w != "median_frequency":
                raise ConfigError(f"loss.class_weights must be null, median_frequency or a list of numbers, "
                                  f"got {w!r}")
        elif w is not None:
            try:
                self.class_weights = [float(x) for x in w]
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"loss.class_weights: a list of numbers expected, got {w!r}") from exc
            if any(x < 0 for x in self.class_weights) or not any(x > 0 for x in self.class_weights):
                raise ConfigError(f"loss.class_weights must be >= 0 with at least one > 0, got {w!r}")


@dataclass
class TrainSection:
    iterations: int = 1000
    batch_size: int = 8
    workers: int = 1
    batch_scope: str = "rank"
    dist_timeout_min: float = 30.0
    eval_interval: int = 0
    ckpt_interval: int = 0
    out_dir: str = "runs/train"
    save_fp16: bool = True
    amp: bool = True
    cpu_bf16: bool = False
    channels_last: bool | None = None  # None: on for CPU (oneDNN convs are faster in NHWC), off on CUDA

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1 or self.workers < 0:
            raise ConfigError("train.iterations and train.batch_size must be >= 1, train.workers >= 0")
        if self.batch_scope not in ("rank", "global"):
            raise ConfigError(f"train.batch_scope must be 'rank' or 'global', got {self.batch_scope!r}")
        if not float(self.dist_timeout_min) > 0:
            raise ConfigError("train.dist_timeout_min must be > 0")


@dataclass
class TrainConfig:
    model: ModelSection
    dataset: DatasetSection
    loss: LossSection
    optim: OptimConfig
    train: TrainSection
    decoder_keys: list[str] | None = None
    seed: int | None = 0
    device: str = "auto"
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        opt = d.pop("optim")
        opt["decoder_keys"] = d.pop("decoder_keys")
        d["optim"] = opt
        return _plain(d)


def _plain(x: Any) -> Any:
    """Tuples -> lists so the dict dumps as plain YAML/JSON."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, data: Any, section: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in {section!r}: {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return cls(**data)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"section {section!r}: {exc}") from exc


def apply_override(raw: dict, assignment: str) -> None:
    """`a.b.c=value` (value parsed as YAML: numbers, lists, null, true) into the raw config dict."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set has an empty key: {assignment!r}")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        node = nxt
    node[parts[-1]] = yaml.safe_load(text)


def config_from_dict(raw: dict) -> TrainConfig:
    raw = copy.deepcopy(raw)
    allowed = {"model", "dataset", "loss", "optim", "train", "seed", "device", "threads"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    for req in ("model", "dataset"):
        if req not in raw:
            raise ConfigError(f"the config needs a {req!r} section")
    for req in ("backbone", "input_size"):
        if req not in (raw["model"] or {}):
            raise ConfigError(f"model.{req} is required (the config must say which model is built)")
    for req in ("type", "root"):
        if req not in (raw["dataset"] or {}):
            raise ConfigError(f"dataset.{req} is required")
    model = _build(ModelSection, raw["model"], "model")
    dataset = _build(DatasetSection, raw["dataset"], "dataset")
    loss = _build(LossSection, raw.get("loss"), "loss")
    lb, lc = LOSS_DEFAULTS[dataset.type]
    loss.lambda_b = float(lb if loss.lambda_b is None else loss.lambda_b)
    loss.lambda_c = float(lc if loss.lambda_c is None else loss.lambda_c)
    opt_raw = dict(raw.get("optim") or {})
    decoder_keys = opt_raw.pop("decoder_keys", None)
    optim = _build(OptimConfig, {**default_optim(model.backbone), **opt_raw}, "optim")
    train = _build(TrainSection, raw.get("train"), "train")
    threads = raw.get("threads")
    if threads is not None and int(threads) < 1:
        raise ConfigError("threads must be >= 1 or null")
    seed = raw.get("seed", 0)
    return TrainConfig(model=model, dataset=dataset, loss=loss, optim=optim, train=train,
                       decoder_keys=list(decoder_keys) if decoder_keys else None,
                       seed=None if seed is None else int(seed), device=str(raw.get("device", "auto")),
                       threads=None if threads is None else int(threads))


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for o in overrides or []:
        apply_override(raw, o)
    return config_from_dict(raw)
