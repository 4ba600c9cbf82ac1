"""DCFM network: split encoder (enc_lo / enc_hi), feature fusion module (FFM) and segmentation head.

Paper Section III-A, Fig. 3:
    keyframe:      F_in = enc_lo(x), F_co = enc_hi(F_in), F = FFM(Norm(F_co), Norm(F_in)), y = head(F)
    non-key frame: F_in = enc_lo(x), F_co reused from the last keyframe,   F = FFM(...),   y = head(F)
Keyframes go through the FFM too, so one head serves both kinds of frame.

F_co crosses the key/non-key boundary raw (un-normalised): `forward_key` returns the raw enc_hi
output and `forward_nonkey` expects exactly that back; the FFM applies Norm itself. Keeping the
cache raw means `enc_hi(F_in)` is the only thing that produces it, whoever calls the stages.

Inference engines cache `ffm.common_part(F_co)` instead of F_co and run `ffm.fuse_with_common` on
non-key frames: the exact split of the FFM's 1x1 conv that leaves only the F_in half to compute on a
non-key frame (see FFM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcfm_ros.model.config import DCFMConfig
from dcfm_ros.model.layers import DeepUnit, SplitEncoder, init_new_layers


def l2_normalize(x: Tensor) -> Tensor:
    """Norm in the paper: L2 over channels (`F.normalize(p=2, dim=1)`).

    Computed in float32 and cast back: in float16 the sum of squares overflows above ~256 and the
    default eps (1e-12) underflows to 0, which turns an all-zero pixel (common after ReLU) into NaN.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), p=2.0, dim=1).to(x.dtype)
    return F.normalize(x, p=2.0, dim=1)


class FFM(nn.Module):
    """Feature fusion module (Fig. 3b): Norm both, concat F_co with the first `lo_take` channels of
    F_in resized to F_co's size, 1x1 conv (bias) -> BN -> ReLU back to the common width, Norm.

    Only a slice of the shallow feature is used ("half of the independent feature") so the fused
    feature stays dominated by the reusable common part while still carrying frame-specific detail.

    Split form for inference (`common_part` + `fuse_with_common`): a 1x1 conv over a channel
    concatenation is exactly the sum of two 1x1 convs with the matching weight slices,
        conv(cat[a, b]) = W_co * a + W_in * b + bias,   W_co = weight[:, :C_co], W_in = weight[:, C_co:].
    On a non-key frame F_co is the keyframe's, unchanged, so `common = W_co * Norm(F_co) + bias` is
    computed once per keyframe and cached; each frame then pays only the small W_in conv over
    `lo_take` channels (e.g. 32 instead of 800 input channels for MiT-B2) plus an add, BN, ReLU, Norm.
    It is the same arithmetic as `forward` up to float rounding (summation order). `forward` stays
    the one-shot form used in training; both read the same parameters, so the state dict is unchanged.
    """

    def __init__(self, co_channels: int, lo_channels: int, lo_take: int) -> None:
        super().__init__()
        if not 0 < lo_take <= lo_channels:
            raise ValueError(f"FFM: lo_take must be in 1..{lo_channels}, got {lo_take}")
        self.co_channels = co_channels
        self.lo_channels = lo_channels
        self.lo_take = lo_take
        self.conv = nn.Conv2d(co_channels + lo_take, co_channels, kernel_size=1, bias=True)
        self.bn = nn.BatchNorm2d(co_channels)
        self.relu = nn.ReLU(inplace=True)
        init_new_layers(self)

    def _independent(self, f_in: Tensor, size: torch.Size) -> Tensor:
        """Norm(F_in), its leading `lo_take` channels, resized to F_co's (h, w)."""
        # Norm over all channels of F_in first (as the paper writes it), then keep the leading slice;
        # slicing before the resize is equivalent (bilinear is per channel) and cheaper.
        f_in = l2_normalize(f_in)[:, : self.lo_take]
        if f_in.shape[-2:] != size:
            f_in = F.interpolate(f_in, size=size, mode="bilinear", align_corners=False)
        return f_in

    def _finish(self, f: Tensor) -> Tensor:
        return l2_normalize(self.relu(self.bn(f)))

    def forward(self, f_co: Tensor, f_in: Tensor) -> Tensor:
        f_co = l2_normalize(f_co)
        f_in = self._independent(f_in, f_co.shape[-2:])
        return self._finish(self.conv(torch.cat([f_co, f_in.to(f_co.dtype)], dim=1)))

    def common_part(self, f_co: Tensor) -> Tensor:
        """W_co * Norm(F_co) + bias, (B, C_co, h, w): the keyframe-only half of the FFM conv.

        `f_co` is the raw enc_hi output; cache the result for the frames that reuse this F_co.
        """
        if f_co.dim() != 4 or f_co.shape[1] != self.co_channels:
            raise ValueError(f"FFM.common_part: f_co must be (B, {self.co_channels}, h, w), "
                             f"got shape {tuple(f_co.shape)}")
        w_co = self.conv.weight[:, : self.co_channels]
        return F.conv2d(l2_normalize(f_co), w_co, self.conv.bias)

    def fuse_with_common(self, common: Tensor, f_in: Tensor) -> Tensor:
        """F from a cached `common_part(F_co)` and the current frame's F_in; equals forward(F_co, F_in).

        Only the W_in conv over `lo_take` channels runs here. `common` is not modified.
        """
        if common.dim() != 4 or common.shape[1] != self.co_channels:
            raise ValueError(f"FFM.fuse_with_common: common must be (B, {self.co_channels}, h, w) as "
                             f"returned by common_part, got shape {tuple(common.shape)}")
        if f_in.dim() != 4 or f_in.shape[1] != self.lo_channels or f_in.shape[0] != common.shape[0]:
            raise ValueError(f"FFM.fuse_with_common: f_in must be ({common.shape[0]}, {self.lo_channels}, "
                             f"H, W) to match common, got shape {tuple(f_in.shape)}")
        f_in = self._independent(f_in, common.shape[-2:])
        w_in = self.conv.weight[:, self.co_channels :]
        f = F.conv2d(f_in.to(w_in.dtype), w_in)
        # `f` is a fresh tensor: add in place (saves a C_co x h x w allocation per frame) unless the
        # dtypes differ (e.g. an fp32 cache used under autocast), where the out-of-place add promotes.
        f = f.add_(common) if f.dtype == common.dtype else f + common
        return self._finish(f)


