"""Dilated ResNet-18/50/101 + PPM split for DCFM (paper Table I, ResNet rows), pure PyTorch.

- Parameter names follow torchvision's ResNet (conv1, bn1, layer1..layer4, BasicBlock/Bottleneck with
  downsample.0/.1), so a local torchvision ImageNet file loads directly. Its `fc.*` (ImageNet
  classifier) is ignored on purpose: DCFM has its own head.
- Dilated, output stride 8 (as in the authors' code, after PSPNet): layer3 stride 1 dilation 2,
  layer4 stride 1 dilation 4. Within a dilated layer the first block's 3x3 conv that used to carry
  the stride keeps the previous dilation (its input resolution did not change) and every later 3x3
  conv uses the new one, so each pretrained filter samples the same context as in the original net.
- enc_lo = conv1/bn1/relu/maxpool + layer1: F_in = 64 (R18) / 256 (R50, R101) channels at 1/4.
- enc_hi = layer2..layer4 + PPM + "Conv" (eq. 1): PPM with pool sizes 1, 2, 3, 6, each branch
  1x1 conv-BN-ReLU to in/4 channels, upsampled and concatenated with its input, so the PPM output is
  2x the layer4 width (R18: 512 + 4*128 = 1024; R50/101: 2048 + 4*512 = 4096). The Conv maps it with
  a 1x1 conv-BN-ReLU to C_F = 5/16 of that (Table I): 320 (R18) / 1280 (R50/101), at 1/8.
- FFM takes the first 32 (R18) / 128 (R50/101) channels of F_in, resized to 1/8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.layers import DeepUnit, SplitEncoder, init_new_layers
from dcfm_ros.model.weights import LoadReport, WeightLoadError, load_into, read_state_dict

PPM_BINS = (1, 2, 3, 6)
CO_STRIDE = 8


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, first_dilation: int = 1,
                 dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=first_dilation,
                               dilation=first_dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, first_dilation: int = 1,
                 dilation: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        del dilation  # one 3x3 conv per block: it takes first_dilation
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        # torchvision v1.5: the stride sits on the 3x3 conv.
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=first_dilation,
                               dilation=first_dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_SPECS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def _make_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
                stride: int, dilation: int, previous_dilation: int) -> nn.Sequential:
    out_planes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out_planes:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_planes, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_planes),
        )
    layers: list[nn.Module] = [
        block(inplanes, planes, stride=stride, first_dilation=previous_dilation, dilation=dilation,
              downsample=downsample)
    ]
    for _ in range(1, blocks):
        layers.append(block(out_planes, planes, first_dilation=dilation, dilation=dilation))
    return nn.Sequential(*layers)


def _pool_matrix(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """(n_out, n_in) averaging weights of adaptive average pooling along one axis (its bin edges:
    floor(i * n_in / n_out) .. ceil((i + 1) * n_in / n_out))."""
    m = torch.zeros(n_out, n_in, dtype=like.dtype, device=like.device)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool(nn.Module):
    """nn.AdaptiveAvgPool2d that also exports to ONNX when the bins do not divide the map.

    ONNX has no adaptive pooling; the exporter handles only sizes that divide evenly, and a PPM's
    3x3 and 6x6 bins rarely do. While exporting (fixed shapes), the same average is written as two
    matrix products with the bin weights; otherwise the torch kernel runs. No parameters, so state
    dicts are those of nn.AdaptiveAvgPool2d.
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        if not torch.onnx.is_in_onnx_export():
            return F.adaptive_avg_pool2d(x, self.output_size)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows, cols = _pool_matrix(h, self.output_size, x), _pool_matrix(w, self.output_size, x)
        return rows @ x @ cols.t()  # (b, H) @ (B, C, H, W) @ (W, b) -> (B, C, b, b)


class PPM(nn.Module):
    """Pyramid pooling (PSPNet): input concatenated with 4 pooled, projected, upsampled branches."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = PPM_BINS) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                AdaptiveAvgPool(b),
                nn.Conv2d(in_channels, reduced, 1, bias=False),
                nn.BatchNorm2d(reduced),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outs = [x]
        for stage in self.stages:
            outs.append(F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False))
        return torch.cat(outs, dim=1)


class ResNetLo(nn.Module):
    """enc_lo: stem + layer1 -> F_in at 1/4, raw."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _make_layer(block, 64, 64, blocks, stride=1, dilation=1, previous_dilation=1)
        self.out_channels = 64 * block.expansion

    def forward(self, x: Tensor) -> Tensor:
        return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))


