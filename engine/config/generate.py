"""Settings of the generate job (text -> textured mesh): a NeRF stage, the mesh extraction, a
refinement stage.

Defaults follow the paper (sections 5.1, A.4) and the authors' released settings
(shared/reference/csd-settings.md). Schedules the authors give in absolute steps (the
negative-prompt ramp, the t-range switch, the loss ramps, front/back-only views, normal
renders) are stored for the default length of each stage and scaled with the stage's
actual length, so a short run goes through the same phases in the same proportions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import BadInputError
from .checks import (MAX_NAME_CHARS, MAX_PROMPT_CHARS, MAX_WEIGHT, Settings, check_range, count, integer,
                     learning_rate_setting, number, probability, text, weight)
from .parts import BUNDLED_MODEL, DEFAULT_NEGATIVE_PROMPT, CameraConfig, GuidanceConfig, HashGridConfig, PriorConfig
from .presets import apply_preset, preset_for
from .texture import PROMPT_HINT, device_setting, render_size_setting, seed_setting, texture_size_setting

NERF_STAGE_STEPS = 10_000
REFINE_STAGE_STEPS = 5_000
PerpNegMode = Literal["auto", "on", "off"]
GeometryRender = Literal["shaded", "normal_map"]
NormalConsistency = Literal["cosine", "angle", "robust"]  # engine/nerf/losses.normal_consistency
GenerateStages = Literal["all", "1", "2"]
# Prompts naming these have no clear front: Perp-Neg is left out under "auto" (paper A.4).
NO_FRONT_WORDS = ("sphere", "ball", "cube", "box", "cylinder", "cone", "torus", "donut", "doughnut", "ring",
                  "vase", "bowl", "cup", "mug", "plate", "planet", "orb", "pyramid", "egg", "rock", "stone",
                  "bottle", "candle", "tree", "pillar", "column", "barrel")


def _scaled(value: int, steps: int, reference: int) -> int:
    return int(round(value * steps / reference))


def _positive(default: float) -> float:
    return number(default, 0.0, MAX_WEIGHT, above=True)


def _degrees(default: float, low: float, high: float, hint: str = "") -> float:
    return number(default, low, high, hint=hint)


@dataclass
class NerfStageConfig(Settings):
    """Stage 1: a NeRF optimised with CSD through 64 x 64 renders and a pixel-space prior."""

    steps: int = count(NERF_STAGE_STEPS, low=1)
    render_size: int = render_size_setting(64)
    batch_size: int = integer(1, 1, 64)  # with Perp-Neg; prompts without a clear front use batch_size_no_front
    batch_size_no_front: int = integer(4, 1, 64)
    learning_rate: float = learning_rate_setting(1e-3)
    bound: float = _positive(1.0)  # the NeRF lives in [-bound, bound]^3
    samples_per_ray: int = integer(256, 1, 1024)
    occupancy_resolution: int = integer(64, 8, 512)
    occupancy_update_every: int = count(16, low=1)
    occupancy_threshold: float = _positive(0.01)  # opacity of one march step below which a cell counts as empty
    density_blob_scale: float = weight(10.0)  # threestudio's "blob_magic3d" initial density
    density_blob_std: float = _positive(0.5)
    normal_eps: float = _positive(0.01)  # finite-difference step of the density gradient (normals)
    perp_neg: PerpNegMode = "auto"
    perp_neg_weight: float = weight(3.0)  # released default; multiplies the Perp-Neg view weights
    front_back_steps: int = count(1000)  # Perp-Neg: only front and back views at first
    orientation_weight: tuple[float, float] = weight((1.0, 100.0))
    sparsity_weight: tuple[float, float] = weight((10.0, 1.0))
    loss_ramp_steps: int = count(5000)
    # What replaces the RGB render after geometry_render_start: the shaded surface (paper A.4).
    geometry_render: GeometryRender = "shaded"
    geometry_render_prob: float = probability(0.5)
    geometry_render_start: int = count(5000)
    # Lighting as the released config's material (threestudio's diffuse-with-point-light): the
    # renders show the albedo alone for the first ambient_only_steps; after them half of the renders
    # are geometry-only (above) and the others the albedo, never lit (its diffuse_prob 0.5 with
    # textureless_prob 1). The light, near the camera, has ambient 0.1 and diffuse 0.9 (fixed: no
    # soft shading; soft shading is light_ambient (0, 1)); it shades the geometry-only renders.
    ambient_only_steps: int = count(5000)
    lighting_prob: float = probability(0.0)  # after ambient_only_steps, RGB renders lit by the light (else albedo only)
    # ambient uniform in this range; diffuse is 1 - ambient
    light_ambient: tuple[float, float] = number((0.1, 0.1), 0.0, 1.0, hint="[0.1, 0.1] is the released light.")
    # Normal offset of the light from the camera's direction: released N(0, 0.1) on a camera position
    # 1.5-2 from the object, about 0.06 of the unit direction.
    light_jitter: float = number(0.06, 0.0, 10.0)
    random_background_prob: float = probability(0.5)  # else the learned background
    # Without Perp-Neg each sample's prompt carries its view's words (released view-dependent
    # prompting): ", front view" within view_front_deg of the front, ", back view" within
    # view_back_deg of the back, ", overhead view" above view_overhead_deg elevation (Perp-Neg's
    # overhead views too), ", side view" otherwise.
    view_prompts: bool = True
    view_front_deg: float = _degrees(30.0, 0.0, 90.0)
    view_back_deg: float = _degrees(30.0, 0.0, 90.0)
    view_overhead_deg: float = _degrees(60.0, -90.0, 90.0, hint="90 never names a view overhead.")
    elevation_no_front_deg: tuple[float, float] = (-10.0, 90.0)
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        w2_start=0.0, w2_end=1.0, w2_anneal_steps=5000, t_min=0.02, t_max=0.5,
        t_max_before_switch=0.98, t_max_switch_step=5000))
    cameras: CameraConfig = field(default_factory=lambda: CameraConfig(
        elevation_deg=(-10.0, 45.0), azimuth_deg=(-180.0, 180.0), distance=(1.5, 2.0), fovy_deg=(40.0, 70.0),
        view_pool=1))
    hash_grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(per_level_scale=1.38))
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(controlnets=()))

    def check_relations(self, where: str) -> None:
        check_range(f"{where}light_ambient", self.light_ambient, "[0.1, 0.1] is the released light.")

    def scaled(self, value: int) -> int:
        """A step count of the released 10,000-step schedule, at this stage's length."""
        return _scaled(value, self.steps, NERF_STAGE_STEPS)

    def effective_guidance(self) -> GuidanceConfig:
        return dataclasses.replace(self.guidance, w2_anneal_steps=self.scaled(self.guidance.w2_anneal_steps),
                                   t_max_switch_step=self.scaled(self.guidance.t_max_switch_step))


