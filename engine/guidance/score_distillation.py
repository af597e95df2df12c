"""Score distillation: turn a diffusion prior's noise predictions into a gradient on a render.

The formulas are the paper's (shared/paper, Eq. 5-7, 10, 11) and the authors' released
conventions (shared/reference/csd-settings.md):

    classifier score   d(y)  = e(y) - e("")                               (Eq. 3, 7)
    CSD                g     = w1 * d(y) - w2 * d(y_neg)                  (Eq. 10; w2 = 0 is Eq. 7)
    edit               g     = w1 * d(y_target) - w2 * d(y_edit)          (Eq. 11)
    SDS + CFG          g     = e("") + s * (e(y) - e("")) - eps           (Eq. 5, 6)

CSD never uses the injected noise `eps`; SDS does. One skeleton, `distill`, does every step:
noise x at the timesteps, one batched prior call under no_grad for all the prompts, the direction
from those predictions, the weighting w(t), and the surrogate loss
0.5 * ||x - stopgrad(x - g)||^2 / batch, whose gradient w.r.t. x is exactly g / batch.
Its callers differ only in their prompts and direction: `score_distillation_loss` (Eq. 5-11),
Perp-Neg (guidance/perp_neg.py), and the texture job's static step (pipelines/texture_step.py),
which passes fixed noise and timestep buffers and w2 as a tensor so that a CUDA graph can replay it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

import torch

from ..config import GuidanceConfig

# The direction of one step from the prior's predictions, one (B, C, H, W) per prompt in the
# order of the embeddings passed to `distill`.
Direction = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def csd_direction(eps_text: torch.Tensor, eps_uncond: torch.Tensor, eps_negative: torch.Tensor | None,
                  w1: float, w2: float | torch.Tensor) -> torch.Tensor:
    """Eq. 10 (and Eq. 7 when eps_negative is None or w2 == 0; Eq. 11 for edits). eps_uncond may be
    None when w2 == w1: then the unconditional prediction cancels out of Eq. 10.

    w2 may be a 0-d tensor (a CUDA graph's buffer): it is then always applied, since reading its
    value would sync with the GPU; w2 = 0 subtracts an exact zero."""
    if eps_uncond is None:
        return w1 * eps_text - w2 * eps_negative
    direction = w1 * (eps_text - eps_uncond)
    if eps_negative is not None and (torch.is_tensor(w2) or w2 != 0.0):
        direction = direction - w2 * (eps_negative - eps_uncond)
    return direction


def sds_direction(eps_text: torch.Tensor, eps_uncond: torch.Tensor, noise: torch.Tensor,
                  cfg_scale: float) -> torch.Tensor:
    """Eq. 6: classifier-free guided prediction minus the injected noise."""
    return eps_uncond + cfg_scale * (eps_text - eps_uncond) - noise


def perp_neg_removal(eps_text: torch.Tensor, eps_base: torch.Tensor, eps_others: torch.Tensor,
                     other_weights: torch.Tensor) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023): what is taken off the positive score, the weighted sum of
    the components of the other views' scores e(k) - e(base) perpendicular to e(text) - e(base).

    eps_others: (K, B, C, H, W), other_weights: (K, B)."""
    flat_pos = (eps_text - eps_base).flatten(1)
    pos_norm_sq = (flat_pos * flat_pos).sum(dim=1).clamp_min(1e-12)
    removal = torch.zeros_like(eps_text)
    for k in range(eps_others.shape[0]):
        other = (eps_others[k] - eps_base).flatten(1)
        parallel = ((other * flat_pos).sum(dim=1) / pos_norm_sq)[:, None] * flat_pos
        perpendicular = (other - parallel).view_as(eps_text)
        removal = removal + other_weights[k].view(-1, *([1] * (eps_text.dim() - 1))) * perpendicular
    return removal


def surrogate_loss(x: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient w.r.t. x is gradient / batch (the standard SDS reparametrisation)."""
    target = (x - gradient).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]


@dataclass
class DistillationStep:
    loss: torch.Tensor
    timesteps: torch.Tensor
    gradient: torch.Tensor  # the weighted gradient applied to x (before the 1/batch of the loss)


def sample_timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int,
                     generator: torch.Generator, device: torch.device) -> torch.Tensor:
    low = int(t_range[0] * num_train_timesteps)
    high = max(int(t_range[1] * num_train_timesteps), low + 1)
    return torch.randint(low, high, (batch,), generator=generator, device="cpu").to(device)


def sample_timesteps_and_noise(shape: torch.Size, t_range: tuple[float, float], num_train_timesteps: int,
                               generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's random draws, in the order every step makes them: the timesteps (one per sample),
    then the float32 noise of the model input's shape."""
    timesteps = sample_timesteps(shape[0], t_range, num_train_timesteps, generator, device)
    noise = torch.randn(shape, generator=generator).to(device=device, dtype=torch.float32)
    return timesteps, noise


def weight_gradient(direction: torch.Tensor, alphas_cumprod_t: torch.Tensor, pixel_space: bool) -> torch.Tensor:
    """Released convention: latent models use w(t) = 1 - alpha_bar_t; pixel models w(t) = 1 and
    the gradient divided by its L2 norm over the whole batch (threestudio's grad / grad.norm()).

    As threestudio does, NaN becomes 0 and +-inf the largest finite value (torch.nan_to_num)
    before the normalisation: one fp16 overflow in the prior must not reach Adam's state."""
    if pixel_space:
        gradient = torch.nan_to_num(direction)
        # (1, N) like the per-sample norm it replaced: bitwise the same result at batch 1.
        return gradient / gradient.reshape(1, -1).norm(dim=1).clamp_min(1e-8)
    weights = (1.0 - alphas_cumprod_t).view(-1, *([1] * (direction.dim() - 1)))
    return torch.nan_to_num(weights.to(direction.dtype) * direction)


def guidance_direction(config: GuidanceConfig, w2: float | torch.Tensor, eps_text: torch.Tensor,
                       eps_uncond: torch.Tensor | None, eps_negative: torch.Tensor | None,
                       noise: torch.Tensor) -> torch.Tensor:
    """The unweighted direction the config asks for, with the step's w2 (config.w2_at(step))."""
    if config.mode == "sds":
        return sds_direction(eps_text, eps_uncond, noise, config.cfg_scale)
    return csd_direction(eps_text, eps_uncond, eps_negative, config.w1, w2)


def prompts_used(config: GuidanceConfig, step: int, num_prompts: int) -> list[int]:
    """Which of [prompt, "", negative] the step's direction reads. CSD needs no negative prediction
    at w2 = 0, and no unconditional one at w2 = w1 (Eq. 10 is then w1 * (e(y) - e(y_neg)): the
    released NeRF schedule's second half), so the prior's batch shrinks by a third there."""
    if config.mode == "sds" or num_prompts < 3:
        return list(range(num_prompts))
    w2 = config.w2_at(step)
    if w2 == 0.0:
        return [0, 1]
    if w2 == config.w1:
        return [0, 2]
    return [0, 1, 2]


def batch_embeddings(embeddings: torch.Tensor, batch: int) -> torch.Tensor:
    """(K, L, D), each prompt paired with the whole batch, or (K, B, L, D), one per prompt and
    sample, -> (K * B, L, D) in the prior call's order: prompt-major."""
    return embeddings.repeat_interleave(batch, dim=0) if embeddings.dim() == 3 else embeddings.flatten(0, 1)


def distill(prior, x: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
            direction: Direction, control=None,
            around_prior_call: Sequence[AbstractContextManager] = ()) -> DistillationStep:
    """The skeleton of every score-distillation step on model input x (B, C, H, W), which carries
    the autograd graph: x noised with `noise` at `timesteps`, one no-grad prior call for all
    K = len(embeddings) / B prompts (embeddings (K * B, L, D), prompt-major), `direction` of the
    K predictions, weighted by w(t), as the surrogate loss. `around_prior_call` are entered around
    the prior call only (faster ways to run the networks)."""
    batch = x.shape[0]
    parts = embeddings.shape[0] // batch
    with torch.no_grad():
        noisy = prior.add_noise(x.detach().float(), noise, timesteps)
        with ExitStack() as stack:
            for context in around_prior_call:
                stack.enter_context(context)
            eps = prior.predict_noise(noisy.repeat(parts, 1, 1, 1), timesteps.repeat(parts), embeddings,
                                      control).float()
        gradient = weight_gradient(direction(eps.split(batch)), prior.alphas_cumprod[timesteps], prior.pixel_space)
    return DistillationStep(surrogate_loss(x.float(), gradient), timesteps, gradient)


def score_distillation_loss(prior, x: torch.Tensor, embeddings: torch.Tensor, config: GuidanceConfig, step: int,
                            generator: torch.Generator, control=None) -> DistillationStep:
    """One score-distillation step (Eq. 5-11) on model input x (B, C, H, W) that carries the autograd graph.

    embeddings are in the order [prompt, "", negative] (negative optional; for edits [target, "", edit]),
    all K predictions from one prior call: (K, L, D), each prompt paired with the whole batch, or
    (K, B, L, D), one embedding per prompt and sample (view-dependent prompts).
    """
    timesteps, noise = sample_timesteps_and_noise(x.shape, config.t_range_at(step), prior.num_train_timesteps,
                                                  generator, x.device)
    used = prompts_used(config, step, embeddings.shape[0])
    w2 = config.w2_at(step)

    def direction(eps: Sequence[torch.Tensor]) -> torch.Tensor:
        predictions = dict(zip(used, eps))
        eps_text, eps_uncond, eps_negative = (predictions.get(k) for k in range(3))
        return guidance_direction(config, w2, eps_text, eps_uncond, eps_negative, noise)

    return distill(prior, x, noise, timesteps, batch_embeddings(embeddings[used], x.shape[0]), direction, control)
