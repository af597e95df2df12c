"""Settings of the texture job (a prompt -> a texture on a given mesh)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import TYPE_CHECKING, Literal

from ..errors import BadInputError
from ..job.protocol import DEVICE_PATTERN
from .checks import (MAX_PROMPT_CHARS, MAX_SEED, Settings, check_extra_cameras, check_setting, count, custom,
                     integer, learning_rate_setting, pattern, text)
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


def render_size_setting(default: int | None = None) -> int | None:
    return integer(default, 16, 2048)


def texture_size_setting(default: int | None = None) -> int | None:
    return integer(default, 16, 8192)


def seed_setting() -> int:
    return integer(0, 0, MAX_SEED)


def device_setting() -> str:
    return pattern("auto", DEVICE_PATTERN, DEVICE_HINT)


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


def resolve_unlit_material(config: "TextureJobConfig | EditJobConfig") -> None:
    """An open material with lighting off is albedo: roughness and metallic show only under light."""
    if config.material is None and not config.lighting:
        config.material = "albedo"


def check_lit_material(config: "TextureJobConfig | EditJobConfig") -> None:
    if config.material == "pbr" and not config.lighting:
        raise BadInputError("material 'pbr' needs lighting: roughness and metallic show only in lit renders.",
                            "Turn lighting on, or set material to 'albedo'.")
