"""View-dependent prompts and Perp-Neg (Armandpour et al. 2023) for the NeRF stage.

Views are named from the camera's azimuth relative to the front, which is the camera on -Y
(azimuth -90 degrees in engine.render.cameras; Blender's front view; the bundled prior's
captions use the same rule), and from its elevation (overhead). The released prompt processor
(threestudio's `get_text_embeddings_perp_neg`, which the authors' fork keeps) is followed:

- with r the interpolation ratio of the azimuth |a| from the front, the front half (|a| < 90)
  uses the positive r * front + (1 - r) * side with r = 1 - |a| / 90, and the negatives
  [front, side] with weights [f_fs(r), f_sf(1 - r)]; the back half uses r * side + (1 - r) * back
  with r = 2 - |a| / 90, and the negatives [side, front] with [f_sb(r), f_fsb(r)];
  f(r) = a * exp(-b * r) + c;
- an overhead view (elevation above the threshold) uses the overhead prompt and no negatives.

Sign convention: the released weights are -f and their perpendicular components are added; here
the weights are +f (times the Perp-Neg scale) and the components are subtracted. Same gradient.

Without Perp-Neg, each sample's prompt still carries its view's words (threestudio's
view-dependent prompting): front near the front, back near the back, overhead from above,
side otherwise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from collections.abc import Sequence

from ..config import GuidanceConfig
from .score_distillation import (DistillationStep, csd_direction, distill, perp_neg_removal,
                                 sample_timesteps_and_noise, sds_direction)

FRONT_AZIMUTH_DEG = -90.0
# The view prompts' order: their index is what view_indices returns.
FRONT, SIDE, BACK, OVERHEAD = range(4)
VIEW_SUFFIXES = (", front view", ", side view", ", back view", ", overhead view")
# (a, b, c) of threestudio's prompt-processor defaults (the released config keeps them).
F_FS = (4.0, 0.5, -2.426)
F_SF = (4.0, 0.5, -2.426)
F_SB = (1.0, 0.5, -0.606)
F_FSB = (1.0, 0.5, 0.967)


def relative_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Azimuth from the front view, in [-180, 180)."""
    return torch.remainder(azimuth_deg - FRONT_AZIMUTH_DEG + 180.0, 360.0) - 180.0


def _decay(params: tuple[float, float, float], r: Tensor) -> Tensor:
    a, b, c = params
    return a * torch.exp(-b * r) + c


def view_indices(elevation_deg: Tensor, azimuth_deg: Tensor, front_deg: float, back_deg: float,
                 overhead_deg: float) -> Tensor:
    """(B,) index into VIEW_SUFFIXES per camera: front within front_deg of the front, back within
    back_deg of the back, overhead above overhead_deg elevation (whatever the azimuth), else side."""
    angle = relative_azimuth(azimuth_deg.float()).abs()
    index = torch.full_like(angle, SIDE, dtype=torch.long)
    index = torch.where(angle < front_deg, FRONT, index)
    index = torch.where(angle > 180.0 - back_deg, BACK, index)
    return torch.where(elevation_deg.to(angle.device).float() > overhead_deg, OVERHEAD, index)


def view_prompt_embeddings(prompts: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor, front_deg: float,
                           back_deg: float, overhead_deg: float) -> Tensor:
    """prompts (7, L, D) = [prompt, "", negative, front, side, back, overhead view prompts] ->
    (3, B, L, D) for score_distillation_loss: each sample's view prompt, "" and the negative shared."""
    views = view_indices(elevation_deg, azimuth_deg, front_deg, back_deg, overhead_deg).to(prompts.device)
    batch = views.shape[0]
    return torch.stack([prompts[3:][views], prompts[1].expand(batch, -1, -1), prompts[2].expand(batch, -1, -1)])


