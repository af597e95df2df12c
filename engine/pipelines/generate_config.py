"""Settings of the generate job (text -> textured mesh), and its command-line arguments.

Defaults follow the paper (sections 5.1, A.4) and the authors' released settings
(shared/reference/csd-settings.md). Schedules the authors give in absolute steps (the
negative-prompt ramp, the t-range switch, the loss ramps, front/back-only views, normal
renders) are stored for the default length of each stage and scaled with the stage's
actual length, so a short run goes through the same phases in the same proportions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (BUNDLED_MODEL, DEFAULT_NEGATIVE_PROMPT, MAX_NAME_CHARS, MAX_PROMPT_CHARS,
                      CameraConfig, GuidanceConfig, HashGridConfig, PriorConfig, to_dict, update_from_dict,
                      validate_common, validate_count, validate_learning_rate, validate_prompt, validate_size,
                      validate_text)
from ..errors import BadInputError
from ..job.outputs import attempts
from ..job.paths import open_inside

NERF_STAGE_STEPS = 10_000
REFINE_STAGE_STEPS = 5_000
CONFIG_FILE = "generate_config.json"
GEOMETRY_RENDERS = ("shaded", "normal_map")
PERP_NEG_MODES = ("auto", "on", "off")
NORMAL_CONSISTENCY_FORMS = ("cosine", "angle", "robust")  # engine/nerf/losses.normal_consistency
# Prompts naming these have no clear front: Perp-Neg is left out under "auto" (paper A.4).
# The largest loss weight, density scale or threshold a job may set (the released ones are at most 10,000).
MAX_WEIGHT = 1e6
NO_FRONT_WORDS = ("sphere", "ball", "cube", "box", "cylinder", "cone", "torus", "donut", "doughnut", "ring",
                  "vase", "bowl", "cup", "mug", "plate", "planet", "orb", "pyramid", "egg", "rock", "stone",
                  "bottle", "candle", "tree", "pillar", "column", "barrel")


# The bundled prior (training/bundled_prior) is a 32-px model of a small world, meant for CPUs.
# The paper's settings are for DeepFloyd IF / Stable Diffusion; with this prior they make a grey
# ball (measured: docs/benchmarks.md, "Generate with the bundled prior"). These replace them in each
# stage guided by the bundled prior, under the settings the user gives (GenerateJobConfig.defaults_for):
#   - lighting, background, distance and field of view as in the prior's training renders
#     (world.json): it knows objects only as framed, lit and set on solid colours there; so stage 1
#     lights its renders from the first step, with the texture job's light (ambient 0.5-0.7, the
#     light 0.4 off the camera's direction: engine.render.shading), not the released 0.1;
#   - stage 1 prompts without view words when Perp-Neg is off, as the preset was tuned (the
#     prior's captions carry them by a 45-degree rule and know no overhead view);
#   - stage 1 looks from its training views' lower elevations only, -15..25 degrees: from above, a
#     box and a box narrowing to a rounded bottom look alike at 32 px, and the NeRF kept the ball it
#     starts from under a flat lid; level views show the sides' full height;
#   - stage 1 draws t from 0.3, not 0.02: at low noise this prior's score prefers tapered, rounded
#     and legged shapes to a cube, from t = 0.17 up the cube (docs/benchmarks.md, the probe);
#   - no geometry-only renders: grey shaded objects are "gray" objects in its world;
#   - in stage 1, w2 = 0.5 throughout: the default negative prompt at w2 -> 1 rounds every shape into a ball,
#     w2 = 0 (pure Eq. 7) exaggerates a cube into a spiky star, 0.3 into a box with hollow sides;
#     in stage 2, which here mostly paints, w2 = 0: at 0.5 "oversaturated color" darkens red
#     towards brown (paper 5.3 also lowers w2 to keep the prompt's colours);
#   - renders at the prior's 32 px, 6 hash-grid levels (finest ~80 cells: smooth at 32 px, and
#     cheap on a CPU), learning rate 1e-2 so 300 steps suffice;
#   - the isosurface at density 2.5 (a 300-step NeRF's densities peak near 15, so 10 is its core),
#     marching cubes on a 64^3 grid (at 128^3 the moving vertices of its slivers grow needles), and
#     the density opened by 0.08 first: thin legs under the object go;
#   - stage 2 reshapes the mesh for 300 steps under the "angle" normal consistency |n1 - n2|
#     (weight 200), which keeps flat sides and edges where the released 1 - cos rounds them,
#     with each vertex step 0.11 edge lengths (a fixed step tuned on a coarse mesh tears a fine
#     one into spikes), and flattens the big nearly-flat patches (engine/refine/planar.py: within
#     30 degrees, at least 10% of the area; a ball, a cylinder's wall and a torus have none),
#     made to meet at creases of at least 60 degrees: the box's rounded edges go to its sides,
#     so it has four sides, not five or six (this also squares the prior's cylinders, whose
#     stage-1 shape is as round-edged as its cubes: docs/benchmarks.md, seventh session); regions
#     within 8 degrees of upright or level are made exactly so, as stage 1 leaves the sides leaning
#     in towards the bottom it sees least (eighth session).
BUNDLED_PRESET_STAGE1 = {
    "steps": 300, "render_size": 32, "samples_per_ray": 64, "occupancy_resolution": 32, "batch_size_no_front": 1,
    "learning_rate": 1e-2, "lighting_prob": 0.85, "geometry_render_prob": 0.0, "random_background_prob": 1.0,
    "ambient_only_steps": 0, "light_ambient": (0.5, 0.7), "light_jitter": 0.4, "view_prompts": False,
    "elevation_no_front_deg": (-15.0, 25.0),
    "guidance": {"w2_start": 0.5, "w2_end": 0.5, "t_min": 0.3},
    "cameras": {"elevation_deg": (-15.0, 25.0), "distance": (2.5, 3.3), "fovy_deg": (22.0, 46.0)},
    "hash_grid": {"levels": 6, "log2_table_size": 15},
}
BUNDLED_PRESET_EXTRACT = {"threshold": 2.5, "resolution": 64, "target_triangles": 10_000, "opening_radius": 0.08}
BUNDLED_PRESET_STAGE2 = {
    "steps": 300, "start_fit_steps": 100, "lighting_prob": 0.85, "geometry_render_prob": 0.0,
    "normal_consistency": "angle", "normal_consistency_weight": 200.0, "offset_learning_rate_per_edge": 0.11,
    "planar_weight": 150.0, "planar_angle_deg": 30.0, "planar_min_share": 0.1, "planar_crease_deg": 60.0,
    "planar_upright_deg": 8.0,
    "guidance": {"w2_start": 0.0, "w2_end": 0.0},
    "cameras": {"elevation_deg": (-15.0, 55.0), "distance": (2.5, 3.3), "fovy_deg": (22.0, 46.0)},
    "hash_grid": {"log2_table_size": 15},
}
BUNDLED_PRESET_JOB = {"texture_size": 512, "preview_every": 100, "checkpoint_every": 100}


def _scaled(value: int, steps: int, reference: int) -> int:
    return int(round(value * steps / reference))


@dataclass
class NerfStageConfig:
    """Stage 1: a NeRF optimised with CSD through 64 x 64 renders and a pixel-space prior."""

    steps: int = NERF_STAGE_STEPS
    render_size: int = 64
    batch_size: int = 1  # with Perp-Neg; prompts without a clear front use batch_size_no_front
    batch_size_no_front: int = 4
    learning_rate: float = 1e-3
    bound: float = 1.0  # the NeRF lives in [-bound, bound]^3
    samples_per_ray: int = 256
    occupancy_resolution: int = 64
    occupancy_update_every: int = 16
    occupancy_threshold: float = 0.01  # opacity of one march step below which a cell counts as empty
    density_blob_scale: float = 10.0  # threestudio's "blob_magic3d" initial density
    density_blob_std: float = 0.5
    normal_eps: float = 0.01  # finite-difference step of the density gradient (normals)
    perp_neg: str = "auto"
    perp_neg_weight: float = 3.0  # released default; multiplies the Perp-Neg view weights
    front_back_steps: int = 1000  # Perp-Neg: only front and back views at first
    orientation_weight: tuple[float, float] = (1.0, 100.0)
    sparsity_weight: tuple[float, float] = (10.0, 1.0)
    loss_ramp_steps: int = 5000
    # What replaces the RGB render after geometry_render_start: the shaded surface (paper A.4).
    geometry_render: str = "shaded"
    geometry_render_prob: float = 0.5
    geometry_render_start: int = 5000
    # Lighting as the released config's material (threestudio's diffuse-with-point-light): the
    # renders show the albedo alone for the first ambient_only_steps; after them half of the renders
    # are geometry-only (above) and the others the albedo, never lit (its diffuse_prob 0.5 with
    # textureless_prob 1). The light, near the camera, has ambient 0.1 and diffuse 0.9 (fixed: no
    # soft shading; soft shading is light_ambient (0, 1)); it shades the geometry-only renders.
    ambient_only_steps: int = 5000
    lighting_prob: float = 0.0  # after ambient_only_steps, RGB renders lit by the light (else albedo only)
    light_ambient: tuple[float, float] = (0.1, 0.1)  # ambient uniform in this range; diffuse is 1 - ambient
    # Normal offset of the light from the camera's direction: released N(0, 0.1) on a camera position
    # 1.5-2 from the object, about 0.06 of the unit direction.
    light_jitter: float = 0.06
    random_background_prob: float = 0.5  # else the learned background
    # Without Perp-Neg each sample's prompt carries its view's words (released view-dependent
    # prompting): ", front view" within view_front_deg of the front, ", back view" within
    # view_back_deg of the back, ", overhead view" above view_overhead_deg elevation (Perp-Neg's
    # overhead views too), ", side view" otherwise.
    view_prompts: bool = True
    view_front_deg: float = 30.0
    view_back_deg: float = 30.0
    view_overhead_deg: float = 60.0
    elevation_no_front_deg: tuple[float, float] = (-10.0, 90.0)
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig(
        w2_start=0.0, w2_end=1.0, w2_anneal_steps=5000, t_min=0.02, t_max=0.5,
        t_max_before_switch=0.98, t_max_switch_step=5000))
    cameras: CameraConfig = field(default_factory=lambda: CameraConfig(
        elevation_deg=(-10.0, 45.0), azimuth_deg=(-180.0, 180.0), distance=(1.5, 2.0), fovy_deg=(40.0, 70.0),
        view_pool=1))
    hash_grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(per_level_scale=1.38))
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(controlnets=()))

    def scaled(self, value: int) -> int:
        """A step count of the released 10,000-step schedule, at this stage's length."""
        return _scaled(value, self.steps, NERF_STAGE_STEPS)

    def effective_guidance(self) -> GuidanceConfig:
        return dataclasses.replace(self.guidance, w2_anneal_steps=self.scaled(self.guidance.w2_anneal_steps),
                                   t_max_switch_step=self.scaled(self.guidance.t_max_switch_step))

    def validate(self) -> None:
        validate_common(self.steps, self.render_size, 0, "cpu")
        validate_learning_rate("stage1.learning_rate", self.learning_rate)
        _check_positive(self, "bound", "density_blob_std", "normal_eps", "occupancy_threshold")
        _check_weights("stage1", self, "density_blob_scale", "perp_neg_weight", "orientation_weight", "sparsity_weight")
        validate_size("stage1.batch_size", self.batch_size, 1, 64)
        validate_size("stage1.batch_size_no_front", self.batch_size_no_front, 1, 64)
        validate_size("stage1.samples_per_ray", self.samples_per_ray, 1, 1024)
        validate_count("stage1.occupancy_update_every", self.occupancy_update_every, low=1)
        for name in ("front_back_steps", "loss_ramp_steps", "geometry_render_start"):
            validate_count(f"stage1.{name}", getattr(self, name))
        validate_size("stage1.occupancy_resolution", self.occupancy_resolution, 8, 512)
        if self.perp_neg not in PERP_NEG_MODES:
            raise BadInputError(f"stage1.perp_neg must be one of {', '.join(PERP_NEG_MODES)}.", "")
        _check_geometry_render("stage1", self.geometry_render)
        for name in ("geometry_render_prob", "lighting_prob", "random_background_prob"):
            _check_probability(f"stage1.{name}", getattr(self, name))
        validate_count("stage1.ambient_only_steps", self.ambient_only_steps)
        low, high = _pair("stage1.light_ambient", self.light_ambient)
        if not 0.0 <= low <= high <= 1.0:
            raise BadInputError(f"stage1.light_ambient must be [low, high] with 0 <= low <= high <= 1, "
                                f"got {list(self.light_ambient)!r}.", "[0.1, 0.1] is the released light.")
        if not (isinstance(self.light_jitter, (int, float)) and 0.0 <= self.light_jitter <= 10.0):
            raise BadInputError(f"stage1.light_jitter must be a number from 0 to 10, got {self.light_jitter!r}.", "")
        for name in ("view_front_deg", "view_back_deg"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 90.0):
                raise BadInputError(f"stage1.{name} must be between 0 and 90 degrees, got {value!r}.", "")
        if not (isinstance(self.view_overhead_deg, (int, float)) and -90.0 <= self.view_overhead_deg <= 90.0):
            raise BadInputError(f"stage1.view_overhead_deg must be between -90 and 90 degrees, "
                                f"got {self.view_overhead_deg!r}.", "90 never names a view overhead.")
        self.guidance.validate()
        self.cameras.validate()
        self.hash_grid.validate()
        self.prior.validate()