@dataclass
class ExtractConfig(Settings):
    """NeRF -> mesh between the stages, and the size the asset is exported at."""

    resolution: int = integer(256, 16, 1024)
    # density isosurface (the released code's DMTet initialisation uses 10)
    threshold: float = _positive(10.0)
    target_triangles: int = integer(50_000, 100, 5_000_000)
    # pieces smaller than this share of the largest are floaters
    min_component_fraction: float = probability(0.1)
    # NeRF units; parts thinner than about twice this are removed (0: off)
    opening_radius: float = number(0.0, 0.0, 0.5)
    size_m: float = number(1.0, 0.0, 1_000.0, above=True)  # largest side of the exported asset, in metres


@dataclass
class RefineStageConfig(Settings):
    """Stage 2: the extracted mesh's vertices and a surface albedo field, with CSD at 512."""

    steps: int = count(REFINE_STAGE_STEPS, low=1)
    render_size: int = render_size_setting(512)  # pixel-space priors render at min(this, 2 x their resolution)
    learning_rate: float = learning_rate_setting(1e-3)  # the albedo field
    offset_learning_rate: float = learning_rate_setting(1e-4)  # vertex offsets, in unit-box units
    # If > 0, the vertex offsets' learning rate is this times the mesh's mean edge length instead:
    # Adam moves every vertex by about its learning rate a step, so a fixed rate that reshapes a
    # coarse mesh tears a fine one into spikes.
    offset_learning_rate_per_edge: float = number(0.0, 0.0, 10.0)
    normal_consistency_weight: float = weight(1000.0)  # released code; the paper says 10,000
    # released code's 1 - cos; "angle" |n1 - n2|, "robust" (engine/nerf/losses.py)
    normal_consistency: NormalConsistency = "cosine"
    laplacian_weight: float = weight(0.0)  # optional uniform Laplacian (not in the paper's recipe)
    # Optional (not in the paper's recipe): big nearly-flat patches made flat (engine/refine/planar.py).
    planar_weight: float = weight(0.0)
    # faces within this of a region's normal belong to it
    planar_angle_deg: float = number(15.0, 0.0, 90.0, above=True, below=True)
    planar_min_share: float = probability(0.06)  # the least share of the surface area a region covers
    # neighbouring regions meet at creases of at least this (0: as found)
    planar_crease_deg: float = number(0.0, 0.0, 90.0, below=True)
    # regions leaning less than this from upright or level made so (0: off)
    planar_upright_deg: float = number(0.0, 0.0, 45.0, below=True)
    planar_every: int = count(10, low=1)  # steps between region searches
    # Silhouette gradients for the vertices (engine/render/antialias.py; the released code renders
    # through nvdiffrast's antialias): without them the outline of the mesh cannot move.
    antialias: bool = True
    # regression of the albedo field onto the NeRF's colours before CSD (0: none)
    start_fit_steps: int = count(300)
    # Half of the refinement's renders are normal images (paper A.4): the camera-space normal map.
    geometry_render: GeometryRender = "normal_map"
    geometry_render_prob: float = probability(0.5)
    lighting_prob: float = probability(0.5)
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        w2_start=1.0, w2_end=0.5, w2_anneal_steps=REFINE_STAGE_STEPS, t_min=0.02, t_max=0.5))
    # The unit-box mesh seen like the NeRF in stage 1 (same angles, distance scaled to the box).
    cameras: CameraConfig = field(default_factory=lambda: CameraConfig(
        elevation_deg=(-10.0, 45.0), azimuth_deg=(-180.0, 180.0), distance=(1.5, 2.0), fovy_deg=(40.0, 70.0),
        view_pool=1))
    hash_grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(per_level_scale=1.38))
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(controlnets=()))

    def effective_guidance(self) -> GuidanceConfig:
        return dataclasses.replace(self.guidance, w2_anneal_steps=_scaled(self.guidance.w2_anneal_steps,
                                                                          self.steps, REFINE_STAGE_STEPS),
                                   t_max_switch_step=_scaled(self.guidance.t_max_switch_step, self.steps,
                                                             REFINE_STAGE_STEPS))

    def vertex_learning_rate(self, mean_edge_length: float) -> float:
        if self.offset_learning_rate_per_edge > 0:
            return self.offset_learning_rate_per_edge * mean_edge_length
        return self.offset_learning_rate


