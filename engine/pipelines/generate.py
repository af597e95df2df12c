"""Generate a textured 3D asset from a text prompt with Classifier Score Distillation.

Read top to bottom, this is the whole job (paper sections 5.1, 5.2, A.4; Magic3D's two stages):
  1. stage 1, a NeRF: hash-grid density and albedo, volume rendering with an occupancy
     grid, 64 x 64 renders judged by a pixel-space prior (DeepFloyd IF stage I style);
     CSD with the negative prompt annealed in, Perp-Neg with view prompts (or, without it,
     each sample's own view prompt), albedo-only renders in the first half, orientation and
     sparsity losses, geometry-only renders in the second half;
  2. the density's isosurface as a clean mesh (floaters removed, decimated), placed on the
     ground at the origin, facing -Y, about 1 m, and mapped into the unit box;
  3. stage 2, the mesh refined: vertex offsets and a surface albedo field (first fitted to the
     colours the NeRF shows, as the released code inherits stage 1's field), rasterised at
     512 for a latent prior (Stable Diffusion 2.1 base style), CSD with the negative weight
     annealed from 1 to 0.5, normal consistency, geometry-only renders half of the time;
  4. export as the texture job does: UV unwrap, bake with seam padding, GLB and OBJ, the
     preview sheet, and the states of both stages (for resuming and editing).

With the bundled prior, each stage it guides uses the preset in engine/config/presets.py instead of
the paper's settings (they are made for DeepFloyd IF and Stable Diffusion).

Each stage saves its state every `checkpoint_every` steps, at its end, and when cancelled;
`resume` picks up where the saved states stop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import CONFIG_FILE, GenerateJobConfig, NerfStageConfig, save_config, to_dict, update_from_dict
from ..errors import BadInputError
from ..bake.bake import bake_texture
from ..field.texture_field import fit_field
from ..guidance.perp_neg import (FRONT_AZIMUTH_DEG, VIEW_SUFFIXES, perp_neg_distillation_loss, perp_neg_embeddings,
                                 view_prompt_embeddings)
from ..guidance.score_distillation import score_distillation_loss
from ..job.runner import JobContext
from ..job.state_files import NERF_STATE, REFINED_MESH_STATE, NerfState, RefinedMeshState, applying_state
from ..mesh.extract import ExtractionReport, Placement, extract_mesh, fit_placement
from ..mesh.sampling import sample_surface
from ..mesh.types import Normalization, TriangleMesh
from ..nerf.background import LearnedBackground
from ..nerf.field import NerfField
from ..nerf.losses import ramp, sparsity_loss
from ..nerf.occupancy import OccupancyGrid
from ..nerf.renderer import RAY_CHUNK, NerfModel, render_nerf, render_rays, shade_albedo, shade_geometry
from ..prior.base import DiffusionPrior
from ..prior.fast.graphed import use_cuda_graphs
from ..prior.fast.vae_encoding import FastVaeEncoder
from ..prior.load import load_prior
from ..refine.refinable_mesh import RefinableMesh
from ..render.cameras import Cameras, orbit_cameras, sample_cameras
from ..render.shading import sample_backgrounds, sample_lighting, shade
from .kit.loop import LoopPlan, run_loop
from .kit.outputs import export_textured_mesh, mesh_for_export, on_the_ground, save_texture_state, write_preview
from .kit.prompts import encode_prompts_once
from .kit.refinement import PREVIEW_SIZE, ShapeRegulariser, render_mesh_geometry, render_mesh_preview

SURFACE_COLOUR_SAMPLES = 1 << 16
SURFACE_LOOK_BACK = 0.25  # where the colour rays start outside the surface, as a share of the NeRF's bound
SURFACE_NORMAL_EPS = 0.01
DIVERGED_HINT = "Try another --seed."


@dataclass
class Progress:
    """Global step numbering over the stages that run, for the progress events."""

    offset: int
    total: int


def run_generate(config: GenerateJobConfig, context: JobContext) -> dict[str, str]:
    config.validate()
    out, device, reporter = context.output_dir, context.device, context.reporter
    outputs = context.outputs  # filled as files appear, so a cancelled run reports its partial state
    torch.manual_seed(config.seed)
    outputs["config"] = save_config(config, out)
    run_stage1 = config.stages in ("all", "1")
    run_stage2 = config.stages in ("all", "2")
    if config.resume or not run_stage1:
        # The run writes a fresh folder (engine/job/outputs.py): it continues the previous attempt's states.
        context.carry_over(NERF_STATE, REFINED_MESH_STATE)
    stage1_path = stage1_state_path(config, out)
    total = (config.stage1.steps if run_stage1 else 0) + (config.stage2.steps if run_stage2 else 0)

    # 1. Stage 1: the NeRF.
    stage1_done = NerfState.load(stage1_path.parent, stage1_path.name) if (config.resume or not run_stage1) else None
    if not run_stage1 and (stage1_done is None or not stage1_done.complete):
        raise BadInputError(f"Stage 2 needs a finished stage-1 state; {stage1_path} is missing or incomplete.",
                            "Run stage 1 first (--stages 1 or all), or pass --stage1-state.")
    with context.timed("stage1_s"):
        if run_stage1 and not (stage1_done is not None and stage1_done.step >= config.stage1.steps):
            nerf = optimise_nerf(config, context, stage1_done, Progress(0, total))
        else:
            with applying_state(stage1_path):
                nerf = nerf_from_state(stage1_done, device)
    if run_stage1:
        outputs["state_stage1"] = NERF_STATE

    # 2. Density -> mesh, placed in the world, and its unit-box twin.
    stage2_done = RefinedMeshState.load(out) if config.resume and run_stage2 else None
    if stage2_done is None:
        reporter.stage("extracting mesh")
        with context.timed("extract_s"):
            world, placement, report = extract_placed_mesh(nerf, config, device)
        reporter.warnings(report.warnings)
        reporter.emit("mesh", triangles=report.triangles, vertices=world.num_vertices, watertight=report.watertight,
                      threshold=report.threshold, removed_pieces=report.components - report.kept_components)
        normalization = Normalization.fit(world.positions, "Z")
        unit = world.with_positions(normalization.to_unit(world.positions))
    else:
        with applying_state(out / REFINED_MESH_STATE):
            placement = Placement.from_dict(stage2_done.placement)
            normalization = Normalization.from_dict(stage2_done.normalization)
        unit = None  # the refinable mesh comes from the state
    context.cancel.check()

    if not run_stage2:
        # Stage 1 alone: export the extracted mesh with the NeRF's albedo.
        def albedo(points: torch.Tensor) -> torch.Tensor:
            world_points = normalization.from_unit(points.cpu().numpy())
            nerf_points = torch.from_numpy(placement.invert(world_points)).to(device)
            return nerf_seen_albedo(nerf, nerf_points)

        outputs.update(export_asset(out, unit, normalization, albedo, config, context))
        return dict(outputs)

    # 3. Stage 2: refine the mesh, its albedo field starting from the NeRF's colours.
    start_colours = None if unit is None else nerf_surface_colours(nerf, unit, placement, normalization, config.seed)
    nerf = None  # frees the NeRF before stage 2 loads its prior
    with context.timed("stage2_s"):
        refined = refine_mesh(config, context, unit, placement, normalization, stage2_done,
                              Progress(config.stage1.steps if run_stage1 else 0, total), start_colours)
    outputs["state_stage2"] = REFINED_MESH_STATE

    # 4. Export, back on the ground: refinement may have moved the lowest vertices.
    final_unit = TriangleMesh(refined.positions().detach().cpu().numpy(), refined.triangles.cpu().numpy())
    normalization = on_the_ground(normalization, final_unit.positions)
    outputs.update(export_asset(out, final_unit, normalization, lambda p: refined.texture(p), config, context,
                                texture_field=refined.texture))
    return dict(outputs)


# ------------------------------------------------------------------------------------------------
# Stage 1: NeRF
# ------------------------------------------------------------------------------------------------

def stage1_state_path(config: GenerateJobConfig, out: Path) -> Path:
    """The stage-1 state a run reads: the one it was given, else the one in its output folder."""
    return Path(config.stage1_state) if config.stage1_state else out / NERF_STATE


def build_nerf(stage: NerfStageConfig, seed: int, device: torch.device) -> NerfModel:
    field = NerfField(stage.hash_grid, stage.bound, stage.density_blob_scale, stage.density_blob_std, seed,
                      use_tcnn=device.type == "cuda")
    step_size = 2.0 * math.sqrt(3.0) * stage.bound / stage.samples_per_ray
    occupancy = OccupancyGrid(stage.occupancy_resolution, stage.bound, step_size, stage.occupancy_threshold)
    return NerfModel(field, LearnedBackground(seed), occupancy, stage.samples_per_ray).to(device)


def nerf_from_state(state: NerfState, device: torch.device) -> NerfModel:
    """The NeRF of a saved stage-1 state, built with the settings it was trained with."""
    stage = update_from_dict(NerfStageConfig(), state.settings)
    stage.validate()  # the state's own settings size the NeRF: held to the same bounds as a job's
    model = build_nerf(stage, 0, device)
    model.load_state_dict(state.model)
    return model


def encode_nerf_prompts(prior: DiffusionPrior, config: GenerateJobConfig, views: bool) -> torch.Tensor:
    """(K, L, D): prompt, "", negative prompt and, with views, the front/side/back/overhead view prompts."""
    prompts = [config.prompt, "", config.negative_prompt]
    if views:
        prompts += [config.prompt + suffix for suffix in VIEW_SUFFIXES]
    return encode_prompts_once(prior, prompts)


def sample_nerf_cameras(stage: NerfStageConfig, batch: int, front_back_only: bool, no_front: bool,
                        generator: torch.Generator, device: torch.device) -> Cameras:
    """Random orbit cameras; Perp-Neg's first steps see only the front (-Y) or the back."""
    def uniform(bounds: tuple[float, float]) -> torch.Tensor:
        return bounds[0] + (bounds[1] - bounds[0]) * torch.rand(batch, generator=generator)

    elevation = uniform(stage.elevation_no_front_deg if no_front else stage.cameras.elevation_deg)
    azimuth = uniform(stage.cameras.azimuth_deg)
    if front_back_only:
        back = torch.rand(batch, generator=generator) < 0.5
        azimuth = FRONT_AZIMUTH_DEG + uniform((-45.0, 45.0)) + 180.0 * back.float()
    distance = uniform(stage.cameras.distance)
    fovy = uniform(stage.cameras.fovy_deg)
    return orbit_cameras(elevation, azimuth, distance, fovy).to(device)


