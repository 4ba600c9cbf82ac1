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

Spec strings: "none", "auto" (the model's own `default_blend`, "none" for DCFM, "cosine:feature" for
TFC), or "cosine" followed by up to three options, in any order, separated by ":":
    target     feature | logits (default DEFAULT_TARGET);
    reference  key (default, TFC: blend with the keyframe) | prev (blend with the previous frame's
               blended output and compare with its shallow feature: a recursive filter, reset at
               every frame that brings a new common feature);
    strength   a number a in (0, 1]: w = a * clamp(cos, 0, 1) (default 1, TFC's eq. 7).
"cosine:prev:0.5" is the variant chosen on the CamVid val clip for the shipped DCFM (README): the only
one of the grid tried there whose mIoU is not below the unblended one at K=2 and K=5 while its mVC_8
is above the per-frame baseline. TFC's own blend at full strength against the keyframe mixes the
stale keyframe prediction into moved pixels, because the shipped model's F_in was never trained
(L_sim) to be dissimilar where labels change.
The default target ("cosine" = "cosine:logits") was chosen on the CamVid val clip with the shipped DCFM
(README, "TFC and the cosine blend"): at K=2, K=5 and with the motion policy it kept more mIoU and
gained more mVC_8 than the feature blend.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dcfm_ros.engine import specs
from dcfm_ros.engine.specs import BlendSpec
from dcfm_ros.model.dcfm import l2_normalize
from dcfm_ros.model.similarity import (
    blend_by_similarity,
    cosine_similarity_map,
    low_similarity_share,
    similarity_feature,
)


def parse_blend(text: str | BlendSpec | None, model: nn.Module | None = None) -> BlendSpec:
    """Spec string -> BlendSpec (grammar in engine/specs.py); "auto" is the model's `default_blend`."""
    return specs.parse_blend(text, default=getattr(model, "default_blend", "none"))


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

    def feature(self, f_in: Tensor) -> Tensor:
        """s_t, the frame's similarity feature (TFC: a projection); the engine computes it once per
        frame and hands it to `similarity` and `keyframe`."""
        return similarity_feature(self.model, f_in)

    def keyframe(self, s: Tensor, f: Tensor, logits: Tensor) -> KeyReference:
        return KeyReference(s, f, logits)

    def similarity(self, ref: KeyReference, s: Tensor) -> Tensor:
        """cos(s_ref, s_t) (1, 1, h, w), unclamped (the feature policy counts values < 0.8)."""
        return cosine_similarity_map(ref.sim_feature, s)

    @property
    def follows_previous(self) -> bool:
        """Whether each blended frame becomes the next one's reference (reference "prev")."""
        return self.spec.enabled and self.spec.reference == "prev"

    def weight(self, sim: Tensor) -> Tensor:
        w = sim.clamp(0.0, 1.0)
        return w if self.spec.strength == 1.0 else self.spec.strength * w

    def on_feature(self, sim: Tensor | None, ref: KeyReference | None, f: Tensor) -> Tensor:
        if sim is None or ref is None or not (self.spec.enabled and self.spec.target == "feature"):
            return f
        mixed = blend_by_similarity(self.weight(sim), ref.feature, f)
        return l2_normalize(mixed) if self.unit_feature else mixed

    def on_logits(self, sim: Tensor | None, ref: KeyReference | None, logits: Tensor) -> Tensor:
        if sim is None or ref is None or not (self.spec.enabled and self.spec.target == "logits"):
            return logits
        return blend_by_similarity(self.weight(sim), ref.logits, logits)


__all__ = ["BlendSpec", "KeyReference", "NonkeyBlend", "low_similarity_share",
           "parse_blend"]
