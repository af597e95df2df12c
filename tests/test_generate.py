"""The generate job (text -> textured mesh): mesh extraction on analytic densities, Perp-Neg
weights, stage 1 alone, stage 2 alone from a saved stage-1 state, resume after cancel, the
whole job, bad input, and (once the bundled prior ships) shape and colour of real results.

Everything runs on the CPU at tiny sizes with a tiny pixel prior built in code (or the
bundled prior where it is present)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import torch
import trimesh

from engine.config import to_dict
from engine.errors import BadInputError
from engine.job.progress import CancelToken, ProgressReporter
from engine.job.runner import run_pipeline
from engine.mesh.extract import drop_fins, fit_placement, mesh_from_grid, sample_density_grid
from engine.guidance.perp_neg import perp_neg_embeddings, relative_azimuth
from engine.job.state_files import NERF_STATE, REFINED_MESH_STATE
from engine.pipelines.generate import run_generate
from engine.cli import add_generate_arguments, generate_config_from_args
from engine.config import GenerateJobConfig
from engine.prior.load import BUNDLED_PRIOR_DIR



@pytest.fixture(scope="module")
def tiny_prior(tiny_pixel_prior) -> Path:
    """conftest's tiny IF-style pixel prior (16 px)."""
    return tiny_pixel_prior


def tiny_config(prior: Path, out: Path, **overrides) -> GenerateJobConfig:
    config = GenerateJobConfig(prompt="a red sphere", out=str(out), device="cpu", texture_size=64,
                               preview_every=4, checkpoint_every=3)
    s1, s2 = config.stage1, config.stage2
    s1.steps, s1.render_size, s1.samples_per_ray, s1.occupancy_resolution = 8, 24, 32, 16
    s1.batch_size_no_front = 1
    s1.hash_grid.levels, s1.hash_grid.log2_table_size, s1.hash_grid.mlp_width = 4, 12, 16
    s2.steps, s2.render_size = 4, 32
    s2.hash_grid.levels, s2.hash_grid.log2_table_size, s2.hash_grid.mlp_width = 4, 12, 16
    config.extract.resolution, config.extract.target_triangles = 32, 600
    for stage in (s1, s2):
        stage.prior.model = str(prior)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


class CancelAfter(CancelToken):
    """Cancels at the n-th check, as the add-on's cancel file would."""

    def __init__(self, checks: int):
        super().__init__()
        self.remaining = checks

    def check(self) -> None:
        self.remaining -= 1
        if self.remaining <= 0:
            self.requested = True
        super().check()


def run_job(config: GenerateJobConfig, cancel: CancelToken | None = None, events: list | None = None) -> tuple[int, dict]:
    out = Path(config.out)
    reporter = ProgressReporter(jsonl_path=None, to_stdout=False, human=False)
    if events is not None:
        original = reporter.emit

        def emit(event, **fields):
            events.append({"event": event, **fields})
            original(event, **fields)

        reporter.emit = emit
    code = run_pipeline("generate", to_dict(config), out, config.device, lambda ctx: run_generate(config, ctx),
                        reporter, cancel or CancelToken())
    return code, json.loads((out / "result.json").read_text())


# ------------------------------------------------------------------------------------------------
# Mesh extraction
# ------------------------------------------------------------------------------------------------

def sphere_density(points: torch.Tensor, centre=(0.0, 0.0, 0.0), radius: float = 0.4) -> torch.Tensor:
    """A density that crosses 10 at `radius` from `centre` (50 per unit inside)."""
    distance = (points - torch.tensor(centre)).norm(dim=-1)
    return 10.0 + 50.0 * (radius - distance)