class ResNetHi(nn.Module):
    """enc_hi: layer2 (1/8), dilated layer3/layer4 (1/8), PPM, 1x1 conv-BN-ReLU to C_F -> F_co, raw."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], blocks: tuple[int, int, int],
                 inplanes: int) -> None:
        super().__init__()
        e = block.expansion
        self.layer2 = _make_layer(block, inplanes, 128, blocks[0], stride=2, dilation=1, previous_dilation=1)
        self.layer3 = _make_layer(block, 128 * e, 256, blocks[1], stride=1, dilation=2, previous_dilation=1)
        self.layer4 = _make_layer(block, 256 * e, 512, blocks[2], stride=1, dilation=4, previous_dilation=2)
        self.ppm = PPM(512 * e)
        self.out_channels = self.ppm.out_channels * 5 // 16  # Table I: C_F = 5/16 C_out
        self.conv_f = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, self.out_channels, 1, bias=False),
            nn.BatchNorm2d(self.out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, f_in: Tensor) -> Tensor:
        x = self.layer4(self.layer3(self.layer2(f_in)))
        return self.conv_f(self.ppm(x))

    def deep_units(self) -> list[DeepUnit]:
        """forward in pieces: one residual block each, then PPM + conv_f. State: (x,)."""
        units = [DeepUnit(f"{name}.{i}", _single(block), [block])
                 for name in ("layer2", "layer3", "layer4")
                 for i, block in enumerate(getattr(self, name))]
        tail = nn.Sequential(self.ppm, self.conv_f)
        units.append(DeepUnit("ppm+conv_f", _single(tail), [self.ppm, self.conv_f]))
        return units


def _single(module: nn.Module) -> Callable[[Tensor], tuple[Tensor]]:
    def run(x: Tensor) -> tuple[Tensor]:
        return (module(x),)
    return run


def _rename_torchvision_key(key: str) -> str | None:
    if key.startswith(("conv1.", "bn1.", "layer1.")):
        return "enc_lo." + key
    if key.startswith(("layer2.", "layer3.", "layer4.")):
        return "enc_hi." + key
    return key  # fc.* and anything foreign: ignored by prefix or reported as unexpected


def load_resnet_weights(enc_lo: nn.Module, enc_hi: nn.Module, path: str | Path) -> LoadReport:
    """Load a torchvision-layout ResNet state dict into the split (fc ignored, PPM/conv_f kept new)."""
    state = read_state_dict(path)
    both = nn.ModuleDict({"enc_lo": enc_lo, "enc_hi": enc_hi})
    return load_into(
        both, state, str(path),
        rename=_rename_torchvision_key,
        ignore_prefixes=("fc.",),
        target="the ResNet backbone (torchvision key layout)",
        allow_missing_prefixes=("enc_hi.ppm.", "enc_hi.conv_f."),
    )


def build_resnet(name: str, pretrained: str | Path | None = None) -> SplitEncoder:
    """Dilated ResNet `name` ("resnet18" | "resnet50" | "resnet101") as a SplitEncoder.

    pretrained: None = random init; a local torchvision ImageNet state-dict file (.pth/.safetensors).
    """
    if name not in _SPECS:
        raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(_SPECS)}")
    block, layers = _SPECS[name]
    enc_lo = ResNetLo(block, layers[0])
    enc_hi = ResNetHi(block, layers[1:], enc_lo.out_channels)
    init_new_layers(enc_lo)
    init_new_layers(enc_hi)
    if pretrained is not None:
        if str(pretrained) == "package":
            raise WeightLoadError(f"no packaged weights for {name}; pass the path of a local torchvision "
                                  "ImageNet file (e.g. resnet18-f37072fd.pth)")
        load_resnet_weights(enc_lo, enc_hi, Path(pretrained))
    lo = enc_lo.out_channels
    return SplitEncoder(
        enc_lo=enc_lo, enc_hi=enc_hi, lo_channels=lo, co_channels=enc_hi.out_channels,
        co_stride=CO_STRIDE, ffm_lo_channels=32 if block is BasicBlock else 128,
    )