@dataclass
class ExtractConfig:
    """NeRF -> mesh between the stages, and the size the asset is exported at."""

    resolution: int = 256
    threshold: float = 10.0  # density isosurface (the released code's DMTet initialisation uses 10)
    target_triangles: int = 50_000
    min_component_fraction: float = 0.1  # pieces smaller than this share of the largest are floaters
    opening_radius: float = 0.0  # NeRF units; parts thinner than about twice this are removed (0: off)
    size_m: float = 1.0  # largest side of the exported asset, in metres

    def validate(self) -> None:
        validate_size("extract.resolution", self.resolution, 16, 1024)
        validate_size("extract.target_triangles", self.target_triangles, 100, 5_000_000)
        _check_positive(self, "threshold", "size_m")
        if not (self.threshold <= MAX_WEIGHT and self.size_m <= 1_000.0):
            raise BadInputError(f"extract.threshold must be at most {MAX_WEIGHT:g} and extract.size_m at most "
                                "1000 metres.", "")
        _check_probability("extract.min_component_fraction", self.min_component_fraction)
        if not (0.0 <= self.opening_radius <= 0.5):
            raise BadInputError(f"extract.opening_radius must be between 0 and 0.5, got {self.opening_radius!r}.", "")


@dataclass
class RefineStageConfig:
    """Stage 2: the extracted mesh's vertices and a surface albedo field, with CSD at 512."""

    steps: int = REFINE_STAGE_STEPS
    render_size: int = 512  # pixel-space priors render at min(this, 2 x their resolution)
    learning_rate: float = 1e-3  # the albedo field
    offset_learning_rate: float = 1e-4  # vertex offsets, in unit-box units
    # If > 0, the vertex offsets' learning rate is this times the mesh's mean edge length instead:
    # Adam moves every vertex by about its learning rate a step, so a fixed rate that reshapes a
    # coarse mesh tears a fine one into spikes.
    offset_learning_rate_per_edge: float = 0.0
    normal_consistency_weight: float = 1000.0  # released code; the paper says 10,000
    normal_consistency: str = "cosine"  # released code's 1 - cos; "angle" |n1 - n2|, "robust" (engine/nerf/losses.py)
    laplacian_weight: float = 0.0  # optional uniform Laplacian (not in the paper's recipe)
    # Optional (not in the paper's recipe): big nearly-flat patches made flat (engine/refine/planar.py).
    planar_weight: float = 0.0
    planar_angle_deg: float = 15.0  # faces within this of a region's normal belong to it
    planar_min_share: float = 0.06  # the least share of the surface area a region covers
    planar_crease_deg: float = 0.0  # neighbouring regions meet at creases of at least this (0: as found)
    planar_upright_deg: float = 0.0  # regions leaning less than this from upright or level made so (0: off)
    planar_every: int = 10  # steps between region searches
    # Silhouette gradients for the vertices (engine/render/antialias.py; the released code renders
    # through nvdiffrast's antialias): without them the outline of the mesh cannot move.
    antialias: bool = True
    start_fit_steps: int = 300  # regression of the albedo field onto the NeRF's colours before CSD (0: none)
    # Half of the refinement's renders are normal images (paper A.4): the camera-space normal map.
    geometry_render: str = "normal_map"
    geometry_render_prob: float = 0.5
    lighting_prob: float = 0.5
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

    def validate(self) -> None:
        validate_common(self.steps, self.render_size, 0, "cpu")
        validate_learning_rate("stage2.learning_rate", self.learning_rate)
        validate_learning_rate("stage2.offset_learning_rate", self.offset_learning_rate)
        if not 0.0 <= self.offset_learning_rate_per_edge <= 10.0:
            raise BadInputError("stage2.offset_learning_rate_per_edge must be a number from 0 to 10.", "")
        if self.normal_consistency not in NORMAL_CONSISTENCY_FORMS:
            raise BadInputError(f"stage2.normal_consistency must be one of {', '.join(NORMAL_CONSISTENCY_FORMS)}.", "")
        validate_count("stage2.start_fit_steps", self.start_fit_steps)
        _check_weights("stage2", self, "normal_consistency_weight", "laplacian_weight", "planar_weight")
        if not (isinstance(self.planar_angle_deg, (int, float)) and 0 < self.planar_angle_deg < 90):
            raise BadInputError(f"stage2.planar_angle_deg must be between 0 and 90, got {self.planar_angle_deg!r}.", "")
        _check_off_or_below("stage2.planar_crease_deg", self.planar_crease_deg, 90)
        _check_off_or_below("stage2.planar_upright_deg", self.planar_upright_deg, 45)
        validate_count("stage2.planar_every", self.planar_every, low=1)
        _check_geometry_render("stage2", self.geometry_render)
        for name in ("geometry_render_prob", "lighting_prob", "planar_min_share"):
            _check_probability(f"stage2.{name}", getattr(self, name))
        self.guidance.validate()
        self.cameras.validate()
        self.hash_grid.validate()
        self.prior.validate()


