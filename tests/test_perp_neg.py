"""Perp-Neg and view-dependent prompts against the released prompt processor (threestudio's
`get_text_embeddings_perp_neg` and view-dependent prompting, kept by the authors' fork).

The reference is written here independently, as the released code does it: a plain loop over
the samples, azimuths measured from the front (0) and shifted into [-180, 180), its weights
negative and added."""

from __future__ import annotations

import math

import pytest
import torch

from engine.config import GuidanceConfig
from engine.guidance.perp_neg import (FRONT_AZIMUTH_DEG, VIEW_SUFFIXES, perp_neg_distillation_loss, perp_neg_embeddings,
                                  view_indices, view_prompt_embeddings)

SCALE = 3.0  # the released perpneg_scale
OVERHEAD_DEG = 60.0


def released_decay(a: float, b: float, c: float, r: float) -> float:
    return a * math.exp(-b * r) + c


# threestudio's prompt-processor defaults (a, b, c), which the released config keeps.
RELEASED_F_SB, RELEASED_F_FSB = (1, 0.5, -0.606), (1, 0.5, +0.967)
RELEASED_F_FS, RELEASED_F_SF = (4, 0.5, -2.426), (4, 0.5, -2.426)


def released_perp_neg(front, side, back, overhead, uncond, elevations, azimuths, overhead_threshold=60.0):
    """Per sample: (positive, [negative 1, negative 2], [weight 1, weight 2]) as released."""
    out = []
    for elevation, azimuth in zip(elevations, azimuths):
        azimuth = (azimuth + 180) % 360 - 180
        if elevation > overhead_threshold:
            out.append((overhead, [uncond, uncond], [0.0, 0.0]))
        elif abs(azimuth) < 90:
            r = 1 - abs(azimuth) / 90
            out.append((r * front + (1 - r) * side, [front, side],
                        [-released_decay(*RELEASED_F_FS, r), -released_decay(*RELEASED_F_SF, 1 - r)]))
        else:
            r = 2.0 - abs(azimuth) / 90
            out.append((r * side + (1 - r) * back, [side, front],
                        [-released_decay(*RELEASED_F_SB, r), -released_decay(*RELEASED_F_FSB, r)]))
    return out


def released_view(elevation: float, azimuth: float, front_threshold=30.0, back_threshold=30.0,
                  overhead_threshold=60.0) -> str:
    """The released view-dependent prompting: directions tried in order, the last that holds wins."""
    azimuth = (azimuth + 180) % 360 - 180
    view = "side"
    if -front_threshold < azimuth < front_threshold:
        view = "front"
    if azimuth > 180 - back_threshold or azimuth < -180 + back_threshold:
        view = "back"
    if elevation > overhead_threshold:
        view = "overhead"
    return view


def view_embeddings(width: int = 6) -> torch.Tensor:
    """(4, L, D) front, side, back, overhead: distinct random embeddings."""
    return torch.randn(4, 2, width, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perp_neg_negatives_and_weights_equal_the_released_formula(sign):
    relative = [0.0, 45.0, 89.0, 91.0, 135.0, 180.0]
    views = view_embeddings()
    elevation = torch.tensor([10.0] * len(relative))
    azimuth = FRONT_AZIMUTH_DEG + sign * torch.tensor(relative)  # the engine's azimuths: front on -Y
    positive, negatives, weights = perp_neg_embeddings(views, elevation, azimuth, SCALE, OVERHEAD_DEG)
    reference = released_perp_neg(*views, torch.zeros_like(views[0]), elevation.tolist(),
                                   [sign * a for a in relative])
    for i, (ref_positive, ref_negatives, ref_weights) in enumerate(reference):
        torch.testing.assert_close(positive[i], ref_positive, rtol=1e-5, atol=1e-6)
        for k in range(2):
            assert torch.equal(negatives[k, i], ref_negatives[k]), (relative[i], k)
            # Released weights are negative and added; the engine's are positive and subtracted.
            assert float(weights[k, i]) == pytest.approx(-SCALE * ref_weights[k], rel=1e-5, abs=1e-5), (relative[i], k)
    # At the back view, the front view's score is the one removed most (the term against Janus).
    assert float(weights[1, 5]) == pytest.approx(SCALE * (1 + 0.967), rel=1e-4)


def test_overhead_views_use_the_overhead_prompt_without_negatives():
    views = view_embeddings()
    elevation, azimuth = torch.tensor([61.0, 59.0]), torch.tensor([FRONT_AZIMUTH_DEG + 135.0] * 2)
    positive, _, weights = perp_neg_embeddings(views, elevation, azimuth, SCALE, OVERHEAD_DEG)
    reference = released_perp_neg(*views, torch.zeros_like(views[0]), elevation.tolist(), [135.0, 135.0])
    assert torch.equal(positive[0], views[3]) and torch.equal(weights[:, 0], torch.zeros(2))
    torch.testing.assert_close(positive[1], reference[1][0])
    assert (weights[:, 1] > 0).all()


def test_view_words_follow_the_released_rule():
    elevations = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 61.0, 59.0, -10.0]
    relative = [0.0, 29.0, -29.0, 31.0, 149.0, 151.0, -151.0, 10.0, 180.0, 90.0]
    indices = view_indices(torch.tensor(elevations), FRONT_AZIMUTH_DEG + torch.tensor(relative), 30.0, 30.0, 60.0)
    names = [VIEW_SUFFIXES[i].removeprefix(", ").removesuffix(" view") for i in indices.tolist()]
    assert names == [released_view(e, a) for e, a in zip(elevations, relative)]
    assert names == ["front", "front", "front", "side", "side", "back", "back", "overhead", "back", "side"]