@dataclass
class GenerateJobConfig(Settings):
    """A generate job's settings. Start from `defaults_for` (the CLI and job.json do): the plain
    constructor gives the paper's settings whichever prior each stage uses."""

    prompt: str = text(MISSING, MAX_PROMPT_CHARS, PROMPT_HINT)
    out: str
    negative_prompt: str = text(DEFAULT_NEGATIVE_PROMPT, MAX_PROMPT_CHARS)
    seed: int = seed_setting()
    device: str = device_setting()
    texture_size: int = texture_size_setting(1024)
    preview_every: int = count(500)  # steps between previews (0: none)
    checkpoint_every: int = count(1000)  # steps between saved states (0: only at the end and on cancel)
    # "all": both stages; "1": the NeRF only; "2": refinement from `stage1_state` (or out/stage1.pt).
    stages: GenerateStages = "all"
    stage1_state: str | None = text(None, MAX_NAME_CHARS)
    resume: bool = False  # continue from the states in `out`
    compile: bool = False  # torch.compile the priors' UNets (CUDA graphs; CUDA only; minutes of warm-up)
    stage1: NerfStageConfig = field(default_factory=NerfStageConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    stage2: RefineStageConfig = field(default_factory=RefineStageConfig)

    @classmethod
    def defaults_for(cls, prompt: str, out: str, stage1_model: str = BUNDLED_MODEL,
                     stage2_model: str = BUNDLED_MODEL) -> "GenerateJobConfig":
        """The settings a run starts from before the user's own are laid over them: the paper's,
        with each stage's preset for the prior that guides it. Laying the preset under the user's
        settings (not over the ones still at a default) lets a user ask for a paper value."""
        config = cls(prompt=prompt, out=out)
        config.stage1.prior.model, config.stage2.prior.model = stage1_model, stage2_model
        apply_preset(config, preset_for("generate.stage1", stage1_model), "generate.stage1")
        apply_preset(config, preset_for("generate.stage2", stage2_model), "generate.stage2")
        return config

    def check_relations(self, where: str) -> None:
        if self.stage1_state is not None and not Path(self.stage1_state).is_file():
            raise BadInputError(f"Stage-1 state not found: {self.stage1_state}.",
                                "Pass the stage1.pt a previous generate run wrote.")

    def use_perp_neg(self) -> bool:
        if self.stage1.perp_neg != "auto":
            return self.stage1.perp_neg == "on"
        words = self.prompt.lower().replace(",", " ").split()
        return not any(word.rstrip("s") in NO_FRONT_WORDS or word in NO_FRONT_WORDS for word in words)