def optimise_nerf(config: GenerateJobConfig, context: JobContext, resume_state: NerfState | None,
                  progress: Progress) -> NerfModel:
    stage, device, reporter = config.stage1, context.device, context.reporter
    generator = torch.Generator().manual_seed(config.seed)
    perp_neg = config.use_perp_neg()
    view_prompts = perp_neg or stage.view_prompts
    batch = stage.batch_size if perp_neg else stage.batch_size_no_front
    guidance = stage.effective_guidance()

    reporter.stage("loading model")
    with context.timed("setup_s"):
        prior = load_prior(stage.prior, device)
        speed_up_unet(prior, config.compile)
        if not prior.pixel_space:
            reporter.emit("warning", message=f"{stage.prior.model} is a latent model; the NeRF stage is meant for "
                                             "a pixel-space prior (DeepFloyd IF stage I or the bundled prior).")
        embeddings = encode_nerf_prompts(prior, config, view_prompts)
        reporter.warnings(prior.warnings)  # e.g. a prompt cut at the text encoder's token limit
        model = build_nerf(stage, config.seed, device)
        optimizer = torch.optim.Adam(model.parameters(), lr=stage.learning_rate, eps=1e-15)
    start = 0
    if resume_state is not None:
        with applying_state(stage1_state_path(config, context.output_dir)):
            model.load_state_dict(resume_state.model)
            optimizer.load_state_dict(resume_state.optimizer)
            generator.set_state(resume_state.generator)
        start = resume_state.step
        reporter.emit("resumed", stage=1, step=start)
    if start >= stage.steps:
        return model

    front_back_steps = stage.scaled(stage.front_back_steps) if perp_neg else 0
    geometry_start = stage.scaled(stage.geometry_render_start)
    ambient_only = stage.scaled(stage.ambient_only_steps)
    ramp_steps = stage.scaled(stage.loss_ramp_steps)

    def nerf_step(step: int) -> torch.Tensor:
        if step % stage.occupancy_update_every == 0:
            model.occupancy.update(model.field.density, step, generator)
        cameras = sample_nerf_cameras(stage, batch, step < front_back_steps, not perp_neg, generator, device)
        render = render_nerf(model, cameras, stage.render_size, generator, True, stage.normal_eps)
        background = (sample_backgrounds(batch, generator, device)
                      if float(torch.rand((), generator=generator)) < stage.random_background_prob
                      else model.background(render.directions))
        lighting = sample_lighting(cameras, generator, stage.light_ambient, stage.light_jitter)
        albedo_only = step < ambient_only
        geometry = (not albedo_only and step >= geometry_start
                    and float(torch.rand((), generator=generator)) < stage.geometry_render_prob)
        if geometry:
            image = shade_geometry(render, stage.geometry_render, lighting, cameras, background)
        else:
            lit = not albedo_only and float(torch.rand((), generator=generator)) < stage.lighting_prob
            image = shade_albedo(render, lighting if lit else None, background)
        x = prior.images_to_model_input(image.permute(0, 3, 1, 2))
        if perp_neg:
            positive, others, weights = perp_neg_embeddings(embeddings[3:], cameras.elevation, cameras.azimuth,
                                                            stage.perp_neg_weight, stage.view_overhead_deg)
            distill = perp_neg_distillation_loss(prior, x, positive, embeddings[1:2], embeddings[2:3], others,
                                                 weights, guidance, step, generator)
        else:
            prompts = embeddings
            if view_prompts:
                prompts = view_prompt_embeddings(embeddings, cameras.elevation, cameras.azimuth,
                                                 stage.view_front_deg, stage.view_back_deg, stage.view_overhead_deg)
            distill = score_distillation_loss(prior, x, prompts, guidance, step, generator)
        loss = (distill.loss + ramp(step, stage.orientation_weight, ramp_steps) * render.orientation
                + ramp(step, stage.sparsity_weight, ramp_steps) * sparsity_loss(render.opacity))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    plan = LoopPlan(stage.steps, start, progress.offset, progress.total, preview_every=config.preview_every,
                    checkpoint_every=config.checkpoint_every, label="optimising (stage 1: NeRF)", timer=None,
                    name="stage 1", diverged_hint=DIVERGED_HINT)
    run_loop(plan, nerf_step, context,
             lambda step: write_preview(context, step, render_nerf_preview(model, device)),
             lambda done: save_nerf_state(context, model, optimizer, generator, done, config))
    prior = None  # frees the prior (the step function holds it too) before stage 2 loads its own
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return model