def test_sphere_density_gives_a_clean_sphere_placed_on_the_ground():
    def density(points):
        main = sphere_density(points)
        floater = sphere_density(points, (0.75, 0.7, 0.0), 0.06)
        return torch.maximum(main, floater)

    grid = sample_density_grid(density, 1.0, 96, torch.device("cpu"))
    mesh, report = mesh_from_grid(grid, 1.0, 10.0, target_triangles=3000, min_component_fraction=0.1)
    assert report.components == 2 and report.kept_components == 1  # the floater is gone
    assert mesh.num_triangles <= 3000 and report.raw_triangles > 3000
    assert report.watertight
    radius = np.linalg.norm(mesh.positions, axis=1)
    assert abs(radius.mean() - 0.4) < 0.01 and radius.std() < 0.01
    tm = trimesh.Trimesh(mesh.positions, mesh.triangles, process=False)
    assert tm.volume > 0  # outward winding
    sphericity = np.pi ** (1 / 3) * (6 * tm.volume) ** (2 / 3) / tm.area
    assert sphericity > 0.98

    placement = fit_placement(mesh.positions, 1.0)
    world = placement.apply(mesh.positions)
    assert abs(world[:, 2].min()) < 1e-6  # on the ground plane
    assert abs((world.max(0) - world.min(0)).max() - 1.0) < 1e-5  # 1 m
    assert np.allclose((world.max(0) + world.min(0))[:2] / 2, 0.0, atol=1e-5)  # centred
    assert np.allclose(placement.invert(world), mesh.positions, atol=1e-5)


