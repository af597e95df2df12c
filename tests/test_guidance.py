"""The gradient that reaches the render is exactly the paper's Eq. 7, 10, 6 (and 11)."""

import pytest
import torch

from engine.config import GuidanceConfig
from engine.guidance.score_distillation import perp_neg_removal, score_distillation_loss, weight_gradient


class FakePrior:
    """A noise predictor whose output for prompt k is a fixed tensor: eps_k = P_k (+ 0 * x_t)."""

    def __init__(self, pixel_space: bool, shape=(2, 4, 8, 8), num_prompts=3):
        generator = torch.Generator().manual_seed(1)
        self.pixel_space = pixel_space
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 1000)
        self.num_train_timesteps = 1000
        self.predictions = torch.randn(num_prompts, *shape, generator=generator)
        self.calls = []

    def add_noise(self, x0, noise, t):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_noise(self, noisy, timesteps, embeddings, control=None):
        self.calls.append(noisy.shape[0])
        batch = self.predictions.shape[1]
        index = embeddings[:, 0, 0].long()  # the fake embedding of prompt k is the constant k
        return torch.stack([self.predictions[index[i], i % batch] for i in range(noisy.shape[0])]) + 0 * noisy


def embeddings(k):
    return torch.arange(k, dtype=torch.float32).view(k, 1, 1).expand(k, 2, 3).clone()


def run_step(prior, config, step=0, seed=0, num_prompts=3):
    x = torch.randn(prior.predictions.shape[1:], generator=torch.Generator().manual_seed(7), requires_grad=True)
    result = score_distillation_loss(prior, x, embeddings(num_prompts), config, step,
                                     torch.Generator().manual_seed(seed))
    result.loss.backward()
    return x, result


@pytest.mark.parametrize("w1,w2,prompts_called", [(1.0, 0.5, 3), (1.0, 0.0, 2), (0.0, 1.0, 3), (2.0, 1.5, 3),
                                                  (1.0, 1.0, 2)])
def test_csd_latent_gradient_is_eq10(w1, w2, prompts_called):
    prior = FakePrior(pixel_space=False)
    config = GuidanceConfig(mode="csd", w1=w1, w2_start=w2, w2_end=w2)
    x, result = run_step(prior, config)
    e_text, e_uncond, e_neg = prior.predictions
    weight = (1 - prior.alphas_cumprod[result.timesteps]).view(-1, 1, 1, 1)
    expected = weight * (w1 * (e_text - e_uncond) - w2 * (e_neg - e_uncond))
    batch = x.shape[0]
    torch.testing.assert_close(x.grad, expected / batch, rtol=1e-6, atol=1e-7)
    # One batched prior call for text, empty and negative; at w2 = 0 the negative prompt's prediction
    # is not needed, at w2 = w1 the empty prompt's (it cancels out of Eq. 10).
    assert prior.calls == [prompts_called * batch]


def test_csd_without_negative_is_eq7():
    prior = FakePrior(pixel_space=False, num_prompts=2)
    config = GuidanceConfig(mode="csd", w1=1.0)
    x, result = run_step(prior, config, num_prompts=2)
    e_text, e_uncond = prior.predictions
    weight = (1 - prior.alphas_cumprod[result.timesteps]).view(-1, 1, 1, 1)
    torch.testing.assert_close(x.grad, weight * (e_text - e_uncond) / x.shape[0])


def test_csd_pixel_gradient_is_normalised_over_the_batch():
    """As the released code's grad / grad.norm(): one norm for the whole batch (batch 2 here), so
    the samples keep their relative sizes."""
    prior = FakePrior(pixel_space=True)
    prior.predictions[:, 1] *= 3.0
    config = GuidanceConfig(mode="csd", w1=1.0, w2_start=0.5, w2_end=0.5)
    x, _ = run_step(prior, config)
    e_text, e_uncond, e_neg = prior.predictions
    direction = (e_text - e_uncond) - 0.5 * (e_neg - e_uncond)
    expected = direction / direction.norm()
    torch.testing.assert_close(x.grad, expected / x.shape[0])
    # Per sample, both would have norm 1; here sample 1 stays about three times sample 0.
    ratio = float(x.grad[1].norm() / x.grad[0].norm())
    assert ratio == pytest.approx(float(direction[1].norm() / direction[0].norm()), rel=1e-4) and ratio > 2.0


def test_each_sample_may_have_its_own_prompt():
    """Embeddings (K, B, L, D): sample 0 is guided by prompt 0, sample 1 by prompt 3 (its view
    prompt), with "" and the negative shared; still one prior call for all of them."""
    prior = FakePrior(pixel_space=False, num_prompts=4)
    config = GuidanceConfig(mode="csd", w1=1.0, w2_start=0.5, w2_end=0.5)
    shared = embeddings(4)
    per_sample = torch.stack([torch.stack([shared[0], shared[3]]), shared[1].expand(2, -1, -1),
                              shared[2].expand(2, -1, -1)])
    x = torch.randn(prior.predictions.shape[1:], generator=torch.Generator().manual_seed(7), requires_grad=True)
    result = score_distillation_loss(prior, x, per_sample, config, 0, torch.Generator().manual_seed(0))
    result.loss.backward()
    e_uncond, e_neg = prior.predictions[1], prior.predictions[2]
    e_text = torch.stack([prior.predictions[0, 0], prior.predictions[3, 1]])
    weight = (1 - prior.alphas_cumprod[result.timesteps]).view(-1, 1, 1, 1)
    expected = weight * ((e_text - e_uncond) - 0.5 * (e_neg - e_uncond))
    torch.testing.assert_close(x.grad, expected / 2, rtol=1e-6, atol=1e-7)
    assert prior.calls == [3 * 2]