def save_nerf_state(context: JobContext, model: NerfModel, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, step: int, config: GenerateJobConfig) -> None:
    context.outputs["state_stage1"] = NerfState(
        step, step >= config.stage1.steps, config.prompt, model.state_dict(), optimizer.state_dict(),
        generator.get_state(), to_dict(config.stage1)).save(context.output_dir)
    report_checkpoint(context, 1, step)


@torch.no_grad()
def render_nerf_preview(model: NerfModel, device: torch.device) -> np.ndarray:
    cameras = orbit_cameras(15.0, FRONT_AZIMUTH_DEG + 30.0, 1.8, 50.0).to(device)
    render = render_nerf(model, cameras, PREVIEW_SIZE, None, True, 0.01)
    white = torch.ones(1, 3, device=device)
    lighting = sample_lighting(cameras, torch.Generator().manual_seed(0))
    rgb = shade_albedo(render, lighting, white)[0]
    shaded = shade_geometry(render, "shaded", lighting, cameras, white)[0]
    return torch.cat([rgb, shaded], dim=1).clamp(0, 1).cpu().numpy()


# ------------------------------------------------------------------------------------------------
# Between the stages: NeRF -> placed mesh
# ------------------------------------------------------------------------------------------------

def extract_placed_mesh(nerf: NerfModel, config: GenerateJobConfig, device: torch.device
                        ) -> tuple[TriangleMesh, Placement, ExtractionReport]:
    """The isosurface in world units: ground at z = 0, centred, facing -Y, `size_m` across."""
    mesh, report = extract_mesh(nerf.field.density, nerf.bound, config.extract.resolution, config.extract.threshold,
                                config.extract.target_triangles, config.extract.min_component_fraction, device,
                                config.extract.opening_radius)
    placement = fit_placement(mesh.positions, config.extract.size_m)
    return mesh.with_positions(placement.apply(mesh.positions)), placement, report