@dataclass
class GenerateJobConfig:
    """A generate job's settings. Start from `defaults_for` (the CLI and job.json do): the plain
    constructor gives the paper's settings whichever prior each stage uses."""

    prompt: str
    out: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    seed: int = 0
    device: str = "auto"
    texture_size: int = 1024
    preview_every: int = 500  # steps between previews (0: none)
    checkpoint_every: int = 1000  # steps between saved states (0: only at the end and on cancel)
    # "all": both stages; "1": the NeRF only; "2": refinement from `stage1_state` (or out/stage1.pt).
    stages: str = "all"
    stage1_state: str | None = None
    resume: bool = False  # continue from the states in `out`
    compile: bool = False  # torch.compile the priors' UNets (CUDA graphs; CUDA only; minutes of warm-up)
    stage1: NerfStageConfig = field(default_factory=NerfStageConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    stage2: RefineStageConfig = field(default_factory=RefineStageConfig)

    @classmethod
    def defaults_for(cls, prompt: str, out: str, stage1_model: str = BUNDLED_MODEL,
                     stage2_model: str = BUNDLED_MODEL) -> "GenerateJobConfig":
        """The settings a run starts from before the user's own are laid over them: the paper's,
        with the bundled prior's preset for each stage that uses it. Laying the preset under the
        user's settings (not over the ones still at a default) lets a user ask for a paper value."""
        config = cls(prompt=prompt, out=out)
        config.stage1.prior.model, config.stage2.prior.model = stage1_model, stage2_model
        if stage1_model == BUNDLED_MODEL:
            update_from_dict(config.stage1, BUNDLED_PRESET_STAGE1, "preset.stage1")
            update_from_dict(config.extract, BUNDLED_PRESET_EXTRACT, "preset.extract")
            update_from_dict(config, BUNDLED_PRESET_JOB, "preset")
        if stage2_model == BUNDLED_MODEL:
            update_from_dict(config.stage2, BUNDLED_PRESET_STAGE2, "preset.stage2")
        return config

    def validate(self) -> None:
        validate_prompt(self.prompt)
        validate_text("negative_prompt", self.negative_prompt, MAX_PROMPT_CHARS)
        validate_common(1, 64, self.seed, self.device)
        validate_size("texture_size", self.texture_size, 16, 8192)
        for name in ("preview_every", "checkpoint_every"):
            validate_count(f"{name} (0 turns it off)", getattr(self, name))
        if self.stages not in ("all", "1", "2"):
            raise BadInputError(f"stages must be all, 1 or 2, got {self.stages!r}.", "")
        if self.stage1_state is not None:
            validate_text("stage1_state", self.stage1_state, MAX_NAME_CHARS)
        if self.stage1_state is not None and not Path(self.stage1_state).is_file():
            raise BadInputError(f"Stage-1 state not found: {self.stage1_state}.",
                                "Pass the stage1.pt a previous generate run wrote.")
        self.stage1.validate()
        self.extract.validate()
        self.stage2.validate()

    def use_perp_neg(self) -> bool:
        if self.stage1.perp_neg != "auto":
            return self.stage1.perp_neg == "on"
        words = self.prompt.lower().replace(",", " ").split()
        return not any(word.rstrip("s") in NO_FRONT_WORDS or word in NO_FRONT_WORDS for word in words)


def _check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and 0 < value <= MAX_WEIGHT):
            raise BadInputError(f"{name} must be a positive number up to {MAX_WEIGHT:g}, got {value!r}.", "")


