"""`nonkey_blend`: TFC's cosine blend (eq. 7) as an engine option for any model, and the similarity
map the feature keyframe policy decides on.

At a non-key frame t, with k the last keyframe:
    w = clamp(cos(s_k, s_t), 0, 1) per pixel, s = similarity_feature(model, F_in) (DCFM: enc_lo's F_in;
        TFC: its projected level-2 feature), the shallow feature enc_lo computes on every frame anyway;
    target "feature": F'_t = w * F_k + (1 - w) * F_t before the head (TFC's place, on z); for DCFM,
        whose F leaves the FFM L2-normalised, F'_t is normalised again (Norm), so the head sees a
        feature of the kind it was trained on (a mix of two unit vectors is shorter than either);
    target "logits":  y'_t = w * y_k + (1 - w) * y_t after it.
Where the shallow feature has not changed since the keyframe the keyframe's prediction is kept, so
flicker between reuse errors and fresh detail is damped; where it has changed, the current frame
wins. It has no parameters, so it works on a trained DCFM as it is.

Spec strings: "none", "cosine" (= DEFAULT_TARGET), "cosine:feature", "cosine:logits", and "auto"
(the model's own `default_blend`, "none" for DCFM, "cosine:feature" for TFC).
DEFAULT_TARGET ("cosine" = "cosine:logits") was chosen on the CamVid val clip with the shipped DCFM
(README, "TFC and the cosine blend"): at K=2, K=5 and with the motion policy it kept more mIoU and
gained more mVC_8 than the feature blend.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dcfm_ros.model.dcfm import l2_normalize
from dcfm_ros.model.similarity import (
    blend_by_similarity,
    cosine_similarity_map,
    low_similarity_share,
    similarity_feature,
)

KINDS = ("none", "cosine")
TARGETS = ("feature", "logits")
DEFAULT_TARGET = "logits"


@dataclass(frozen=True)
class BlendSpec:
    kind: str = "none"  # none | cosine
    target: str = DEFAULT_TARGET  # feature | logits (only for cosine)

    @property
    def enabled(self) -> bool:
        return self.kind == "cosine"

    def __str__(self) -> str:
        return "none" if not self.enabled else f"cosine:{self.target}"


def parse_blend(text: str | BlendSpec | None, model: nn.Module | None = None) -> BlendSpec:
    """Spec string -> BlendSpec; a bad string is a ValueError that lists the valid ones."""
    if isinstance(text, BlendSpec):
        return text
    if text is None or str(text).strip().lower() in ("", "auto"):
        text = getattr(model, "default_blend", "none")
    parts = str(text).strip().lower().split(":")
    kind = parts[0]
    target = parts[1] if len(parts) == 2 else DEFAULT_TARGET
    if kind not in KINDS or len(parts) > 2 or target not in TARGETS or (kind == "none" and len(parts) > 1):
        raise ValueError(f"nonkey_blend must be auto, none, cosine, cosine:feature or cosine:logits, "
                         f"got {text!r}")
    return BlendSpec(kind, target)


@dataclass(frozen=True)
class KeyReference:
    """What a keyframe leaves for the blend and the feature policy (cached with the common part)."""

    sim_feature: Tensor  # the keyframe's similarity feature
    feature: Tensor  # its fused feature F (TFC: z)
    logits: Tensor  # its logits at F's resolution


class NonkeyBlend:
    """The engine's blend state: `keyframe()` builds the reference, `similarity()` the map at a
    non-key frame, `on_feature` / `on_logits` apply the blend where the spec says."""

    def __init__(self, spec: BlendSpec, model: nn.Module) -> None:
        self.spec = spec
        self.model = model
        # DCFM's F is Norm(...) by construction (FFM); TFC's z is a ReLU output of any length.
        self.unit_feature = getattr(model, "model_class", "DCFM") == "DCFM"

    def keyframe(self, f_in: Tensor, f: Tensor, logits: Tensor) -> KeyReference:
        return KeyReference(similarity_feature(self.model, f_in), f, logits)

    def similarity(self, ref: KeyReference, f_in: Tensor) -> Tensor:
        """cos(s_k, s_t) (1, 1, h, w), unclamped (the feature policy counts values < 0.8)."""
        return cosine_similarity_map(ref.sim_feature, similarity_feature(self.model, f_in))

    def on_feature(self, sim: Tensor | None, ref: KeyReference | None, f: Tensor) -> Tensor:
        if sim is None or ref is None or not (self.spec.enabled and self.spec.target == "feature"):
            return f
        mixed = blend_by_similarity(sim.clamp(0.0, 1.0), ref.feature, f)
        return l2_normalize(mixed) if self.unit_feature else mixed

    def on_logits(self, sim: Tensor | None, ref: KeyReference | None, logits: Tensor) -> Tensor:
        if sim is None or ref is None or not (self.spec.enabled and self.spec.target == "logits"):
            return logits
        return blend_by_similarity(sim.clamp(0.0, 1.0), ref.logits, logits)


__all__ = ["DEFAULT_TARGET", "BlendSpec", "KeyReference", "NonkeyBlend", "low_similarity_share",
           "parse_blend"]