@pytest.mark.parametrize("pixel_space", [True, False])
def test_a_nan_prediction_leaves_the_gradient_and_adam_finite(pixel_space):
    """One NaN in the prior's output (an fp16 overflow) becomes 0, as threestudio's nan_to_num does:
    the gradient, the parameters and Adam's moments stay finite."""
    prior = FakePrior(pixel_space=pixel_space)
    prior.predictions[0, 0, 1, 2, 3] = float("nan")
    x = torch.nn.Parameter(torch.randn(prior.predictions.shape[1:], generator=torch.Generator().manual_seed(7)))
    optimizer = torch.optim.Adam([x], lr=1e-3, eps=1e-15)
    config = GuidanceConfig(mode="csd", w1=1.0, w2_start=0.5, w2_end=0.5)
    result = score_distillation_loss(prior, x, embeddings(3), config, 0, torch.Generator().manual_seed(0))
    result.loss.backward()
    optimizer.step()
    assert torch.isfinite(result.gradient).all() and torch.isfinite(result.loss)
    assert float(result.gradient[0, 1, 2, 3]) == 0.0 and result.gradient.abs().sum() > 0
    state = optimizer.state[x]
    assert torch.isfinite(x).all() and torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()


def test_weight_gradient_at_batch_1_is_the_per_sample_normalisation():
    """The texture job's static step calls weight_gradient at batch 1: the batch norm is that sample's."""
    direction = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.equal(weight_gradient(direction, torch.tensor([0.5]), True), expected)


def test_sds_gradient_is_eq6_and_uses_the_injected_noise():
    prior = FakePrior(pixel_space=False, num_prompts=2)
    config = GuidanceConfig(mode="sds", cfg_scale=7.5)
    x, result = run_step(prior, config, num_prompts=2, seed=3)
    generator = torch.Generator().manual_seed(3)
    torch.randint(0, 1, (1,), generator=generator)  # advance as sample_timesteps did
    e_text, e_uncond = prior.predictions
    weight = (1 - prior.alphas_cumprod[result.timesteps]).view(-1, 1, 1, 1)
    noise_free = weight * (e_uncond + 7.5 * (e_text - e_uncond))
    # The gradient minus the noise-free part is -w(t) * eps, the injected noise: non-zero.
    noise_part = x.grad * x.shape[0] - noise_free
    assert noise_part.abs().mean() > 0.1
    # Same seed -> same noise: the step is deterministic.
    x2, _ = run_step(prior, config, num_prompts=2, seed=3)
    torch.testing.assert_close(x.grad, x2.grad)


def test_csd_ignores_the_injected_noise():
    prior = FakePrior(pixel_space=False)
    config = GuidanceConfig(mode="csd", w1=1.0, w2_start=0.5, w2_end=0.5, t_min=0.3, t_max=0.300001)
    x1, _ = run_step(prior, config, seed=1)
    x2, _ = run_step(prior, config, seed=2)
    torch.testing.assert_close(x1.grad, x2.grad)


def test_w2_annealing_is_linear():
    config = GuidanceConfig(w2_start=1.0, w2_end=0.5, w2_anneal_steps=100)
    assert config.w2_at(0) == 1.0
    assert config.w2_at(50) == pytest.approx(0.75)
    assert config.w2_at(100) == 0.5
    assert config.w2_at(1000) == 0.5


def test_timestep_range_switch():
    config = GuidanceConfig(t_min=0.02, t_max=0.5, t_max_before_switch=0.98, t_max_switch_step=5000)
    assert config.t_range_at(0) == (0.02, 0.98)
    assert config.t_range_at(5000) == (0.02, 0.5)


def test_perp_neg_removes_only_the_perpendicular_part():
    generator = torch.Generator().manual_seed(0)
    e_text, e_base, e_sideways = torch.randn(3, 1, 3, 4, 4, generator=generator)
    positive = e_text - e_base
    parallel_other = e_base + 2.0 * positive  # an "other view" score parallel to the positive one
    removal = perp_neg_removal(e_text, e_base, parallel_other[None], torch.ones(1, 1))
    torch.testing.assert_close(removal, torch.zeros_like(removal))
    # A score with a perpendicular part: that part, times the weight, is removed.
    other = e_base + 0.5 * positive + e_sideways
    removal = perp_neg_removal(e_text, e_base, other[None], torch.full((1, 1), 3.0))
    flat_p, flat_s = positive.flatten(), e_sideways.flatten()
    perpendicular = flat_s - (flat_s @ flat_p) / (flat_p @ flat_p) * flat_p
    torch.testing.assert_close(removal.flatten(), 3.0 * perpendicular, rtol=1e-5, atol=1e-6)