def _check_weights(stage: str, config, *names: str) -> None:
    """Loss weights and scales (or pairs of them, start and end): numbers from 0 to MAX_WEIGHT."""
    for name in names:
        value = getattr(config, name)
        for item in (value if isinstance(value, tuple) else (value,)):
            if not (isinstance(item, (int, float)) and 0.0 <= item <= MAX_WEIGHT):
                raise BadInputError(f"{stage}.{name} must be made of numbers from 0 to {MAX_WEIGHT:g}, "
                                    f"got {value!r}.", "")


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise BadInputError(f"{name} must be between 0 and 1, got {value!r}.", "")


def _pair(name: str, value) -> tuple[float, float]:
    if not (isinstance(value, tuple) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise BadInputError(f"{name} must be a list of two numbers, got {value!r}.", "")
    return float(value[0]), float(value[1])


def _check_off_or_below(name: str, value: float, limit: float) -> None:
    if not (isinstance(value, (int, float)) and 0 <= value < limit):
        raise BadInputError(f"{name} must be 0 (off) or below {limit}, got {value!r}.", "")


def _check_geometry_render(stage: str, value: str) -> None:
    if value not in GEOMETRY_RENDERS:
        raise BadInputError(f"{stage}.geometry_render must be one of {', '.join(GEOMETRY_RENDERS)}.", "")


# ------------------------------------------------------------------------------------------------
# Command line and job.json
# ------------------------------------------------------------------------------------------------

def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m engine generate ...`. Flags left out keep the saved value under --resume."""
    parser.add_argument("--prompt", default=None, help="what to make (required unless --resume)")
    parser.add_argument("--out", default=None, help="output folder (default with --resume: that folder)")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the cancelled or crashed run whose output folder is DIR")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--model", default=None, help="both stages' prior (default: bundled)")
    parser.add_argument("--stage1-model", default=None, help="pixel-space prior of the NeRF stage "
                        "(DeepFloyd IF stage I style folder or hub id, or 'bundled')")
    parser.add_argument("--stage2-model", default=None, help="prior of the refinement stage "
                        "(Stable Diffusion 2.1 base style, or 'bundled')")
    parser.add_argument("--steps1", type=int, default=None,
                        help=f"NeRF steps (default {NERF_STAGE_STEPS}; bundled prior: 300)")
    parser.add_argument("--steps2", type=int, default=None,
                        help=f"refinement steps (default {REFINE_STAGE_STEPS}; bundled prior: 300)")
    parser.add_argument("--render-size1", type=int, default=None,
                        help="NeRF render size (default 64; bundled prior: 32)")
    parser.add_argument("--render-size2", type=int, default=None, help="refinement render size (default 512)")
    parser.add_argument("--stages", choices=("all", "1", "2"), default=None,
                        help="run both stages (default), only the NeRF, or only the refinement")
    parser.add_argument("--stage1-state", default=None, help="stage1.pt to refine (with --stages 2)")
    parser.add_argument("--perp-neg", choices=PERP_NEG_MODES, default=None,
                        help="Perp-Neg view prompts (auto: off for prompts without a clear front)")
    parser.add_argument("--mesh-resolution", type=int, default=None, help="marching-cubes grid (default 256)")
    parser.add_argument("--target-triangles", type=int, default=None, help="decimate to this many (default 50000)")
    parser.add_argument("--size", type=float, default=None, help="largest side of the asset in metres (default 1)")
    parser.add_argument("--texture-size", type=int, default=None, help="default 1024")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--preview-every", type=int, default=None, help="steps between previews (0: none)")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between saved states")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the diffusion UNets with CUDA graphs (faster long runs on a GPU)")
    parser.add_argument("--allow-download", action="store_true", help="let the models be downloaded")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")


def generate_config_from_args(args: argparse.Namespace) -> GenerateJobConfig:
    if args.resume is not None:
        config = load_saved_config(Path(args.resume))
        config.out = args.out or args.resume
        config.resume = True
        if args.prompt is not None and args.prompt != config.prompt:
            raise BadInputError("--prompt differs from the prompt of the run being resumed.",
                                "Leave out --prompt with --resume, or start a new run with another --out.")
    else:
        if args.prompt is None or args.out is None:
            raise BadInputError("generate needs --prompt and --out (or --resume DIR).",
                                "Example: python -m engine generate --prompt \"a blue cube\" --out out/")
        config = GenerateJobConfig.defaults_for(args.prompt, args.out, args.stage1_model or args.model or BUNDLED_MODEL,
                                                args.stage2_model or args.model or BUNDLED_MODEL)
    _set(config, "negative_prompt", args.negative_prompt)
    for stage, model in ((config.stage1, args.stage1_model or args.model), (config.stage2, args.stage2_model or args.model)):
        _set(stage.prior, "model", model)
        if args.allow_download:
            stage.prior.allow_download = True
        _set(stage.prior, "cache_dir", args.cache_dir)
    _set(config.stage1, "steps", args.steps1)
    _set(config.stage2, "steps", args.steps2)
    _set(config.stage1, "render_size", args.render_size1)
    _set(config.stage2, "render_size", args.render_size2)
    _set(config.stage1, "perp_neg", args.perp_neg)
    _set(config, "stages", args.stages)
    _set(config, "stage1_state", args.stage1_state)
    _set(config.extract, "resolution", args.mesh_resolution)
    _set(config.extract, "target_triangles", args.target_triangles)
    _set(config.extract, "size_m", args.size)
    for name in ("texture_size", "seed", "device", "preview_every", "checkpoint_every", "compile"):
        _set(config, name, getattr(args, name))
    return config


def generate_config_from_job(settings: dict, out: Path) -> GenerateJobConfig:
    """job.json's settings (same names as GenerateJobConfig, nested per stage) -> config."""
    if "out" in settings:
        raise BadInputError("job.json settings may not contain 'out'.", "Give the folder as the job's 'output'.")
    if "prompt" not in settings and not settings.get("resume"):
        raise BadInputError("job.json settings have no 'prompt'.", "")
    if settings.get("resume"):
        config = load_saved_config(out)
        return update_from_dict(config, {k: v for k, v in settings.items() if k != "prompt"})
    models = [_prior_model(settings, stage) for stage in ("stage1", "stage2")]
    return update_from_dict(GenerateJobConfig.defaults_for("", str(out), *models), settings)


def _prior_model(settings: dict, stage: str) -> str:
    """The prior a job.json asks for in one stage (shape errors are left to update_from_dict)."""
    prior = settings.get(stage, {}).get("prior", {}) if isinstance(settings.get(stage), dict) else {}
    model = prior.get("model", BUNDLED_MODEL) if isinstance(prior, dict) else BUNDLED_MODEL
    return model if isinstance(model, str) else BUNDLED_MODEL


def save_config(config: GenerateJobConfig, out: Path) -> str:
    from ..files import atomic_write_text

    atomic_write_text(out / CONFIG_FILE, json.dumps(to_dict(config), indent=2))
    return CONFIG_FILE


# A run's settings are a few kB; the cap keeps a crafted file from filling memory.
MAX_SAVED_CONFIG_BYTES = 1 << 20


def load_saved_config(folder: Path) -> GenerateJobConfig:
    # A run killed outright left its settings in its partial folder, not in the published set.
    handle, path = None, folder / CONFIG_FILE
    for attempt in attempts(folder):
        handle, path = open_inside(attempt, CONFIG_FILE, f"The run's {CONFIG_FILE}"), attempt / CONFIG_FILE
        if handle is not None:
            break
    if handle is None:
        raise BadInputError(f"Nothing to resume in {folder}: no {CONFIG_FILE}.",
                            "Pass the --out folder of an earlier generate run.")
    try:
        with handle:
            data = json.loads(handle.read(MAX_SAVED_CONFIG_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as error:
        raise BadInputError(f"{path} cannot be read: {error}.", "Start a new run instead.") from error
    if not isinstance(data, dict) or not isinstance(data.get("prompt", ""), str):
        raise BadInputError(f"{path} is not a generate run's settings (a JSON object with a text prompt).",
                            "Start a new run instead.")
    data.pop("resume", None)
    config = GenerateJobConfig(prompt=data.pop("prompt", ""), out=str(folder))
    data.pop("out", None)
    return update_from_dict(config, data)


def _set(target, name: str, value) -> None:
    if value is not None:
        setattr(target, name, value)


__all__ = ["GenerateJobConfig", "NerfStageConfig", "RefineStageConfig", "ExtractConfig", "add_generate_arguments",
           "generate_config_from_args", "generate_config_from_job", "BUNDLED_MODEL"]
