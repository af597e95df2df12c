"""The texture job's step: the static-shape formulation (padded points, buffered inputs) and the
CUDA-graph step compute the same loss and the same Adam update as the eager reference step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import PriorConfig, TextureJobConfig
from engine.field.texture_field import MATERIAL_CHANNELS, TextureField
from engine.pipelines.texture import build_cameras, encode_prompts, prepare_mesh
from engine.pipelines.texture_step import (EagerTextureStep, GraphedTextureStep, StaticTextureStep,
                                           make_texture_step)
from engine.pipelines.views import ViewPool
from engine.prior.load import load_prior

CUBE = Path(__file__).resolve().parents[1] / "examples" / "cube.obj"
STEPS = 3


def job_config(model: Path, controlnets: dict[str, Path] | None, render_size: int, mode: str = "csd",
               lighting: bool = True, material: str = "albedo") -> TextureJobConfig:
    config = TextureJobConfig(prompt="a red sphere", mesh=str(CUBE), out="unused", steps=10,
                              render_size=render_size, texture_size=64, seed=5, lighting=lighting,
                              negative_prompt="blue", material=material)
    config.guidance.mode = mode
    config.cameras.view_pool = 6
    config.hash_grid.log2_table_size = 12
    config.hash_grid.levels = 8
    config.prior = PriorConfig(model=str(model), controlnets=tuple(controlnets) if controlnets else (),
                               controlnet_models={k: str(v) for k, v in (controlnets or {}).items()},
                               # step 1 switches the ControlNet scale, so both values are exercised
                               controlnet_switch_step=1)
    config.validate()
    return config


class Job:
    """What run_texture sets up before the loop, for one kind of step."""

    def __init__(self, config: TextureJobConfig, device: torch.device, prior=None):
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        mesh = prepare_mesh(config.mesh, None, False, config.texture_size)
        positions = torch.from_numpy(mesh.unit.positions).to(device)
        triangles = torch.from_numpy(mesh.unit.triangles).to(device)
        self.prior = prior or load_prior(config.prior, device)
        embeddings = encode_prompts(self.prior, config) if prior is None else prior.cached_embeddings
        self.prior.cached_embeddings = embeddings
        cameras = build_cameras(config, mesh.normalization, generator)
        views = ViewPool(positions, triangles, cameras, config.render_size,
                         with_control=self.prior.supports_controlnet)
        self.field = TextureField(config.hash_grid, seed=config.seed,
                                  channels=MATERIAL_CHANNELS[config.material]).to(device)
        self.initial = self.parameters()
        self.args = (self.field, self.prior, views, cameras, embeddings, config, generator, device)

    def parameters(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.field.parameters()]

    def parameters_list(self) -> list[list[torch.Tensor]]:
        """[initial parameters, current parameters], for updates()."""
        return [self.initial, self.parameters()]


def run_steps(job: Job, step_class) -> tuple[list[float], list[list[torch.Tensor]]]:
    step = step_class(*job.args)
    losses, parameters = [], [job.parameters()]
    for index in range(STEPS):
        losses.append(float(step(index)))
        parameters.append(job.parameters())
    return losses, parameters


def relative_difference(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    num = sum(float((a - e).double().norm() ** 2) for a, e in zip(actual, expected)) ** 0.5
    den = sum(float(e.double().norm() ** 2) for e in expected) ** 0.5
    return num / max(den, 1e-30)


def updates(parameters: list[list[torch.Tensor]], step: int) -> list[torch.Tensor]:
    return [a - b for a, b in zip(parameters[step], parameters[0])]


def assert_same_steps(actual, expected, loss_rtol: float = 1e-5, update_tolerance: float = 1e-4,
                      first_step_entrywise: bool = True) -> None:
    """Same losses; the same first update entry by entry; the same later updates as a whole.

    The padded formulation sums the MLP's gradients over more (zero) rows, so they can differ
    in the last bit; Adam moves every entry by about lr * sign(gradient), so after that an
    entry whose gradient is rounding noise can move differently: later steps are compared
    by the relative difference of the whole parameter update.
    """
    torch.testing.assert_close(torch.tensor(actual[0]), torch.tensor(expected[0]), rtol=loss_rtol, atol=1e-9)
    if first_step_entrywise:
        for a, e in zip(actual[1][1], expected[1][1]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7, msg="parameters after the first step")
    for step in range(2 if first_step_entrywise else 1, len(expected[1])):
        assert relative_difference(updates(actual[1], step), updates(expected[1], step)) < update_tolerance


@pytest.fixture(scope="module")
def latent_model(tiny_stable_diffusion):
    return tiny_stable_diffusion


@pytest.mark.parametrize("mode,lighting", [("csd", True), ("sds", False)])
def test_static_step_equals_eager_step_latent_with_controlnets(latent_model, mode, lighting):
    sd, controlnets = latent_model
    config = job_config(sd, controlnets, render_size=64, mode=mode, lighting=lighting)
    eager = run_steps(Job(config, torch.device("cpu")), EagerTextureStep)
    static = run_steps(Job(config, torch.device("cpu")), StaticTextureStep)
    assert all(torch.isfinite(torch.tensor(eager[0])))
    assert_same_steps(static, eager)
    # Something was learned, so the comparison is not trivially of unchanged parameters.
    assert any(not torch.equal(a, b) for a, b in zip(eager[1][0], eager[1][-1]))


def test_static_step_equals_eager_step_pixel_prior(tiny_pixel_prior):
    config = job_config(tiny_pixel_prior, None, render_size=32)
    eager = run_steps(Job(config, torch.device("cpu")), EagerTextureStep)
    static = run_steps(Job(config, torch.device("cpu")), StaticTextureStep)
    assert_same_steps(static, eager)


def test_padding_points_get_zero_gradient(latent_model):
    sd, controlnets = latent_model
    config = job_config(sd, controlnets, render_size=64)
    step = StaticTextureStep(*Job(config, torch.device("cpu")).args)
    step.load_inputs(0)
    points = step.points.clone().requires_grad_(True)
    step.points = points
    step.loss().backward()
    count = int((step.pixels < step.height * step.width).sum())
    assert step.n_max >= count > 0
    assert torch.all(points.grad[count:] == 0)
    assert points.grad[:count].abs().sum() > 0


def test_auto_mode_is_eager_on_cpu(tiny_pixel_prior):
    config = job_config(tiny_pixel_prior, None, render_size=32)
    step = make_texture_step(*Job(config, torch.device("cpu")).args)
    assert isinstance(step, EagerTextureStep) and not step.warnings


def gradients(field: TextureField) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in field.parameters()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("half_precision", [False, True])
def test_graphed_step_matches_eager_on_cuda(latent_model, half_precision, monkeypatch):
    # float32 means float32 here: cuDNN's default TF32 convolutions would add 1e-3 noise.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    sd, controlnets = latent_model
    config = job_config(sd, controlnets, render_size=64)
    config.prior.half_precision = half_precision
    device = torch.device("cuda")
    eager_job = Job(config, device)
    graphed_job = Job(config, device, prior=eager_job.prior)
    initial = graphed_job.parameters()
    graphed = make_texture_step(*graphed_job.args)
    assert isinstance(graphed, GraphedTextureStep), graphed.warnings
    # Capturing (with its warm-up steps) leaves the field exactly as it was.
    for a, e in zip(graphed_job.parameters(), initial):
        assert torch.equal(a, e)
    eager = EagerTextureStep(*eager_job.args)
    if half_precision:  # the float32 gradient of the first step, to judge both half-precision ones by
        reference_config = job_config(sd, controlnets, render_size=64)
        reference_config.prior.half_precision = False
        reference_job = Job(reference_config, device)
        EagerTextureStep(*reference_job.args)(0)
        reference = gradients(reference_job.field)
    eager_losses, graphed_losses = [], []
    for index in range(STEPS):
        eager_losses.append(float(eager(index)))
        graphed_losses.append(float(graphed(index)))
        if index == 0:  # the same gradient from the same parameters (later, Adam's sign-like first
            # steps turn rounding noise in near-zero gradients into whole learning-rate steps)
            difference = relative_difference(gradients(graphed_job.field), gradients(eager_job.field))
            if half_precision:
                # The classifier score is a difference of two noise predictions, so half-precision
                # rounding shows up relatively large in it: the graphed step (other kernels, other
                # roundings) must be about as close to the float32 gradient as the eager step is.
                graphed_error = relative_difference(gradients(graphed_job.field), reference)
                eager_error = relative_difference(gradients(eager_job.field), reference)
                assert graphed_error < 1.5 * eager_error + 1e-3, (graphed_error, eager_error, difference)
            else:
                assert difference < 1e-4, difference
    tolerance = 2e-2 if half_precision else 1e-3
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=tolerance, atol=1e-6)
    difference = relative_difference(updates(graphed_job.parameters_list(), 1),
                                     updates(eager_job.parameters_list(), 1))
    # A loose sanity bound: by now Adam has turned fp16 rounding in near-zero gradients into whole steps.
    assert difference < (0.3 if half_precision else 0.1), difference