def test_view_prompt_embeddings_give_each_sample_its_view():
    prompts = torch.randn(7, 2, 4, generator=torch.Generator().manual_seed(4))  # prompt, "", negative, 4 views
    elevation, relative = torch.tensor([0.0, 0.0, 70.0, 0.0]), torch.tensor([10.0, 180.0, 0.0, 90.0])
    chosen = view_prompt_embeddings(prompts, elevation, FRONT_AZIMUTH_DEG + relative, 30.0, 30.0, 60.0)
    assert chosen.shape == (3, 4, 2, 4)
    for i, view in enumerate([0, 2, 3, 1]):  # front, back, overhead, side
        assert torch.equal(chosen[0, i], prompts[3 + view])
        assert torch.equal(chosen[1, i], prompts[1]) and torch.equal(chosen[2, i], prompts[2])


class LinearPrior:
    """A pixel-space noise predictor linear in the text embedding (so interpolated prompts have
    interpolated predictions), independent of the noised input."""

    pixel_space = True
    num_train_timesteps = 1000

    def __init__(self, embedding_size: int, shape=(3, 4, 4)):
        generator = torch.Generator().manual_seed(5)
        self.shape = shape
        self.matrix = torch.randn(embedding_size, math.prod(shape), generator=generator)
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
        self.nan_at: tuple | None = None

    def add_noise(self, x0, noise, t):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_noise(self, noisy, timesteps, embeddings, control=None):
        eps = (embeddings.flatten(1) @ self.matrix).view(-1, *self.shape) + 0 * noisy
        if self.nan_at is not None:
            eps[self.nan_at] = float("nan")
        return eps


def released_csd_perp_neg_gradient(e_text, e_neg_prompt, e_null, e_views, weights, cond, uncond, null):
    """The released DeepFloyd guidance with Perp-Neg (uniform weighting, grad_normalize): its
    "uncond" is the negative prompt, "null" the empty prompt."""
    e_pos = e_text - e_neg_prompt
    accum = 0
    for i in range(2):
        e_i = e_views[i] - e_neg_prompt
        coefficient = (e_i * e_pos).sum(dim=[1, 2, 3]) / torch.clamp((e_pos * e_pos).sum(dim=[1, 2, 3]), min=1e-6)
        accum = accum + weights[:, i].view(-1, 1, 1, 1) * (e_i - coefficient.view(-1, 1, 1, 1) * e_pos)
    grad = cond * e_text + uncond * e_neg_prompt + null * e_null + SCALE * accum
    grad = torch.nan_to_num(grad)
    return grad / (grad.norm(2) + 1e-8)


@pytest.mark.parametrize("w2", [0.0, 0.4, 1.0])
def test_csd_with_perp_neg_is_the_released_gradient(w2):
    """The whole step at batch 2 (a front-side and a back-side view) against the released guidance,
    at points of the annealing (u = -w2, null = w2 - 1, as csd-settings.md writes it)."""
    views = view_embeddings()
    text_width = views[0].numel()
    prior = LinearPrior(text_width)
    generator = torch.Generator().manual_seed(6)
    uncond, negative = torch.randn(2, 1, *views.shape[1:], generator=generator)
    elevation, relative = torch.tensor([5.0, 20.0]), [30.0, -135.0]
    positive, others, weights = perp_neg_embeddings(views, elevation, FRONT_AZIMUTH_DEG + torch.tensor(relative),
                                                    SCALE, OVERHEAD_DEG)
    x = torch.randn(2, *prior.shape, generator=generator, requires_grad=True)
    config = GuidanceConfig(mode="csd", w1=1.0, w2_start=w2, w2_end=w2)
    step = perp_neg_distillation_loss(prior, x, positive, uncond, negative, others, weights, config, 0,
                                      torch.Generator().manual_seed(0))

    def predict(embedding):
        return prior.predict_noise(torch.zeros(embedding.shape[0], *prior.shape), None, embedding)

    reference = released_perp_neg(*views, negative[0], elevation.tolist(), relative)
    e_text = predict(torch.stack([r[0] for r in reference]))
    e_views = [predict(torch.stack([r[1][i] for r in reference])) for i in range(2)]
    released_weights = torch.tensor([r[2] for r in reference])
    expected = released_csd_perp_neg_gradient(e_text, predict(negative.expand(2, -1, -1)),
                                              predict(uncond.expand(2, -1, -1)), e_views, released_weights,
                                              1.0, -w2, w2 - 1.0)
    torch.testing.assert_close(step.gradient, expected, rtol=1e-4, atol=1e-6)


def test_a_nan_view_prediction_leaves_the_perp_neg_gradient_finite():
    views = view_embeddings()
    prior = LinearPrior(views[0].numel())
    prior.nan_at = (4, 0, 1, 1)  # in the first other view's prediction
    uncond, negative = torch.randn(2, 1, *views.shape[1:], generator=torch.Generator().manual_seed(8))
    positive, others, weights = perp_neg_embeddings(views, torch.tensor([0.0]), torch.tensor([FRONT_AZIMUTH_DEG]),
                                                    SCALE, OVERHEAD_DEG)
    x = torch.nn.Parameter(torch.randn(1, *prior.shape))
    optimizer = torch.optim.Adam([x], lr=1e-3, eps=1e-15)
    step = perp_neg_distillation_loss(prior, x, positive, uncond, negative, others, weights,
                                      GuidanceConfig(mode="csd", w2_start=0.5, w2_end=0.5), 0,
                                      torch.Generator().manual_seed(0))
    step.loss.backward()
    optimizer.step()
    assert torch.isfinite(step.gradient).all() and torch.isfinite(x).all()
    assert all(torch.isfinite(value).all() for value in optimizer.state[x].values())
