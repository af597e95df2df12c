"""PBR materials in the texture and edit jobs (issue 22): the 5-channel texture field (base colour,
roughness, metallic), the step that shades it under random environments (eager, static and graphed
alike), the `material` setting and its defaults, and edits that continue or convert a material.
Albedo jobs stay exactly what they were. (Whether a prior's "shiny" or "metallic" ends up in the
maps needs the bundled prior v2; the baked maps and their export are tested in test_pbr_export.py.)"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from engine.cli import build_parser, edit_config_from_args, main, texture_config_from_args
from engine.config import EditJobConfig, HashGridConfig, PriorConfig, TextureJobConfig, texture_config_from_job
from engine.errors import BadInputError
from engine.field.hashgrid import make_hash_grid
from engine.field.texture_field import (MATERIAL_CHANNELS, START_METALLIC, START_ROUGHNESS, TextureField,
                                        fit_field, query_in_chunks)
from engine.guidance.score_distillation import score_distillation_loss
from engine.job.state_files import TextureState
from engine.pipelines.texture_step import (EagerTextureStep, GraphedTextureStep, StaticTextureStep,
                                           make_texture_step, srgb_to_linear)
from engine.render.pbr import linear_to_srgb
from engine.render.shading import sample_backgrounds, sample_lighting, shade
from test_texture_step import STEPS, Job, assert_same_steps, job_config, relative_difference, run_steps, updates

REPO = Path(__file__).resolve().parents[1]
CUBE = REPO / "examples" / "cube.obj"
SMALL = HashGridConfig(levels=4, log2_table_size=10, base_resolution=4, per_level_scale=2.0, mlp_width=16)
CPU = torch.device("cpu")


def points(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, generator=torch.Generator().manual_seed(seed)) - 0.5


def output_layer(field: TextureField) -> torch.nn.Linear:
    return field.mlp[-1]


# ------------------------------------------------------------------------------ the field


def test_a_pbr_field_starts_as_a_matte_dielectric_with_the_albedo_fields_base_colour():
    albedo, pbr = TextureField(SMALL, seed=3), TextureField(SMALL, seed=3, channels=5)
    assert (albedo.channels, albedo.material, pbr.channels, pbr.material) == (3, "albedo", 5, "pbr")
    where = points(500)
    values = pbr(where)
    assert values.shape == (500, 5) and query_in_chunks(pbr, where[:0]).shape == (0, 5)
    torch.testing.assert_close(values[:, :3], albedo(where), rtol=0, atol=1e-6)  # 5-row matmuls round otherwise
    torch.testing.assert_close(values[:, 3], torch.full((500,), START_ROUGHNESS))
    torch.testing.assert_close(values[:, 4], torch.full((500,), START_METALLIC))
    assert 0.6 <= START_ROUGHNESS <= 0.8 and 0.0 <= START_METALLIC <= 0.1
    with pytest.raises(ValueError, match="3 \\(albedo\\) or 5 \\(pbr\\)"):
        TextureField(SMALL, channels=4)


def test_the_albedo_field_is_initialised_as_before_materials():
    """A 3-channel field's parameters are exactly the pre-PBR field's: the hash table from the seed,
    then every linear layer's weights and biases drawn uniformly from one generator seeded seed + 1."""
    field = TextureField(SMALL, seed=7)
    generator = torch.Generator().manual_seed(8)
    expected = {f"encoding.{name}": value for name, value in make_hash_grid(SMALL, 3, False, seed=7).state_dict().items()}
    widths = [make_hash_grid(SMALL, 3, False).output_dim] + [SMALL.mlp_width] * SMALL.mlp_hidden_layers + [3]
    for layer, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        bound = 1.0 / math.sqrt(width_in)
        expected[f"mlp.{2 * layer}.weight"] = torch.empty(width_out, width_in).uniform_(-bound, bound,
                                                                                          generator=generator)
        expected[f"mlp.{2 * layer}.bias"] = torch.empty(width_out).uniform_(-bound, bound, generator=generator)
    state = field.state_dict()
    assert set(state) == set(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def test_fields_convert_between_materials():
    albedo, pbr = TextureField(SMALL, seed=1), TextureField(SMALL, seed=2, channels=5)
    with torch.no_grad():  # a material that is not the start's, so keeping it is visible
        output_layer(pbr).bias[3:] = torch.tensor([-2.0, 1.5])
    where = points(200)

    widened = TextureField(SMALL, seed=9, channels=5)
    widened.load_any_material(albedo.state_dict())
    torch.testing.assert_close(widened(where)[:, :3], albedo(where), rtol=0, atol=1e-6)
    torch.testing.assert_close(widened(where)[:, 3:], torch.tensor([START_ROUGHNESS, START_METALLIC]).expand(200, 2))

    narrowed = TextureField(SMALL, seed=9)
    narrowed.load_any_material(pbr.state_dict())
    torch.testing.assert_close(narrowed(where), pbr(where)[:, :3], rtol=0, atol=1e-6)
    torch.testing.assert_close(pbr(where)[:, 3:], torch.sigmoid(torch.tensor([-2.0, 1.5])).expand(200, 2))

    same = TextureField(SMALL, seed=9, channels=5)
    same.load_any_material(pbr.state_dict())
    assert torch.equal(same(where), pbr(where))

    with pytest.raises(RuntimeError):  # another layout still does not fit
        TextureField(HashGridConfig(levels=4, log2_table_size=10, mlp_width=8), channels=5).load_any_material(
            albedo.state_dict())


def test_fitting_a_colour_keeps_a_pbr_fields_material_matte():
    field = TextureField(SMALL, seed=0, channels=5)
    where = points(2000)
    colours = torch.stack([where[:, 0] + 0.5, torch.full((2000,), 0.2), 0.5 - where[:, 2]], dim=-1)
    rmse = fit_field(field, where, colours, 150, torch.Generator().manual_seed(0))
    values = field(where).detach()
    assert rmse < 0.1 and (values[:, :3] - colours).abs().mean() < 0.1
    assert (values[:, 3] - START_ROUGHNESS).abs().max() < 0.05 and (values[:, 4] - START_METALLIC).abs().max() < 0.05


def test_srgb_decoding_inverts_the_encoding_and_has_finite_gradients():
    encoded = torch.linspace(0.0, 1.0, 257, dtype=torch.float64, requires_grad=True)
    linear = srgb_to_linear(encoded)
    torch.testing.assert_close(linear_to_srgb(linear), encoded.detach(), rtol=0, atol=1e-9)
    assert float(srgb_to_linear(torch.tensor(0.5))) == pytest.approx(0.21404, abs=1e-5)
    linear.sum().backward()
    assert torch.isfinite(encoded.grad).all() and (encoded.grad > 0).all()


# ------------------------------------------------------------------------------ the step


@pytest.fixture(scope="module")
def bundled_prior():
    """The bundled prior with job_config's prompts [prompt, "", negative] encoded (SDS uses the first two)."""
    from engine.pipelines.texture import encode_prompts
    from engine.prior.load import load_prior

    prior = load_prior(PriorConfig(model="bundled"), CPU)
    prior.csd_embeddings = encode_prompts(prior, job_config("bundled", None, render_size=64))
    return prior


def bundled_job(prior, material: str, mode: str = "csd") -> Job:
    """The texture job's set-up with the bundled prior at its 64 px (test_texture_step.Job)."""
    config = job_config("bundled", None, render_size=64, mode=mode, material=material)
    prior.cached_embeddings = prior.csd_embeddings if mode == "csd" else prior.csd_embeddings[:2]
    return Job(config, CPU, prior=prior)


@pytest.mark.parametrize("mode", ["csd", "sds"])
def test_the_distillation_gradient_reaches_roughness_and_metallic(bundled_prior, mode):
    job = bundled_job(bundled_prior, "pbr", mode)
    step = EagerTextureStep(*job.args)
    loss = step(0)
    layer = output_layer(job.field)
    assert torch.isfinite(loss)
    for gradient in (layer.weight.grad, layer.bias.grad):
        assert torch.isfinite(gradient).all()
        assert gradient[3:].abs().reshape(2, -1).sum(-1).min() > 0, "both roughness and metallic get a gradient"
    assert all(torch.isfinite(p.grad).all() for p in job.field.parameters())


def old_albedo_step(job: Job, optimizer: torch.optim.Optimizer, step: int) -> torch.Tensor:
    """The texture step as it was before materials, written out: the reference an albedo job must
    still match bit for bit."""
    field, prior, views, cameras, embeddings, config, generator, device = job.args
    index = int(torch.randint(len(cameras), (1,), generator=generator))
    view, _ = views.get(index)
    lighting = sample_lighting(cameras.index([index]).to(device), generator)
    background = sample_backgrounds(1, generator, device)
    albedo = torch.zeros(*view.mask.shape, 3, device=device)
    albedo[view.mask] = field(view.position[view.mask])
    rgb = shade(albedo, view.normal, view.mask, lighting, background)
    x = prior.images_to_model_input(rgb.permute(0, 3, 1, 2))
    loss = score_distillation_loss(prior, x, embeddings, config.guidance, step, generator, None).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def test_an_albedo_step_is_exactly_the_step_before_materials(bundled_prior):
    new = bundled_job(bundled_prior, "albedo")
    old = bundled_job(bundled_prior, "albedo")
    step = EagerTextureStep(*new.args)
    optimizer = torch.optim.Adam(old.field.parameters(), lr=old.config.learning_rate, eps=1e-15)
    for index in range(STEPS):
        assert torch.equal(step(index), old_albedo_step(old, optimizer, index))
    assert all(torch.equal(a, b) for a, b in zip(new.parameters(), old.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(new.parameters(), new.initial))


def test_pbr_static_step_equals_eager_step(tiny_stable_diffusion):
    sd, controlnets = tiny_stable_diffusion
    config = job_config(sd, controlnets, render_size=64, material="pbr")
    eager = run_steps(Job(config, CPU), EagerTextureStep)
    static = run_steps(Job(config, CPU), StaticTextureStep)
    assert all(math.isfinite(loss) for loss in eager[0])
    assert_same_steps(static, eager)
    # Roughness and metallic were learned, so the comparison covers them.
    assert not torch.equal(eager[1][0][-2][3:], eager[1][-1][-2][3:])


def test_pbr_renders_differ_from_albedo_renders_of_the_same_base_colour(bundled_prior):
    """The same base colour through both steps' renders: the PBR one is lit by an environment (and
    its highlights), not by the albedo's directional light, so the images differ."""
    renders = {}
    for material in ("albedo", "pbr"):
        step = StaticTextureStep(*bundled_job(bundled_prior, material).args)
        step.load_inputs(0)
        with torch.no_grad():
            renders[material] = step.render(step.field)
    assert renders["pbr"].shape == renders["albedo"].shape == (1, 64, 64, 3)
    assert 0.0 <= float(renders["pbr"].min()) and float(renders["pbr"].max()) <= 1.0
    assert (renders["pbr"] - renders["albedo"]).abs().mean() > 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_pbr_step_matches_eager_on_cuda(tiny_stable_diffusion, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 means float32 here
    sd, controlnets = tiny_stable_diffusion
    config = job_config(sd, controlnets, render_size=64, material="pbr")
    config.prior.half_precision = False
    device = torch.device("cuda")
    eager_job = Job(config, device)
    graphed_job = Job(config, device, prior=eager_job.prior)
    initial = graphed_job.parameters()
    graphed = make_texture_step(*graphed_job.args)
    assert isinstance(graphed, GraphedTextureStep), graphed.warnings
    assert all(torch.equal(a, e) for a, e in zip(graphed_job.parameters(), initial)), "capture leaves the field"
    eager = EagerTextureStep(*eager_job.args)
    eager_losses, graphed_losses = [], []
    for index in range(STEPS):
        eager_losses.append(float(eager(index)))
        graphed_losses.append(float(graphed(index)))
        if index == 0:
            gradients = [[p.grad for p in job.field.parameters()] for job in (graphed_job, eager_job)]
            assert relative_difference(*gradients) < 1e-4
    torch.testing.assert_close(torch.tensor(graphed_losses), torch.tensor(eager_losses), rtol=1e-3, atol=1e-6)
    assert relative_difference(updates(graphed_job.parameters_list(), 1), updates(eager_job.parameters_list(), 1)) < 0.1


# ------------------------------------------------------------------------------ the setting


def test_the_material_defaults_to_what_the_prior_knows():
    def resolved(**settings) -> str:
        config = TextureJobConfig(prompt="a cube", mesh="m.obj", out="o", **settings)
        config.validate()
        return config.material

    assert resolved(prior=PriorConfig(model="bundled")) == "albedo"  # the bundled prior v1 learned no materials
    assert resolved(prior=PriorConfig(model="some/model")) == "pbr"
    assert resolved(prior=PriorConfig(model="some/model"), lighting=False) == "albedo"  # unlit: no material shows
    assert resolved(prior=PriorConfig(model="bundled"), material="pbr") == "pbr"
    with pytest.raises(BadInputError, match="needs lighting"):
        resolved(material="pbr", lighting=False)


def test_the_material_flag_and_job_setting():
    parser = build_parser()
    args = parser.parse_args(["texture", "m.obj", "--prompt", "a cube", "--out", "o", "--material", "pbr"])
    assert texture_config_from_args(args).material == "pbr"
    args = parser.parse_args(["texture", "m.obj", "--prompt", "a cube", "--out", "o"])
    assert texture_config_from_args(args).material is None
    args = parser.parse_args(["edit", "src", "--target-prompt", "a", "--edit-prompt", "b", "--out", "o",
                              "--material", "albedo"])
    assert edit_config_from_args(args).material == "albedo"
    with pytest.raises(SystemExit):
        parser.parse_args(["texture", "m.obj", "--prompt", "a", "--out", "o", "--material", "gold"])
    assert texture_config_from_job({"prompt": "a", "material": "pbr"}, Path("m.obj"), Path("o")).material == "pbr"
    config = texture_config_from_job({"prompt": "a", "material": "gold"}, Path("m.obj"), Path("o"))
    with pytest.raises(BadInputError, match="material must be one of albedo, pbr"):
        config.validate()


def test_an_edit_continues_its_sources_material_unless_told():
    def resolved(source_material, model="bundled", **settings) -> str:
        config = EditJobConfig(source="s", target_prompt="a", edit_prompt="b", out="o", **settings)
        config.prior.model = model
        config.resolve_source_defaults({}, None, source_material)
        return config.material

    assert resolved("pbr") == "pbr" and resolved("albedo", model="some/model") == "albedo"
    assert resolved("pbr", material="albedo") == "albedo"
    assert resolved(None) == "albedo" and resolved(None, model="some/model") == "pbr"  # a mesh file: the preset's
    assert resolved("pbr", lighting=False) == "albedo"
    geometry = EditJobConfig(source="s", target_prompt="a", edit_prompt="b", out="o", edit_geometry=True)
    assert geometry.resolve_source_defaults({"stage2": {}}, None).material == "albedo"  # generate: albedo
    with pytest.raises(BadInputError, match="geometry edit"):
        EditJobConfig(source="s", target_prompt="a", edit_prompt="b", out="o", edit_geometry=True,
                      material="pbr").validate()


def test_a_texture_state_records_its_material(tmp_path):
    field = TextureField(SMALL, channels=5)
    TextureState(field.state_dict(), {}, {}, {"material": "pbr"}).save(tmp_path)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["material"] == "pbr"
    assert TextureState.load(tmp_path).material == "pbr"
    # States from before materials (and generate's refined albedo) name none: albedo.
    torch.save({"kind": "texture", "field": {}, "field_config": {}, "normalization": {}, "settings": {}},
               tmp_path / "state.pt")
    assert TextureState.load(tmp_path).material == "albedo"


# ------------------------------------------------------------------------------ the jobs


def run_cli(args) -> int:
    return main([str(a) for a in args])


def saved_state(folder: Path) -> dict:
    return torch.load(folder / "state.pt", weights_only=True)


def saved_field(folder: Path) -> TextureField:
    """The field a job saved, as its recorded material says (loading fails if its channels differ)."""
    state = saved_state(folder)
    field = TextureField(HashGridConfig(**state["field_config"]), channels=MATERIAL_CHANNELS[state["material"]])
    field.load_state_dict(state["field"])
    return field


FAST = ["--steps", "3", "--texture-size", "64", "--preview-every", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def pbr_texture_job(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pbr") / "out"
    code = run_cli(["texture", CUBE, "--prompt", "a shiny red cube", "--model", "bundled", "--material", "pbr",
                    "--out", out, *FAST])
    assert code == 0, (out / "result.json").read_text()
    return out


def test_a_pbr_texture_job_with_the_bundled_prior_saves_a_5_channel_field(pbr_texture_job):
    result = json.loads((pbr_texture_job / "result.json").read_text())
    assert result["status"] == "ok" and (pbr_texture_job / result["outputs"]["texture"]).is_file()
    state = saved_state(pbr_texture_job)
    assert state["material"] == "pbr" and state["settings"]["material"] == "pbr"
    field = saved_field(pbr_texture_job)
    assert output_layer(field).out_features == 5
    # Three steps moved roughness and metallic off their start: they were optimised.
    values = field(points(1000) * 0.9).detach()
    assert (values[:, 3] - START_ROUGHNESS).abs().max() > 1e-3 and (values[:, 4] - START_METALLIC).abs().max() > 1e-3


def test_an_edit_continues_a_pbr_state(pbr_texture_job, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(pbr_texture_job, source)
    out = tmp_path / "edited"
    code = run_cli(["edit", source, "--target-prompt", "a shiny blue cube", "--edit-prompt", "red", "--out", out,
                    *FAST])
    assert code == 0, (out / "result.json").read_text()
    assert saved_state(out)["material"] == "pbr" and saved_state(out)["settings"]["material"] == "pbr"
    before, after = output_layer(saved_field(source)), output_layer(saved_field(out))
    assert after.out_features == 5
    assert not torch.equal(after.weight[3:], before.weight[3:]), "the edit moved the material"


def test_an_edit_can_make_an_albedo_texture_a_pbr_material(tmp_path):
    source = tmp_path / "albedo"
    assert run_cli(["texture", CUBE, "--prompt", "a red cube", "--model", "bundled", "--out", source, *FAST]) == 0
    assert saved_state(source)["material"] == "albedo"
    out = tmp_path / "metal"
    # A learning rate so small that the result is where the edit started (three steps of the texture
    # job moved the base colour about 0.05 from a fresh field's).
    code = run_cli(["edit", source, "--target-prompt", "a red metal cube", "--edit-prompt", "", "--out", out,
                    "--material", "pbr", *FAST, "--lr", "1e-7"])
    assert code == 0, (out / "result.json").read_text()
    albedo, pbr = saved_field(source), saved_field(out)
    assert saved_state(out)["material"] == "pbr" and output_layer(pbr).out_features == 5
    where = points(1000) * 0.9
    with torch.no_grad():
        assert (pbr(where)[:, :3] - albedo(where)).abs().max() < 1e-3, "the albedo texture's base colour"
        assert (pbr(where)[:, 3:] - torch.tensor([START_ROUGHNESS, START_METALLIC])).abs().max() < 1e-3, "matte"


def test_a_state_of_an_unknown_material_is_refused(pbr_texture_job, tmp_path, capsys):
    source = tmp_path / "source"
    shutil.copytree(pbr_texture_job, source)
    state = saved_state(source)
    state["material"] = "gold"
    torch.save(state, source / "state.pt")
    code = run_cli(["edit", source, "--target-prompt", "a gold cube", "--edit-prompt", "", "--out", tmp_path / "out",
                    *FAST])
    stderr = capsys.readouterr().err
    assert code == 2 and "unknown material 'gold'" in stderr and "hint:" in stderr, stderr
