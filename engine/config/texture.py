"""Settings of the texture job (a prompt -> a texture on a given mesh)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import BadInputError
from ..job.protocol import DEVICE_PATTERN
from .checks import (MAX_NAME_CHARS, MAX_PROMPT_CHARS, MAX_SEED, Settings, check_extra_cameras, check_setting, count,
                     custom, integer, learning_rate_setting, number, pattern, probability, text)
from .parts import DEFAULT_NEGATIVE_PROMPT, CameraConfig, GuidanceConfig, HashGridConfig, PriorConfig
from .presets import apply_preset, open_settings, preset_for

if TYPE_CHECKING:  # edit.py imports this module
    from .edit import EditJobConfig

PROMPT_HINT = "Describe what you want, e.g. --prompt \"a wooden chair\"."
DEVICE_HINT = "Use auto, cpu, cuda or cuda:N."
# A pixel model (DeepFloyd IF, 64 px) renders at this and sees it downsampled with antialiasing.
PIXEL_MODEL_RENDER_SIZE = 512
# What the texture field optimises: "albedo" a base colour shaded by one directional light (matte),
# "pbr" base colour, roughness and metallic shaded under environment light (engine/render/pbr.py).
Material = Literal["albedo", "pbr"]
# Regions (docs/job-protocol.md, "Regions"): the band at a region's border where new and kept texture
# blend lies inside the region and is the wider of these two: texels of the kept texture, and
# distance over the surface in the unit box (the object's largest side is 1).
DEFAULT_FEATHER_TEXELS = 8
DEFAULT_FEATHER_DISTANCE = 0.03
# A camera of the pool is kept for a region job when the region covers at least this share of the
# object's pixels in its view (the best views are kept when too few reach it).
DEFAULT_REGION_VIEW_SHARE = 0.05
# Adam steps fitting the field to the kept texture before a region texture job.
DEFAULT_REGION_FIT_STEPS = 300


def render_size_setting(default: int | None = None) -> int | None:
    return integer(default, 16, 2048)


def texture_size_setting(default: int | None = None) -> int | None:
    return integer(default, 16, 8192)


def seed_setting() -> int:
    return integer(0, 0, MAX_SEED)


def device_setting() -> str:
    return pattern("auto", DEVICE_PATTERN, DEVICE_HINT)


def region_path_setting() -> str | None:
    """A region job's file (the region, the kept texture): None for a job on the whole object."""
    return text(None, MAX_NAME_CHARS)


def feather_texels_setting() -> int:
    return integer(DEFAULT_FEATHER_TEXELS, 0, 256)


def feather_distance_setting() -> float:
    return number(DEFAULT_FEATHER_DISTANCE, 0.0, 1.0)


def region_view_share_setting() -> float:
    return probability(DEFAULT_REGION_VIEW_SHARE)


@dataclass
class TextureJobConfig(Settings):
    prompt: str = text(MISSING, MAX_PROMPT_CHARS, PROMPT_HINT)
    mesh: str
    out: str
    negative_prompt: str = text(DEFAULT_NEGATIVE_PROMPT, MAX_PROMPT_CHARS)
    # None: the prior's preset (presets.PRESETS["texture"]), filled in by resolve_defaults();
    # render_size, for a model other than the bundled one, by resolve_render_size() once it is loaded.
    steps: int | None = count(None, low=1)
    render_size: int | None = render_size_setting()
    texture_size: int | None = texture_size_setting()
    seed: int = seed_setting()
    device: str = device_setting()
    learning_rate: float = learning_rate_setting(1e-2)
    reunwrap: bool = False
    preview_every: int | None = count(None)
    lighting: bool = True
    # None: the prior's preset (pbr for real models; the bundled prior learned no materials), or
    # albedo when lighting is off (unlit renders show no material).
    material: Material | None = None
    up_axis: Literal["Y", "Z"] | None = None  # the mesh file's up axis; None: the format's convention
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    # Cameras given by the caller (the add-on's scene cameras), in the mesh's own frame:
    # a list of {"matrix_world": 4x4 camera-to-world (OpenGL axes), "fovy_deg": float}.
    extra_cameras: list[dict] = custom([], check_extra_cameras)
    # Only part of the object (docs/job-protocol.md, "Regions"): `region` a .npy of face indices or a
    # per-face bool mask; `keep_texture` the image kept outside it, in the mesh's UV layout (None: the
    # mesh file's own texture).
    region: str | None = region_path_setting()
    keep_texture: str | None = region_path_setting()
    region_feather_texels: int = feather_texels_setting()
    region_feather_distance: float = feather_distance_setting()
    region_allow_whole_mesh: bool = False
    region_view_share: float = region_view_share_setting()
    region_fit_steps: int = count(DEFAULT_REGION_FIT_STEPS)

    def resolve_defaults(self) -> "TextureJobConfig":
        resolve_unlit_material(self)
        apply_preset(self, open_settings(self, preset_for("texture", self.prior.model)), "texture")
        if self.guidance.w2_anneal_steps == GuidanceConfig.w2_anneal_steps:
            self.guidance.w2_anneal_steps = self.steps
        return self

    def resolve_render_size(self, model_resolution: int, pixel_space: bool) -> int:
        """The render size, once the model is known: the user's, else the latent model's own
        resolution (SD 1.x: 512, SD 2.x 768-v: 768, SDXL: 1024) or PIXEL_MODEL_RENDER_SIZE."""
        if self.render_size is None:
            self.render_size = PIXEL_MODEL_RENDER_SIZE if pixel_space else model_resolution
            check_setting(self, "render_size")
        return self.render_size

    def validate(self) -> None:
        self.resolve_defaults()
        super().validate()

    def check_relations(self, where: str) -> None:
        check_lit_material(self)
        if self.keep_texture is not None and self.region is None:
            raise BadInputError("A texture to keep was given without a region.",
                                "Add --region FACES.npy (the faces to texture), or leave out --keep-texture.")
        if self.region is not None and self.reunwrap:
            raise BadInputError("A region job keeps the mesh's UV layout (the kept texture lies in it); "
                                "it cannot unwrap anew.", "Leave out --reunwrap.")


def resolve_unlit_material(config: "TextureJobConfig | EditJobConfig") -> None:
    """An open material with lighting off is albedo: roughness and metallic show only under light."""
    if config.material is None and not config.lighting:
        config.material = "albedo"


def check_lit_material(config: "TextureJobConfig | EditJobConfig") -> None:
    if config.material == "pbr" and not config.lighting:
        raise BadInputError("material 'pbr' needs lighting: roughness and metallic show only in lit renders.",
                            "Turn lighting on, or set material to 'albedo'.")
