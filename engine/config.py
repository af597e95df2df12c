"""Typed settings for every job, validated once at the edge (CLI or job.json).

Defaults follow the paper and the authors' released settings
(shared/reference/csd-settings.md) where those apply; the rest are ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import BadInputError

DEFAULT_NEGATIVE_PROMPT = "oversaturated color, ugly, tiling, low quality, noisy"
BUNDLED_MODEL = "bundled"
DEFAULT_LATENT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CONTROLNET_CONDITIONS = ("depth", "canny")

# Bounds on what a job may ask for (docs/job-protocol.md, "Bounds"): far above any useful value,
# low enough that no setting makes a job run for days, fill memory or bloat result.json.
MAX_STEPS = 100_000  # the paper's longest schedule is 10,000 steps
MAX_PROMPT_CHARS = 2_000  # text encoders read 77 tokens (a few hundred characters)
MAX_SEED = 2 ** 32 - 1  # what every random generator the engine seeds accepts
MAX_LEARNING_RATE = 1.0
MAX_GUIDANCE_WEIGHT = 1_000.0  # |w1|, |w2|, cfg_scale (the SDS default is 100)
MAX_NAME_CHARS = 4_096  # a model id, folder or cache path
MAX_EXTRA_CAMERAS = 64
MAX_VIEW_POOL = 1_024
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


@dataclass(frozen=True)
class ControlNetDefaults:
    """The ControlNets (hub ids) that `auto` attaches to base models of one family, by condition;
    None where the family has none."""

    depth: str | None = None
    canny: str | None = None

    def for_condition(self, condition: str) -> str | None:
        return getattr(self, condition)


SD1_CONTROLNETS = ControlNetDefaults(depth="lllyasviel/control_v11f1p_sd15_depth",
                                     canny="lllyasviel/control_v11p_sd15_canny")
SDXL_CONTROLNETS = ControlNetDefaults(depth="diffusers/controlnet-depth-sdxl-1.0",
                                      canny="diffusers/controlnet-canny-sdxl-1.0")
# Neither lllyasviel nor diffusers published ControlNets for SD 2.x; community ones can be named.
SD2_CONTROLNETS = ControlNetDefaults()


@dataclass
class GuidanceConfig:
    """How the diffusion prior's predictions become a gradient on the render.

    mode "csd": g = w1 * (e(y) - e("")) - w2 * (e(y_neg) - e(""))   (paper Eq. 7, 10)
    mode "sds": g = e("") + cfg_scale * (e(y) - e("")) - noise        (paper Eq. 5, 6)
    w2 goes linearly from w2_start to w2_end over w2_anneal_steps (released code's ramps).
    """

    mode: str = "csd"
    w1: float = 1.0
    w2_start: float = 1.0
    w2_end: float = 0.5
    w2_anneal_steps: int = 10000
    cfg_scale: float = 100.0
    t_min: float = 0.02
    t_max: float = 0.50
    # If set, t_max switches to this after `t_max_switch_step` (NeRF stage: 0.98 -> 0.5 at 5000).
    t_max_before_switch: float | None = None
    t_max_switch_step: int = 0

    def validate(self) -> None:
        if self.mode not in ("csd", "sds"):
            raise BadInputError(f"Unknown guidance mode {self.mode!r}.", "Use 'csd' or 'sds'.")
        if not 0.0 <= self.t_min < self.t_max <= 1.0:
            raise BadInputError(f"Timestep range [{self.t_min}, {self.t_max}] is invalid.",
                                "Use 0 <= t_min < t_max <= 1.")
        for name in ("w1", "w2_start", "w2_end", "cfg_scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and abs(value) <= MAX_GUIDANCE_WEIGHT):
                raise BadInputError(f"Guidance weight {name} must be a number between {-MAX_GUIDANCE_WEIGHT:g} and "
                                    f"{MAX_GUIDANCE_WEIGHT:g}, got {value!r}.", "")
        if self.t_max_before_switch is not None and not 0.0 <= self.t_max_before_switch <= 1.0:
            raise BadInputError(f"t_max_before_switch must be between 0 and 1, got {self.t_max_before_switch!r}.", "")
        validate_count("w2_anneal_steps", self.w2_anneal_steps)
        validate_count("t_max_switch_step", self.t_max_switch_step)

    def w2_at(self, step: int) -> float:
        if self.w2_anneal_steps <= 0:
            return self.w2_end
        frac = min(max(step / self.w2_anneal_steps, 0.0), 1.0)
        return self.w2_start + (self.w2_end - self.w2_start) * frac

    def t_range_at(self, step: int) -> tuple[float, float]:
        if self.t_max_before_switch is not None and step < self.t_max_switch_step:
            return self.t_min, self.t_max_before_switch
        return self.t_min, self.t_max


@dataclass
class CameraConfig:
    """Random views around an object normalised into the unit box (paper's texture setup)."""

    elevation_deg: tuple[float, float] = (-10.0, 45.0)
    azimuth_deg: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (2.6, 3.2)
    fovy_deg: tuple[float, float] = (25.0, 45.0)
    view_pool: int = 96

    def validate(self) -> None:
        for name in ("elevation_deg", "azimuth_deg", "distance", "fovy_deg"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise BadInputError(f"Camera range {name}={lo, hi} is invalid.", "Give (low, high) with low <= high.")
        if not 0.0 < self.distance[0] <= self.distance[1] <= 1_000.0 or not 1.0 <= self.fovy_deg[0] <= self.fovy_deg[1] <= 170.0:
            raise BadInputError("Camera distance must be within 0..1000 (above 0) and the field of view within "
                                "1..170 degrees.", "")
        if not (-90.0 <= self.elevation_deg[0] and self.elevation_deg[1] <= 90.0
                and -360.0 <= self.azimuth_deg[0] and self.azimuth_deg[1] <= 360.0):
            raise BadInputError("Camera elevation must be within -90..90 degrees and azimuth within -360..360.", "")
        validate_size("view_pool", self.view_pool, 1, MAX_VIEW_POOL)


@dataclass
class HashGridConfig:
    """Multiresolution hash encoding (Instant-NGP) plus a small MLP."""

    levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    per_level_scale: float = 1.447
    mlp_width: int = 64
    mlp_hidden_layers: int = 1

    def validate(self) -> None:
        if not (1 <= self.levels <= 32 and self.features_per_level in (1, 2, 4, 8)
                and 8 <= self.log2_table_size <= 24 and 2 <= self.base_resolution <= 4096
                and 1.0 <= self.per_level_scale <= 4.0 and 1 <= self.mlp_width <= 1024
                and 0 <= self.mlp_hidden_layers <= 8):
            raise BadInputError("Hash-grid settings are out of range.", "See engine/config.py HashGridConfig.")


@dataclass
class PriorConfig:
    """Which diffusion model guides the job. `model` is a hub id, a local folder, or "bundled"."""

    model: str = BUNDLED_MODEL
    # ("auto",): the base model family's ControlNets (ControlNetDefaults; none for SD 2.x and
    # pixel models), plus any named in controlnet_models.
    controlnets: tuple[str, ...] = ("auto",)
    # ControlNets the user names (hub id or folder) by condition; they must match the base model.
    controlnet_models: dict[str, str] = field(default_factory=dict)
    controlnet_scale_start: float = 0.5
    controlnet_scale_end: float = 0.2
    controlnet_switch_step: int = 1000
    half_precision: bool = True
    cache_dir: str | None = None
    allow_download: bool = False

    def validate(self) -> None:
        if not self.model.strip():
            raise BadInputError("No model given.", "Pass --model bundled, a hub id, or a local folder.")
        validate_text("prior.model", self.model, MAX_NAME_CHARS)
        if self.cache_dir is not None:
            validate_text("prior.cache_dir", self.cache_dir, MAX_NAME_CHARS)
        for name in ("controlnet_scale_start", "controlnet_scale_end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 10.0:
                raise BadInputError(f"prior.{name} must be between 0 and 10, got {value!r}.", "")
        validate_count("prior.controlnet_switch_step", self.controlnet_switch_step)
        for name, model in self.controlnet_models.items():
            if (name not in CONTROLNET_CONDITIONS or not isinstance(model, str) or not model.strip()
                    or len(model) > MAX_NAME_CHARS):
                raise BadInputError(f"controlnet_models.{name} = {model!r} is not a ControlNet setting.",
                                    "Name a depth or canny ControlNet by hub id or folder.")
        if self.controlnets == ("auto",):
            return
        for name in self.controlnets:
            if name not in CONTROLNET_CONDITIONS:
                raise BadInputError(f"Unknown ControlNet {name!r}.", "Use depth, canny, auto, or none.")

    def controlnet_scale_at(self, step: int) -> float:
        return self.controlnet_scale_start if step < self.controlnet_switch_step else self.controlnet_scale_end


# Sizes that suit each kind of prior when the user gives none: the bundled prior is small
# and meant for CPUs. Other models' render size is known once the model is loaded
# (TextureJobConfig.resolve_render_size): latent models render at their own resolution
# (SD 1.x: 512, SD 2.x 768-v: 768, SDXL: 1024), pixel models (DeepFloyd IF, 64 px) at 512,
# downsampled with antialiasing to what the model sees.
BUNDLED_DEFAULTS = {"steps": 300, "render_size": 64, "texture_size": 512, "preview_every": 100}
BUNDLED_LOG2_TABLE_SIZE = 15
LATENT_DEFAULTS = {"steps": 2000, "texture_size": 1024, "preview_every": 200}
PIXEL_MODEL_RENDER_SIZE = 512


@dataclass
class TextureJobConfig:
    prompt: str
    mesh: str
    out: str
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    # None: the prior's default (BUNDLED_DEFAULTS / LATENT_DEFAULTS), filled in by resolve_defaults();
    # render_size, for a model other than the bundled one, by resolve_render_size() once it is loaded.
    steps: int | None = None
    render_size: int | None = None
    texture_size: int | None = None
    seed: int = 0
    device: str = "auto"
    learning_rate: float = 1e-2
    reunwrap: bool = False
    preview_every: int | None = None
    lighting: bool = True
    up_axis: str | None = None  # the mesh file's up axis, "Y" or "Z"; None: the format's convention
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    # Cameras given by the caller (the add-on's scene cameras), in the mesh's own frame:
    # a list of {"matrix_world": 4x4 camera-to-world (OpenGL axes), "fovy_deg": float}.
    extra_cameras: list[dict] = field(default_factory=list)

    def resolve_defaults(self) -> "TextureJobConfig":
        defaults = BUNDLED_DEFAULTS if self.prior.model == BUNDLED_MODEL else LATENT_DEFAULTS
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.guidance.w2_anneal_steps == GuidanceConfig.w2_anneal_steps:
            self.guidance.w2_anneal_steps = self.steps
        if self.prior.model == BUNDLED_MODEL and self.hash_grid == HashGridConfig():
            # 64-px renders and 512-px textures need no 2^19 table; on a CPU, Adam over the
            # default 12.6M parameters would cost more than the whole rest of a step.
            self.hash_grid.log2_table_size = BUNDLED_LOG2_TABLE_SIZE
        return self

    def resolve_render_size(self, model_resolution: int, pixel_space: bool) -> int:
        """The render size, once the model is known: the user's, else (see LATENT_DEFAULTS) the latent
        model's own resolution or PIXEL_MODEL_RENDER_SIZE for a pixel model."""
        if self.render_size is None:
            self.render_size = PIXEL_MODEL_RENDER_SIZE if pixel_space else model_resolution
            validate_size("render_size", self.render_size, 16, 2048)
        return self.render_size

    def validate(self) -> None:
        self.resolve_defaults()
        validate_prompt(self.prompt)
        validate_text("negative_prompt", self.negative_prompt, MAX_PROMPT_CHARS)
        validate_common(self.steps, self.render_size, self.seed, self.device)
        if self.up_axis not in (None, "Y", "Z"):
            raise BadInputError(f"up_axis must be Y or Z, got {self.up_axis!r}.", "")
        validate_size("texture_size", self.texture_size, 16, 8192)
        validate_learning_rate("learning_rate", self.learning_rate)
        validate_count("preview_every", self.preview_every)
        validate_extra_cameras(self.extra_cameras)
        self.guidance.validate()
        self.cameras.validate()
        self.hash_grid.validate()
        self.prior.validate()


def validate_prompt(prompt: str, name: str = "prompt") -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInputError(f"The {name.replace('_', ' ')} is empty.",
                            "Describe what you want, e.g. --prompt \"a wooden chair\".")
    validate_text(name, prompt, MAX_PROMPT_CHARS)


def validate_text(name: str, value: str, limit: int) -> None:
    if not isinstance(value, str):
        raise BadInputError(f"{name} must be text, got {type(value).__name__}.", "")
    if len(value) > limit:
        raise BadInputError(f"{name} is {len(value):,} characters long; at most {limit:,} are allowed.",
                            "Text encoders read only the first 77 tokens (a few hundred characters): "
                            "shorten it." if "prompt" in name else "Use a shorter name or path.")


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_size(name: str, value: int, low: int, high: int) -> None:
    if not _plain_int(value) or not low <= value <= high:
        raise BadInputError(f"{name} must be an integer between {low:,} and {high:,}, got {value!r}.", "")


def validate_count(name: str, value: int, low: int = 0) -> None:
    """A number of steps (or steps between events): an integer from `low` to MAX_STEPS."""
    validate_size(name, value, low, MAX_STEPS)


def validate_learning_rate(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0.0 < value <= MAX_LEARNING_RATE):
        raise BadInputError(f"{name} must be a number above 0 and at most {MAX_LEARNING_RATE:g}, got {value!r}.", "")


def validate_common(steps: int, render_size: int | None, seed: int, device: str) -> None:
    """render_size None: the model's own, checked once the model is loaded."""
    validate_count("steps", steps, low=1)
    if render_size is not None:
        validate_size("render_size", render_size, 16, 2048)
    validate_size("seed", seed, 0, MAX_SEED)
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise BadInputError(f"Unknown device {device!r}.", "Use auto, cpu, cuda or cuda:N.")


def validate_extra_cameras(cameras: list) -> None:
    """The caller's cameras: each {"matrix_world": 4 rows of 4 finite numbers, "fovy_deg": 1..170}."""
    if not isinstance(cameras, list) or len(cameras) > MAX_EXTRA_CAMERAS:
        raise BadInputError(f"extra_cameras must be a list of at most {MAX_EXTRA_CAMERAS} cameras.", "")
    for index, camera in enumerate(cameras):
        where = f"extra_cameras[{index}]"
        if not isinstance(camera, dict) or set(camera) - {"matrix_world", "fovy_deg"}:
            raise BadInputError(f"{where} must be an object with matrix_world and fovy_deg.", "")
        matrix = camera.get("matrix_world")
        if not (isinstance(matrix, list) and len(matrix) == 4
                and all(isinstance(row, list) and len(row) == 4 and all(_finite_number(v) for v in row)
                        for row in matrix)):
            raise BadInputError(f"{where}.matrix_world must be 4 rows of 4 finite numbers.",
                                "Give the camera's 4 x 4 camera-to-world matrix.")
        fovy = camera.get("fovy_deg", 40.0)
        if not (_finite_number(fovy) and 1.0 <= fovy <= 170.0):
            raise BadInputError(f"{where}.fovy_deg must be between 1 and 170 degrees, got {fovy!r}.", "")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _controlnets(value: str) -> tuple[str, ...]:
    if value in ("none", ""):
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def add_common_arguments(parser: argparse.ArgumentParser, controlnet_auto: str) -> None:
    """The flags `python -m engine texture` and `edit` share, defined once so they stay alike;
    `controlnet_auto` says what --controlnet auto picks. apply_common_arguments reads them."""
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--controlnet", default="auto", type=_controlnets,
                        help=f"depth,canny | depth | canny | none | auto ({controlnet_auto})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the texture field")
    parser.add_argument("--preview-every", type=int, default=None, help="steps between previews (0: none)")
    parser.add_argument("--allow-download", action="store_true", help="let the model be downloaded")
    parser.add_argument("--cache-dir", default=None, help="Hugging Face cache folder")


def apply_common_arguments(config: Any, args: argparse.Namespace) -> None:
    """add_common_arguments' flags (but --out, which each config takes when it is made) into a
    TextureJobConfig or an EditJobConfig."""
    config.seed, config.device, config.learning_rate = args.seed, args.device, args.lr
    config.preview_every = args.preview_every
    config.prior.controlnets = args.controlnet
    config.prior.allow_download = args.allow_download
    config.prior.cache_dir = args.cache_dir


def to_dict(config: Any) -> dict:
    """Settings as plain JSON-able data, for result.json."""
    return dataclasses.asdict(config)


def update_from_dict(config: Any, data: dict, where: str = "settings") -> Any:
    """Overlay a JSON object on a (nested) config dataclass, rejecting unknown keys and values
    whose type differs from the setting's (a pair stays a pair of numbers, a count an integer)."""
    if not isinstance(data, dict):
        raise BadInputError(f"{where} must be an object.", "")
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, value in data.items():
        if key not in fields:
            raise BadInputError(f"Unknown setting {where}.{key}.", f"Known settings: {', '.join(sorted(fields))}.")
        name, current = f"{where}.{key}", getattr(config, key)
        if dataclasses.is_dataclass(current):
            update_from_dict(current, value, name)
        else:
            setattr(config, key, _typed_value(name, value, current, str(fields[key].type)))
    return config


def _typed_value(name: str, value: Any, current: Any, annotation: str) -> Any:
    """`value` as the type of the setting now holding `current` (declared as `annotation`)."""
    if current is None:  # an optional setting left open: its declared type says what it takes
        if value is None:
            return None
        for type_name, example in (("int", 0), ("float", 0.0), ("str", "")):
            if annotation.startswith(type_name):
                return _typed_value(name, value, example, annotation)
        raise BadInputError(f"{name} has the wrong type ({type(value).__name__}).", "")
    if isinstance(current, tuple):
        if not isinstance(value, (list, tuple)):
            raise BadInputError(f"{name} must be a list.", "")
        if current and all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in current):
            if len(value) != len(current):
                raise BadInputError(f"{name} must be a list of {len(current)} numbers, got {len(value)} items.", "")
            return tuple(_typed_value(f"{name}[{index}]", item, 0.0, "float") for index, item in enumerate(value))
        if not all(isinstance(item, str) for item in value):
            raise BadInputError(f"{name} must be a list of names.", "")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise BadInputError(f"{name} must be true or false.", "")
        return value
    if isinstance(current, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise BadInputError(f"{name} must be a number.", "")
        try:
            return float(value)
        except OverflowError as exc:  # an integer too large for a float
            raise BadInputError(f"{name} = {value} is too large.", "") from exc
    if isinstance(current, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadInputError(f"{name} must be an integer.", "")
        return value
    if isinstance(value, type(current)):
        return value
    raise BadInputError(f"{name} has the wrong type ({type(value).__name__}).", "")
