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

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from dcfm_ros.engine import specs
from dcfm_ros.engine.backends.base import FrameOutputs
from dcfm_ros.engine.network import StreamNetwork
from dcfm_ros.engine.specs import BlendSpec
from dcfm_ros.model.dcfm import l2_normalize
from dcfm_ros.model.similarity import (
    blend_by_similarity,
    cosine_similarity_map,
    low_similarity_share,
)


def parse_blend(text: str | BlendSpec | None, model: StreamNetwork | None = None) -> BlendSpec:
    """Spec string -> BlendSpec (grammar in engine/specs.py); "auto" is the model's `default_blend`."""
    return specs.parse_blend(text, default=model.default_blend if model is not None else "none")


@dataclass(frozen=True)
class KeyReference:
    """What a frame leaves for the blend and the feature policy: the first frame on a new common
    feature (the keyframe with sync) for reference "key", each blended frame for reference "prev"."""

    sim_feature: Tensor  # its similarity feature
    feature: Tensor | None  # its fused feature F (TFC: z); kept only for the feature target
    logits: Tensor | None  # its logits at F's resolution (None with the I/O in the graph: no blend)


@dataclass(frozen=True)
class BlendStep:
    """One frame's blend: its logits, and the references it leaves (kept by `NonkeyBlend.commit`
    only once the whole frame went through, so a frame that fails changes nothing)."""

    logits: Tensor
    key_ref: KeyReference | None
    prev_ref: KeyReference | None


class NonkeyBlend:
    """One stream's blend: the spec and the references it owns. Per frame the engine asks what the
    network call must return (`outputs`), the keyframe similarity (`key_similarity`, also what the
    feature policy decides on), then `step` for the logits and `commit`s the step."""

    def __init__(self, spec: BlendSpec, model: StreamNetwork | object) -> None:
        self.spec = spec
        # DCFM's F is Norm(...) by construction (FFM); TFC's z is a ReLU output of any length (an
        # object that is no StreamNetwork, e.g. a stand-in in a test, declares no unit feature).
        self.unit_feature = bool(model.unit_feature) if isinstance(model, StreamNetwork) else False
        self.reset()

    def reset(self) -> None:
        self.key_ref: KeyReference | None = None
        # reference "prev": the last frame's blended output
        self.prev_ref: KeyReference | None = None

    @property
    def follows_previous(self) -> bool:
        """Whether each blended frame becomes the next one's reference (reference "prev")."""
        return self.spec.enabled and self.spec.reference == "prev"

    @property
    def uses_feature(self) -> bool:
        return self.spec.enabled and self.spec.target == "feature"

    def outputs(self, similarity: bool) -> set[str]:
        """The extra outputs (backends.base.EXTRA_OUTPUTS) the frame's network call must return: the
        similarity feature when the blend or the feature policy (`similarity`) compares frames (no
        reference is kept otherwise), F for the feature target. A frame without extras runs the
        plain fused graph."""
        want: set[str] = set()
        if self.spec.enabled or similarity:
            want.add("sim")
        if self.uses_feature:
            want.add("f")
        return want

    def key_similarity(self, sim_feature: Tensor) -> Tensor | None:
        """cos(s_key, s_t) (1, 1, h, w), unclamped (the feature policy counts values < 0.8); None
        before the first reference."""
        return None if self.key_ref is None else cosine_similarity_map(self.key_ref.sim_feature,
                                                                       sim_feature)

    def step(self, out: FrameOutputs, fresh: bool, key_sim: Tensor | None,
             head: Callable[[Tensor], Tensor]) -> BlendStep:
        """This frame's logits. A frame that brings a new common feature (`fresh`) is not blended and
        becomes the reference; another is blended with the keyframe's (or, reference "prev", the
        previous frame's) prediction. `head` runs the head on a blended F (feature target)."""
        if fresh:
            ref = None if out.sim is None else KeyReference(out.sim, out.f if self.uses_feature else None,
                                                            out.logits)
            return BlendStep(out.logits, ref, ref)
        if not self.spec.enabled:
            return BlendStep(out.logits, self.key_ref, self.prev_ref)
        ref, sim = self.key_ref, key_sim
        if self.follows_previous and self.prev_ref is not None:
            ref = self.prev_ref
            sim = cosine_similarity_map(ref.sim_feature, out.sim)  # type: ignore[arg-type]
        if ref is None or sim is None:
            return BlendStep(out.logits, self.key_ref, self.prev_ref)
        f, logits = out.f, out.logits
        if self.uses_feature:
            f = self.on_feature(sim, ref, f)  # type: ignore[arg-type]
            logits = head(f)
        else:
            logits = self.on_logits(sim, ref, logits)
        prev = KeyReference(out.sim, f if self.uses_feature else None, logits) \
            if self.follows_previous else self.prev_ref  # type: ignore[arg-type]
        return BlendStep(logits, self.key_ref, prev)

    def commit(self, step: BlendStep) -> None:
        self.key_ref, self.prev_ref = step.key_ref, step.prev_ref

    def weight(self, sim: Tensor) -> Tensor:
        w = sim.clamp(0.0, 1.0)
        return w if self.spec.strength == 1.0 else self.spec.strength * w

    def on_feature(self, sim: Tensor | None, ref: KeyReference | None, f: Tensor) -> Tensor:
        if sim is None or ref is None or ref.feature is None or not self.uses_feature:
            return f
        mixed = blend_by_similarity(self.weight(sim), ref.feature, f)
        return l2_normalize(mixed) if self.unit_feature else mixed

    def on_logits(self, sim: Tensor | None, ref: KeyReference | None, logits: Tensor) -> Tensor:
        if sim is None or ref is None or not (self.spec.enabled and self.spec.target == "logits"):
            return logits
        return blend_by_similarity(self.weight(sim), ref.logits, logits)


__all__ = ["BlendSpec", "BlendStep", "KeyReference", "NonkeyBlend", "low_similarity_share",
           "parse_blend"]