class ConvHead(nn.Module):
    """1x1 conv-BN-ReLU-Dropout2d-1x1 conv (the authors' Cityscapes/CamVid decoder)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, kernel_size=1)
        init_new_layers(self)
        nn.init.normal_(self.cls.weight, std=0.01)

    def forward(self, f: Tensor) -> Tensor:
        return self.cls(self.drop(self.relu(self.bn(self.conv(f)))))


class LinearHead(nn.Module):
    """Dropout2d + 1x1 conv (the authors' VSPW decoder)."""

    def __init__(self, channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.cls.weight, std=0.01)
        nn.init.zeros_(self.cls.bias)

    def forward(self, f: Tensor) -> Tensor:
        return self.cls(self.drop(f))


def build_head(kind: str, channels: int, num_classes: int, dropout: float) -> nn.Module:
    if kind == "conv":
        return ConvHead(channels, num_classes, dropout)
    if kind == "linear":
        return LinearHead(channels, num_classes, dropout)
    raise ValueError(f"unknown head {kind!r}; expected 'conv' or 'linear'")


class DCFM(nn.Module):
    """The DCFM network. Modules: `enc_lo`, `enc_hi`, `ffm`, `head` (each callable on its own)."""

    model_class = "DCFM"  # written into checkpoints (dcfm_ros.model.checkpoint)
    default_blend = "none"  # what nonkey_blend "auto" stands for: DCFM does not blend
    unit_feature = True  # F leaves the FFM L2-normalised (Norm)

    def __init__(self, config: DCFMConfig, encoder: SplitEncoder) -> None:
        super().__init__()
        self.config = config
        self.enc_lo = encoder.enc_lo
        self.enc_hi = encoder.enc_hi
        self.lo_channels = encoder.lo_channels
        self.co_channels = encoder.co_channels
        self.co_stride = encoder.co_stride
        self.ffm_lo_channels = encoder.ffm_lo_channels
        self.ffm = FFM(encoder.co_channels, encoder.lo_channels, encoder.ffm_lo_channels)
        self.head = build_head(config.head, encoder.co_channels, config.num_classes, config.dropout)
        # Not persistent: the config holds mean/std, the checkpoint holds only learned tensors.
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def normalize_input(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) uint8 0..255 or float 0..1 RGB -> mean/std normalised float.

        uint8 becomes float32; a float input keeps its dtype (e.g. float16 on a GPU).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"normalize_input expects (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.to(self.pixel_mean.dtype) / 255.0
        elif not x.is_floating_point():
            raise ValueError(f"normalize_input expects uint8 or a float tensor in 0..1, got {x.dtype}")
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def forward_key(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Keyframe. x: (B, 3, H, W) normalised.

        Returns (logits at F's resolution, F_co raw = enc_hi output before Norm, F fused).
        Cache F_co and hand it back unchanged to `forward_nonkey`.
        """
        f_in = self.enc_lo(x)
        f_co = self.enc_hi(f_in)
        f = self.ffm(f_co, f_in)
        return self.head(f), f_co, f

    def forward_nonkey(self, x: Tensor, f_co: Tensor) -> tuple[Tensor, Tensor]:
        """Non-key frame: only enc_lo runs; `f_co` is a keyframe's raw F_co. Returns (logits, F)."""
        if f_co.dim() != 4 or f_co.shape[1] != self.co_channels:
            raise ValueError(f"forward_nonkey: f_co must be (B, {self.co_channels}, h, w) as returned by "
                             f"forward_key, got shape {tuple(f_co.shape)}")
        f_in = self.enc_lo(x)
        if f_co.shape[0] != f_in.shape[0]:
            raise ValueError(f"forward_nonkey: f_co batch {f_co.shape[0]} != input batch {f_in.shape[0]}")
        f = self.ffm(f_co, f_in)
        return self.head(f), f

    def similarity_feature(self, f_in: Tensor) -> Tensor:
        """The feature the cosine blend and the feature policy compare: F_in itself."""
        return f_in

    def deep_units(self) -> list[DeepUnit]:
        """`enc_hi` cut into its blocks, for engines that spread a keyframe's deep pass over time:
        run_deep_units(model.deep_units(), (F_in,)) == (model.enc_hi(F_in),). A backbone without
        pieces of its own is one piece."""
        units = getattr(self.enc_hi, "deep_units", None)
        if units is None:
            return [DeepUnit("enc_hi", lambda f_in: (self.enc_hi(f_in),), [self.enc_hi])]
        return units()

    def forward(self, x: Tensor, f_co: Tensor | None = None) -> Tensor:
        """Logits upsampled bilinearly to x's size: keyframe path if f_co is None, else non-key."""
        logits = self.forward_key(x)[0] if f_co is None else self.forward_nonkey(x, f_co)[0]
        return upsample_logits(logits, x.shape[-2:])


def upsample_logits(logits: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear (align_corners=False) resize of logits to `size` = (H, W); a no-op if already there."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