def perp_neg_embeddings(views: Tensor, elevation_deg: Tensor, azimuth_deg: Tensor, scale: float,
                        overhead_deg: float) -> tuple[Tensor, Tensor, Tensor]:
    """views (4, L, D) = front, side, back, overhead embeddings; elevation, azimuth (B,) degrees.

    Returns the positive embeddings (B, L, D), the two negatives' embeddings (2, B, L, D) and their
    Perp-Neg weights (2, B), +f times `scale` (see the module's sign convention).
    """
    front, side, back, overhead = views[FRONT], views[SIDE], views[BACK], views[OVERHEAD]
    angle = relative_azimuth(azimuth_deg.float()).abs().to(views.device)
    above = elevation_deg.float().to(views.device) > overhead_deg
    in_front = angle < 90.0
    r = torch.where(in_front, 1.0 - angle / 90.0, 2.0 - angle / 90.0)  # front half: 1 front, 0 side
    shape = (-1, 1, 1)
    r_, in_front_, above_ = r.view(shape), in_front.view(shape), above.view(shape)
    positive = torch.where(in_front_, r_ * front + (1 - r_) * side, r_ * side + (1 - r_) * back)
    positive = torch.where(above_, overhead, positive)
    batch = angle.shape[0]
    first = torch.where(in_front_, front.expand(batch, -1, -1), side.expand(batch, -1, -1))
    second = torch.where(in_front_, side.expand(batch, -1, -1), front.expand(batch, -1, -1))
    # Overhead: no negatives. Their weights are zero; the overhead prompt stands in for them (its
    # component perpendicular to itself is zero as well).
    first = torch.where(above_, overhead.expand(batch, -1, -1), first)
    second = torch.where(above_, overhead.expand(batch, -1, -1), second)
    w_first = torch.where(in_front, _decay(F_FS, r), _decay(F_SB, r))
    w_second = torch.where(in_front, _decay(F_SF, 1.0 - r), _decay(F_FSB, r))
    weights = torch.where(above, 0.0, scale * torch.stack([w_first, w_second]).float())
    return positive.to(views.dtype), torch.stack([first, second]).to(views.dtype), weights


def perp_neg_distillation_loss(prior, x: Tensor, positive: Tensor, uncond: Tensor, negative: Tensor,
                               others: Tensor, other_weights: Tensor, config: GuidanceConfig, step: int,
                               generator: torch.Generator) -> DistillationStep:
    """CSD (or SDS) with Perp-Neg on model input x (B, C, H, W): one prior call on
    [positive (B), "" (B), negative prompt (B), other views (2B)].

    uncond and negative are (1, L, D). CSD's direction is Eq. 10 with the positive prompt,
    less the other views' components perpendicular to it, both taken against the negative
    prompt's prediction as the released code does (its "uncond" is the negative prompt):
    w1 * (e(pos) - e("")) - w2 * (e(neg) - e("")) - sum_k w_k perp(e(k) - e(neg), e(pos) - e(neg)).
    SDS takes them against e("").
    """
    batch = x.shape[0]
    timesteps, noise = sample_timesteps_and_noise(x.shape, config.t_range_at(step), prior.num_train_timesteps,
                                                  generator, x.device)
    embeddings = torch.cat([positive, uncond.expand(batch, -1, -1), negative.expand(batch, -1, -1),
                            others.reshape(-1, *others.shape[2:])])

    def direction(eps: Sequence[Tensor]) -> Tensor:
        eps_text, eps_uncond, eps_negative = eps[:3]
        eps_others, weights = torch.stack(eps[3:]), other_weights.to(eps_text.device)
        if config.mode == "sds":
            removal = perp_neg_removal(eps_text, eps_uncond, eps_others, weights)
            return sds_direction(eps_text - removal, eps_uncond, noise, config.cfg_scale)
        removal = perp_neg_removal(eps_text, eps_negative, eps_others, weights)
        return csd_direction(eps_text, eps_uncond, eps_negative, config.w1, config.w2_at(step)) - removal

    return distill(prior, x, noise, timesteps, embeddings, direction)