def edge_face_counts(triangles: np.ndarray) -> np.ndarray:
    edges = np.sort(triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def test_decimation_keeps_a_closed_surface_closed():
    # fast-simplification collapses this lumpy ball (608 triangles) to 248 with a zero-volume fin:
    # a face and its reversed twin, a second piece that is not a surface of anything.
    axis = np.linspace(-1.0, 1.0, 16)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = 10.0 * (1.0 - np.sqrt(x ** 2 + y ** 2 + z ** 2) / 0.7) + 3.0 * np.sin(2 * x + 1) * np.sin(6 * y) * np.cos(2 * z)
    mesh, report = mesh_from_grid(grid.astype(np.float32), 1.0, 2.5, target_triangles=248, min_component_fraction=0.0)
    tm = trimesh.Trimesh(mesh.positions, mesh.triangles, process=False)
    assert report.raw_triangles > 248 and report.watertight
    assert len(tm.split(only_watertight=False)) == 1
    assert (edge_face_counts(mesh.triangles) == 2).all()
    assert len(np.unique(np.sort(mesh.triangles, axis=1), axis=0)) == mesh.num_triangles


def test_a_fin_glued_to_a_closed_surface_is_dropped():
    # As decimation left one on a stage-1 cube: the fin's edge then had four faces.
    ball = trimesh.creation.icosphere(subdivisions=1)
    a, b = ball.faces[0, 0], ball.faces[0, 1]
    apex = len(ball.vertices)
    finned = np.concatenate([ball.faces, [[a, b, apex], [b, a, apex]]])
    assert edge_face_counts(finned).max() == 4
    kept = drop_fins(finned)
    assert np.array_equal(kept, ball.faces)
    assert trimesh.Trimesh(np.concatenate([ball.vertices, [[0.0, 0.0, 1.0]]]), kept, process=False).is_watertight


def test_placement_keeps_the_front_towards_minus_y():
    """A nose on the -Y side (the front camera's side in the NeRF) stays on -Y in the world."""
    def density(points):
        return torch.maximum(sphere_density(points), sphere_density(points, (0.0, -0.4, 0.1), 0.12))

    mesh, _ = mesh_from_grid(sample_density_grid(density, 1.0, 64, torch.device("cpu")), 1.0, 10.0, 5000, 0.1)
    placement = fit_placement(mesh.positions, 1.0)
    world = placement.apply(mesh.positions)
    body_centre = placement.apply(np.zeros((1, 3)))[0]
    tip = world[np.argmax(np.linalg.norm(world - body_centre, axis=1))] - body_centre
    assert tip[1] < -0.9 * np.linalg.norm(tip)  # the nose points along -Y


def test_empty_or_weak_density_is_reported():
    from engine.errors import EngineError

    weak = np.full((16, 16, 16), 0.1, np.float32)
    weak[6:10, 6:10, 6:10] = 2.0
    mesh, report = mesh_from_grid(weak, 1.0, 10.0, 1000, 0.1)
    assert report.threshold == pytest.approx(1.0) and report.warnings and mesh.num_triangles > 0
    with pytest.raises(EngineError, match="no object"):
        mesh_from_grid(np.zeros((16, 16, 16), np.float32), 1.0, 10.0, 1000, 0.1)


def test_perp_neg_weights_follow_the_view():
    """The released assignment (tests/test_perp_neg.py checks it against the formula): from the
    front the side view is removed, from the back mostly the front view."""
    views = torch.stack([torch.full((2, 4), float(i)) for i in range(4)])  # front, side, back, overhead
    azimuth = torch.tensor([-90.0, 0.0, 90.0, -135.0])  # front, side, back, front-side
    assert torch.allclose(relative_azimuth(azimuth), torch.tensor([0.0, 90.0, -180.0, -45.0]))
    positive, others, weights = perp_neg_embeddings(views, torch.zeros(4), azimuth, scale=3.0, overhead_deg=60.0)
    assert torch.allclose(positive[:, 0, 0], torch.tensor([0.0, 1.0, 2.0, 0.5]))
    assert others.shape == (2, 4, 2, 4)
    assert torch.equal(others[:, 0, 0, 0], torch.tensor([0.0, 1.0]))  # front: [front, side]
    assert torch.allclose(weights[:, 0], torch.tensor([0.0, 3.0 * 1.574]), atol=1e-2)  # the front itself: 0
    assert torch.equal(others[:, 2, 0, 0], torch.tensor([1.0, 0.0]))  # back: [side, front]
    assert float(weights[1, 2]) > 4 * float(weights[0, 2]) > 0  # the front view, removed most


# ------------------------------------------------------------------------------------------------
# The job
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1_run(tiny_prior, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    code, result = run_job(tiny_config(tiny_prior, out, stages="1"))
    assert code == 0, result["error"]
    return out


def test_stage1_alone_writes_a_state_and_a_mesh(stage1_run):
    result = json.loads((stage1_run / "result.json").read_text())
    assert result["status"] == "ok"
    for key in ("glb", "obj", "texture", "preview", "state_stage1", "config"):
        assert (stage1_run / result["outputs"][key]).is_file(), key
    assert "state_stage2" not in result["outputs"]
    state = torch.load(stage1_run / NERF_STATE, weights_only=False)
    assert state["complete"] and state["step"] == 8 and state["kind"] == "generate-stage1"
    assert (stage1_run / "previews" / "view_000004.png").is_file()


def test_stage2_alone_from_a_saved_stage1_state(stage1_run, tiny_prior, tmp_path):
    config = tiny_config(tiny_prior, tmp_path, stages="2", stage1_state=str(stage1_run / NERF_STATE))
    events: list = []
    code, result = run_job(config, events=events)
    assert code == 0, result["error"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps == [1, 2, 3, 4]  # no stage-1 steps
    state = torch.load(tmp_path / REFINED_MESH_STATE, weights_only=False)
    assert state["complete"] and state["step"] == 4
    mesh = trimesh.load(tmp_path / result["outputs"]["glb"], force="mesh")
    assert len(mesh.faces) > 100
    # Blender's world after import (glTF is Y-up): the asset stands on the ground, ~1 m.
    lo, hi = mesh.bounds
    assert abs(lo[1]) < 1e-4 and abs((hi - lo).max() - 1.0) < 0.05


def test_stage2_searches_planar_regions_every_planar_every_steps(stage1_run, tiny_prior, tmp_path, monkeypatch):
    import engine.pipelines.kit.refinement as refinement

    searched: list[int] = []

    def counting(positions, *args):
        searched.append(positions.shape[0])
        return find_planar_regions(positions, *args)

    find_planar_regions = refinement.find_planar_regions
    monkeypatch.setattr(refinement, "find_planar_regions", counting)
    config = tiny_config(tiny_prior, tmp_path, stages="2", stage1_state=str(stage1_run / NERF_STATE))
    config.stage2.planar_weight, config.stage2.planar_every = 100.0, 2
    code, result = run_job(config)
    assert code == 0, result["error"]
    assert len(searched) == 2  # steps 0 and 2 of 4


def test_stage2_without_a_stage1_state_is_bad_input(tiny_prior, tmp_path):
    code, result = run_job(tiny_config(tiny_prior, tmp_path, stages="2"))
    assert code == 2 and result["error"]["kind"] == "bad_input"


def test_full_job_then_resume_after_cancel(tiny_prior, tmp_path):
    config = tiny_config(tiny_prior, tmp_path / "run")
    # Cancel during stage 1 (the 6th check is step 6's): a partial state is saved.
    code, result = run_job(config, cancel=CancelAfter(6))
    assert code == 130 and result["status"] == "cancelled"
    assert result["outputs"]["state_stage1"] == NERF_STATE
    partial = torch.load(tmp_path / "run" / NERF_STATE, weights_only=False)
    assert partial["step"] == 5 and not partial["complete"]

    # Resume: stage 1 continues at step 6, then stage 2 and the export run.
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    resumed = generate_config_from_args(parser.parse_args(["--resume", str(tmp_path / "run")]))
    assert resumed.resume and resumed.stage1.steps == 8 and resumed.stage1.prior.model == str(tiny_prior)
    events: list = []
    code, result = run_job(resumed, events=events)
    assert code == 0, result["error"]
    steps = [e["step"] for e in events if e["event"] == "step"]
    assert steps[0] == 6 and steps[-1] == 12
    assert any(e["event"] == "resumed" and e["step"] == 5 for e in events)
    out = tmp_path / "run"
    for key in ("glb", "obj", "mtl", "texture", "preview", "state_stage1", "state_stage2", "state"):
        assert (out / result["outputs"][key]).is_file(), key
    assert result["timings"]["total_s"] > 0
    assert torch.load(out / REFINED_MESH_STATE, weights_only=False)["complete"]


def test_bad_settings_end_in_bad_input(tiny_prior, tmp_path):
    config = tiny_config(tiny_prior, tmp_path, prompt="  ")
    code, result = run_job(config)
    assert code == 2 and result["status"] == "error" and "prompt" in result["error"]["message"]
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    with pytest.raises(BadInputError):
        generate_config_from_args(parser.parse_args(["--out", str(tmp_path)]))
    with pytest.raises(BadInputError, match="Nothing to resume"):
        generate_config_from_args(parser.parse_args(["--resume", str(tmp_path / "nothing")]))
    config = tiny_config(tiny_prior, tmp_path)
    config.stage1.geometry_render = "wireframe"
    with pytest.raises(BadInputError):
        config.validate()
    config = tiny_config(tiny_prior, tmp_path)
    config.stage2.normal_consistency = "squared"
    with pytest.raises(BadInputError, match="normal_consistency"):
        config.validate()
    config = tiny_config(tiny_prior, tmp_path)
    config.extract.opening_radius = -0.1
    with pytest.raises(BadInputError, match="opening_radius"):
        config.validate()


def test_bundled_preset_lies_under_the_settings_given():
    from engine.config import generate_config_from_job

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    # Given values win, the paper's own values among them (10000 steps, 64 px renders).
    config = generate_config_from_args(parser.parse_args(
        ["--prompt", "a blue cube", "--out", "x", "--steps1", "50", "--render-size1", "64"]))
    assert (config.stage1.steps, config.stage1.render_size) == (50, 64)
    assert config.stage1.cameras.distance == (2.5, 3.3) and config.stage2.steps == 300  # the preset
    assert (config.stage1.guidance.w2_start, config.stage2.guidance.w2_end) == (0.5, 0.0)
    assert (config.extract.threshold, config.extract.opening_radius) == (2.5, 0.08)
    assert (config.stage2.planar_weight, config.stage2.planar_crease_deg, config.stage2.planar_upright_deg) == (
        150.0, 60.0, 8.0)
    assert (config.stage1.guidance.t_min, config.stage2.guidance.t_min) == (0.3, 0.02)
    assert (config.stage2.normal_consistency, config.stage2.vertex_learning_rate(0.05)) == ("angle", 0.11 * 0.05)
    from_job = generate_config_from_job({"prompt": "a blue cube", "stage1": {"steps": 10_000, "batch_size_no_front": 4},
                                         "stage2": {"normal_consistency": "cosine"}}, Path("x"))
    assert (from_job.stage1.steps, from_job.stage1.batch_size_no_front) == (10_000, 4)
    assert from_job.stage2.normal_consistency == "cosine" and from_job.stage1.render_size == 32
    # A stage guided by another prior starts from the paper's settings.
    real = {"stage1": {"prior": {"model": "DeepFloyd/IF-I-XL-v1.0"}}, "stage2": {"prior": {"model": "sd-2-1-base"}}}
    paper = GenerateJobConfig(prompt="a corgi", out="x")
    paper.stage1.prior.model, paper.stage2.prior.model = "DeepFloyd/IF-I-XL-v1.0", "sd-2-1-base"
    assert to_dict(generate_config_from_job({"prompt": "a corgi", **real}, Path("x"))) == to_dict(paper)
    mixed = generate_config_from_job({"prompt": "a corgi", "stage2": real["stage2"]}, Path("x"))
    assert mixed.stage1.render_size == 32 and mixed.stage2.steps == paper.stage2.steps


class StageOneSpy:
    """Records what stage 1 renders and asks the prior each step (wrapping generate's own calls)."""

    def __init__(self, monkeypatch):
        import engine.pipelines.generate as generate

        self.lit: list[bool] = []
        self.ambient: list[float] = []
        self.geometry = 0
        self.cameras: list = []
        self.embeddings: list[torch.Tensor] = []
        self.encoded: list[torch.Tensor] = []
        shade_albedo, shade_geometry = generate.shade_albedo, generate.shade_geometry
        render_nerf, distill = generate.render_nerf, generate.score_distillation_loss
        encode = generate.encode_nerf_prompts

        def albedo(render, lighting, background):
            self.lit.append(lighting is not None)
            if lighting is not None:
                self.ambient += lighting.ambient.tolist()
            return shade_albedo(render, lighting, background)

        def geometry(*args):
            self.geometry += 1
            return shade_geometry(*args)

        def render(model, cameras, *args, **kwargs):
            if args[1] is not None:  # training renders (jittered), not previews
                self.cameras.append(cameras)
            return render_nerf(model, cameras, *args, **kwargs)

        def loss(prior, x, embeddings, *args, **kwargs):
            self.embeddings.append(embeddings)
            return distill(prior, x, embeddings, *args, **kwargs)

        def encoded(*args):
            self.encoded.append(encode(*args))
            return self.encoded[-1]

        monkeypatch.setattr(generate, "shade_albedo", albedo)
        monkeypatch.setattr(generate, "shade_geometry", geometry)
        monkeypatch.setattr(generate, "render_nerf", render)
        monkeypatch.setattr(generate, "score_distillation_loss", loss)
        monkeypatch.setattr(generate, "encode_nerf_prompts", encoded)


def test_stage1_shows_the_albedo_alone_until_the_released_step_then_the_released_light(tiny_prior, tmp_path,
                                                                                       monkeypatch):
    """The released material: albedo only for the first half (5,000 of 10,000 steps, scaled: 4 of 8),
    then lit renders (here asked for at every step) with ambient 0.1 and diffuse 0.9."""
    config = tiny_config(tiny_prior, tmp_path, stages="1", preview_every=0)
    config.stage1.lighting_prob, config.stage1.geometry_render_prob = 1.0, 0.0
    spy = StageOneSpy(monkeypatch)
    code, result = run_job(config)
    assert code == 0, result["error"]
    assert spy.lit == [False] * 4 + [True] * 4
    assert spy.ambient == pytest.approx([0.1] * 4)


def test_stage1_defaults_are_the_released_material():
    """After the albedo-only half: half geometry-only renders, the others albedo (the released
    diffuse_prob 0.5 with textureless_prob 1 never lights the RGB render); fixed ambient 0.1."""
    stage = GenerateJobConfig(prompt="a corgi", out="x").stage1
    assert (stage.ambient_only_steps, stage.geometry_render_start, stage.geometry_render_prob) == (5000, 5000, 0.5)
    assert (stage.lighting_prob, stage.light_ambient) == (0.0, (0.1, 0.1))
    for name, value in (("light_ambient", (0.7, 0.5)), ("light_ambient", (0.1, 1.2)), ("light_jitter", -1.0),
                        ("ambient_only_steps", -1), ("view_front_deg", 95.0), ("view_overhead_deg", 120.0)):
        bad = GenerateJobConfig(prompt="a corgi", out="x")
        setattr(bad.stage1, name, value)
        with pytest.raises(BadInputError, match=name):
            bad.stage1.validate()


def test_stage1_without_perp_neg_prompts_each_sample_with_its_view(tiny_prior, tmp_path, monkeypatch):
    """"a red sphere" has no clear front, so no Perp-Neg: each of the batch's views is guided by the
    prompt with its own view words (released view-dependent prompting), "" and the negative shared."""
    from engine.guidance.perp_neg import view_indices

    config = tiny_config(tiny_prior, tmp_path, stages="1", preview_every=0)
    config.stage1.steps, config.stage1.batch_size_no_front = 3, 4
    spy = StageOneSpy(monkeypatch)
    code, result = run_job(config)
    assert code == 0, result["error"]
    prompts = spy.encoded[0]
    assert prompts.shape[0] == 7  # prompt, "", negative, front, side, back, overhead
    seen = set()
    for cameras, embeddings in zip(spy.cameras, spy.embeddings):
        views = view_indices(cameras.elevation, cameras.azimuth, 30.0, 30.0, 60.0)
        seen.update(views.tolist())
        assert embeddings.shape == (3, 4, *prompts.shape[1:])
        assert torch.equal(embeddings[0], prompts[3 + views])
        assert torch.equal(embeddings[1], prompts[1].expand(4, -1, -1))
        assert torch.equal(embeddings[2], prompts[2].expand(4, -1, -1))
    assert len(seen) > 1


def test_bundled_preset_keeps_its_light_and_bare_prompts():
    """The bundled prior was trained on the texture job's light and tuned without view words: its
    preset keeps both, whatever stage 1's paper defaults are."""
    from engine.render.shading import AMBIENT_RANGE, LIGHT_DIRECTION_JITTER

    stage = GenerateJobConfig.defaults_for("a blue cube", "x").stage1
    assert (stage.ambient_only_steps, stage.light_ambient, stage.light_jitter) == (0, AMBIENT_RANGE,
                                                                                    LIGHT_DIRECTION_JITTER)
    assert (stage.lighting_prob, stage.view_prompts) == (0.85, False)


def test_perp_neg_auto_skips_prompts_without_a_front():
    assert not GenerateJobConfig(prompt="a red sphere", out="x").use_perp_neg()
    assert not GenerateJobConfig(prompt="two blue cubes", out="x").use_perp_neg()
    assert GenerateJobConfig(prompt="a corgi", out="x").use_perp_neg()


# ------------------------------------------------------------------------------------------------
# With the bundled prior: the right shape and colour
# ------------------------------------------------------------------------------------------------

bundled = pytest.mark.skipif(not (BUNDLED_PRIOR_DIR / "model_index.json").is_file(),
                             reason="the bundled prior is not in this checkout yet")


def nearest_colour(texture: np.ndarray) -> str:
    from judge.palette import CHROMATIC, PALETTE

    median = np.median(texture.reshape(-1, 3).astype(np.float32) / 255.0, axis=0)
    return min(CHROMATIC, key=lambda name: float(np.sum((np.asarray(PALETTE[name]) - median) ** 2)))


@bundled
@pytest.mark.parametrize("prompt, shape, colour", [("a red sphere", "sphere", "red"), ("a blue cube", "cube", "blue")])
def test_bundled_prior_makes_the_asked_shape_and_colour(prompt, shape, colour, tmp_path):
    """`generate --model bundled` exactly as the CLI runs it (the preset in engine/config/presets.py, its
    10,000-triangle mesh and 512 px texture); judged by judge and the mesh's shape measures."""
    from PIL import Image

    from judge.geometry import flat_share, load_closed_mesh, sphericity
    from judge.results import judge_result

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    config = generate_config_from_args(parser.parse_args(
        ["--prompt", prompt, "--model", "bundled", "--out", str(tmp_path), "--device", "cpu", "--preview-every", "0",
         "--checkpoint-every", "0"]))
    code, result = run_job(config)
    assert code == 0, result["error"]
    assert (config.stage1.steps, config.stage1.render_size, config.stage2.steps) == (300, 32, 300)  # the preset
    assert (config.extract.resolution, config.extract.target_triangles) == (64, 10_000)
    verdict = judge_result(tmp_path)
    mesh = load_closed_mesh(tmp_path / result["outputs"]["glb"])
    assert mesh.is_watertight
    roundness, flat = sphericity(mesh), flat_share(mesh)
    assert verdict["shape"] == shape, (verdict["probabilities"]["shape"], roundness, flat)
    # Measured (docs/benchmarks.md, eighth session): the ball 0.99 with no flat side; the cube 0.81
    # with 93% of its area on flat sides here (two threads; seeds 0-3 on one thread: 0.77-0.81 and
    # 92-98%; a clean cube: 0.81 and 100%; with the seventh session's preset, leaning sides: 71% here;
    # without creases between the regions 0.83-0.87 and 45-78%; before planar regions: 0.92 and 13-18%).
    if shape == "sphere":
        assert roundness > 0.95 and flat < 0.02, (roundness, flat)
    else:
        assert roundness < 0.85 and flat > 0.75, (roundness, flat)
    assert verdict["colour"] == colour, verdict["colour_fractions"]
    texture = np.asarray(Image.open(tmp_path / result["outputs"]["texture"]).convert("RGB"))
    assert nearest_colour(texture) == colour


def test_bundled_preset_sees_the_object_as_the_prior_was_trained():
    """The preset's cameras are the bundled prior's training cameras (world.json): stage 2's all of
    them, stage 1's the lower part of their elevations. A retrained prior with other views cannot
    silently keep the old ones."""
    from engine.config import preset_for

    stage1_preset, stage2_preset = preset_for("generate.stage1", "bundled")["stage1"], preset_for("generate.stage2", "bundled")["stage2"]

    world = json.loads((Path(__file__).resolve().parents[1] / "engine" / "prior" / "bundled" / "world.json").read_text())
    trained = {key: tuple(world["training_cameras"][key]) for key in ("elevation_deg", "distance", "fovy_deg")}
    assert {key: tuple(value) for key, value in stage2_preset["cameras"].items()} == trained
    stage1 = {key: tuple(value) for key, value in stage1_preset["cameras"].items()}
    for key in ("distance", "fovy_deg"):
        assert stage1[key] == trained[key]
    low, high = stage1["elevation_deg"]
    assert low == trained["elevation_deg"][0] and low < high < trained["elevation_deg"][1]
    assert tuple(stage1_preset["elevation_no_front_deg"]) == stage1["elevation_deg"]


def test_angle_normal_consistency_prefers_one_sharp_fold_to_two_soft_ones():
    """A strip turning 90 degrees: the released 1 - cos form costs one sharp fold more than two
    45-degree folds (it rounds edges); the "angle" form, the reverse (it keeps flat sides flat), and
    the "robust" form more so (it sharpens edges)."""
    from engine.refine.losses import face_adjacency, normal_consistency
    from engine.render.antialias import edge_neighbours

    def strip(profile: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        # Two triangles per profile segment, extruded along y; each fold is one adjacent pair across it.
        points = [(x, y, z) for x, z in profile for y in (0.0, 1.0)]
        triangles = [(2 * i, 2 * i + 2, 2 * i + 1) for i in range(len(profile) - 1)]
        triangles += [(2 * i + 1, 2 * i + 2, 2 * i + 3) for i in range(len(profile) - 1)]
        return torch.tensor(points), torch.tensor(triangles)

    sharp = strip([(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])
    soft = strip([(0.0, 0.0), (0.7, 0.0), (1.0, 0.3), (1.0, 1.0)])

    def total(mesh, form):
        adjacency = face_adjacency(edge_neighbours(mesh[1]))
        return float(normal_consistency(*mesh, adjacency, form)) * adjacency.shape[0]

    assert total(sharp, "cosine") > total(soft, "cosine")
    assert total(sharp, "angle") < total(soft, "angle")
    # 0.78 at ROBUST_SCALE 0.5: one sharp fold costs 72% of two soft ones, against the angle form's 92%.
    assert total(sharp, "robust") / total(soft, "robust") < 0.85 * total(sharp, "angle") / total(soft, "angle")


def test_vertex_learning_rate_follows_the_edge_length():
    """offset_learning_rate_per_edge: the same step in edge lengths on a coarse and a fine mesh."""
    from engine.config import HashGridConfig
    from engine.refine.refinable_mesh import RefinableMesh
    from engine.config import RefineStageConfig

    stage = RefineStageConfig(offset_learning_rate_per_edge=0.1)
    rates = []
    for subdivisions in (2, 4):
        ball = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
        mesh = RefinableMesh(ball.vertices, ball.faces, HashGridConfig(levels=2, log2_table_size=8))
        edge = float(ball.edges_unique_length.mean())
        assert mesh.mean_edge_length() == pytest.approx(edge, rel=1e-5)
        rates.append(stage.vertex_learning_rate(mesh.mean_edge_length()))
        assert rates[-1] == pytest.approx(0.1 * edge, rel=1e-5)
    assert rates[1] == pytest.approx(rates[0] / 4, rel=0.05)  # two subdivisions halve the edges twice
    assert RefineStageConfig().vertex_learning_rate(0.05) == RefineStageConfig().offset_learning_rate


def test_opening_removes_a_stalk_and_keeps_the_body():
    """A ball on a thin stalk (as a NeRF can leave under an object): the opened density's mesh
    has the ball and not the stalk."""
    from engine.mesh.extract import open_density

    def density(points):
        ball = sphere_density(points, radius=0.4)
        radial = points[:, :2].norm(dim=-1)
        stalk = ((radial < 0.04) & (points[:, 2] < 0.0) & (points[:, 2] > -0.8)).float() * 30.0
        return torch.maximum(ball, stalk)

    grid = sample_density_grid(density, 1.0, 64, torch.device("cpu"))
    plain, _ = mesh_from_grid(grid, 1.0, 10.0, 4000, 0.1)
    opened, report = mesh_from_grid(open_density(grid, 2), 1.0, 10.0, 4000, 0.1)
    assert plain.positions[:, 2].min() < -0.75  # the stalk is there...
    assert opened.positions[:, 2].min() > -0.45  # ... and gone; the ball (down to -0.4) stays
    assert report.watertight
    radius = np.linalg.norm(opened.positions, axis=1)
    assert 0.36 < radius.mean() < 0.42