# ------------------------------------------------------------------------------------------------
# Stage 2: mesh refinement
# ------------------------------------------------------------------------------------------------

def nerf_seen_albedo(nerf: NerfModel, points: torch.Tensor) -> torch.Tensor:
    """The colour the NeRF shows at surface points (NeRF frame): its albedo composited along a short
    ray coming in from outside along the normal. The albedo at the isosurface itself is not what
    the cameras saw: the soft shell outside it carried the colour."""
    colours = []
    with torch.no_grad():
        for start in range(0, points.shape[0], RAY_CHUNK):
            chunk = points[start:start + RAY_CHUNK]
            normals = nerf.field.normals(chunk, SURFACE_NORMAL_EPS)
            origins = chunk + SURFACE_LOOK_BACK * nerf.bound * normals
            albedo, opacity, *_ = render_rays(nerf, origins, -normals, None, False, SURFACE_NORMAL_EPS)
            seen = albedo / opacity.clamp_min(1e-6)
            colours.append(torch.where(opacity > 0.5, seen, nerf.field.albedo(chunk)).clamp(0.0, 1.0).float())
    return torch.cat(colours) if colours else points.new_zeros(0, 3)


def nerf_surface_colours(nerf: NerfModel, unit: TriangleMesh, placement: Placement, normalization: Normalization,
                         seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points spread over the unit-box mesh by area, and the NeRF's seen colour there."""
    points, _ = sample_surface(unit, SURFACE_COLOUR_SAMPLES, torch.Generator().manual_seed(seed + 2))
    device = next(nerf.parameters()).device
    nerf_points = torch.from_numpy(placement.invert(normalization.from_unit(points.numpy()))).to(device)
    return points.to(device), nerf_seen_albedo(nerf, nerf_points)


def refine_mesh(config: GenerateJobConfig, context: JobContext, unit: TriangleMesh | None, placement: Placement,
                normalization: Normalization, resume_state: RefinedMeshState | None, progress: Progress,
                start_colours: tuple[torch.Tensor, torch.Tensor] | None = None) -> RefinableMesh:
    """start_colours: surface points and colours the albedo field is fitted to first (the released
    code inherits stage 1's field; a fresh one starts grey, and a short stage 2 never recovers)."""
    stage, device, reporter, cancel = config.stage2, context.device, context.reporter, context.cancel
    generator = torch.Generator().manual_seed(config.seed + 1)
    guidance = stage.effective_guidance()

    reporter.stage("loading model")
    with context.timed("setup_s"):
        prior = load_prior(stage.prior, device)
        speed_up_unet(prior, config.compile)
        encoder = FastVaeEncoder(prior)
        embeddings = encode_prompts_once(prior, [config.prompt, "", config.negative_prompt])
        reporter.warnings(prior.warnings)
        if resume_state is not None:
            with applying_state(context.output_dir / REFINED_MESH_STATE):
                buffers = resume_state.model
                unit = TriangleMesh(buffers["base"].cpu().numpy(), buffers["triangles"].cpu().numpy())
        mesh = RefinableMesh(unit.positions, unit.triangles, stage.hash_grid, config.seed).to(device)
        if resume_state is None and start_colours is not None and stage.start_fit_steps:
            rmse = fit_field(mesh.texture, *start_colours, stage.start_fit_steps, generator, cancel)
            reporter.emit("albedo_fit", rmse=round(rmse, 5))
        optimizer = torch.optim.Adam([{"params": mesh.texture.parameters(), "lr": stage.learning_rate},
                                      {"params": [mesh.offsets], "lr": stage.vertex_learning_rate(
                                          mesh.mean_edge_length())}], eps=1e-15)
    # A pixel-space prior sees small images: render at twice its size and let it downsample.
    size = min(stage.render_size, 2 * prior.resolution) if prior.pixel_space else stage.render_size
    if size != stage.render_size:
        reporter.emit("warning", message=f"{stage.prior.model} is a {prior.resolution}px pixel-space prior; "
                                         f"stage 2 renders at {size} instead of {stage.render_size}.")
    start = 0
    if resume_state is not None:
        with applying_state(context.output_dir / REFINED_MESH_STATE):
            mesh.load_state_dict(resume_state.model)
            optimizer.load_state_dict(resume_state.optimizer)
            generator.set_state(resume_state.generator)
        start = resume_state.step
        reporter.emit("resumed", stage=2, step=start)
    if start >= stage.steps:
        return mesh

    regulariser = ShapeRegulariser(stage)

    def refine_step(step: int) -> torch.Tensor:
        cameras = sample_cameras(stage.cameras, 1, generator).to(device)
        view, albedo = mesh.render(cameras, size)
        background = sample_backgrounds(1, generator, device)
        lighting = sample_lighting(cameras, generator)
        if float(torch.rand((), generator=generator)) < stage.geometry_render_prob:
            image = render_mesh_geometry(view, stage.geometry_render, lighting, background)
        else:
            lit = float(torch.rand((), generator=generator)) < stage.lighting_prob
            image = shade(albedo, view.normal, view.mask, lighting if lit else None, background)
        if stage.antialias:
            image = mesh.antialias(image, view)
        x = encoder.encode(image.permute(0, 3, 1, 2))
        distill = score_distillation_loss(prior, x, embeddings, guidance, step, generator)
        loss = distill.loss + regulariser(mesh, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    plan = LoopPlan(stage.steps, start, progress.offset, progress.total, preview_every=config.preview_every,
                    checkpoint_every=config.checkpoint_every, label="optimising (stage 2: mesh refinement)",
                    timer=None, name="stage 2", diverged_hint=DIVERGED_HINT)
    run_loop(plan, refine_step, context,
             lambda step: write_preview(context, step, render_mesh_preview(mesh, device)),
             lambda done: save_mesh_state(context, mesh, optimizer, generator, done, config, placement,
                                          normalization))
    return mesh


def save_mesh_state(context: JobContext, mesh: RefinableMesh, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator, step: int, config: GenerateJobConfig, placement: Placement,
                    normalization: Normalization) -> None:
    """The refinement's state; once complete, with the frame the asset is exported in (on the ground),
    so a geometry edit lands where the asset stands."""
    complete = step >= config.stage2.steps
    export_normalization = None
    if complete:
        with torch.no_grad():
            export_normalization = on_the_ground(normalization, mesh.positions().cpu().numpy()).to_dict()
    context.outputs["state_stage2"] = RefinedMeshState(
        step, complete, config.prompt, mesh.state_dict(), optimizer.state_dict(), generator.get_state(),
        to_dict(config.stage2), placement.to_dict(), normalization.to_dict(), export_normalization
    ).save(context.output_dir)
    report_checkpoint(context, 2, step)


def report_checkpoint(context: JobContext, stage: int, step: int) -> None:
    """Say which files a resumed run continues from (a remote worker ships them to the server)."""
    names = [name for name in (CONFIG_FILE, NERF_STATE, REFINED_MESH_STATE) if (context.output_dir / name).is_file()]
    context.reporter.emit("checkpoint", stage=stage, step=step, files=[context.live_path(name) for name in names])


# ------------------------------------------------------------------------------------------------
# Export, previews, states
# ------------------------------------------------------------------------------------------------

def export_asset(out: Path, unit: TriangleMesh, normalization: Normalization, albedo, config: GenerateJobConfig,
                 context: JobContext, texture_field=None) -> dict[str, str]:
    """Unwrap, bake `albedo` (unit-box points -> colours) and write GLB, OBJ, texture and preview sheet."""
    reporter, device = context.reporter, context.device
    reporter.stage("unwrapping")
    with context.timed("unwrap_s"):
        prepared = mesh_for_export(unit, normalization, config.texture_size, context)
    context.cancel.check()
    reporter.stage("baking")
    with context.timed("bake_s"), torch.no_grad():
        baked = bake_texture(prepared.unit, albedo, config.texture_size, device, cancel=context.cancel)
    reporter.stage("exporting")
    with context.timed("export_s"):
        outputs = export_textured_mesh(out, prepared, baked.image, context.cancel)
        if texture_field is not None:
            outputs["state"] = save_texture_state(out, texture_field, config.stage2.hash_grid, normalization, config)
    reporter.emit("summary", coverage=round(float(baked.coverage), 4), triangles=prepared.unit.num_triangles,
                  vertices=prepared.unit.num_vertices)
    return outputs


def speed_up_unet(prior: DiffusionPrior, compile: bool) -> None:
    """CUDA graphs for the UNet: the eager UNet is launch-bound (shared/reference/gpu-baseline.md).
    By default each input shape's call is captured once and replayed; --compile has
    torch.compile fuse the UNet's kernels as well (minutes of compiling first)."""
    if prior.device.type != "cuda":
        return
    if compile:
        prior.unet = torch.compile(prior.unet, mode="reduce-overhead")
    else:
        use_cuda_graphs(prior)


