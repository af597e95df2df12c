"""The parts every job's settings are made of: guidance, cameras, the hash-grid field, the prior.

Defaults follow the paper and the authors' released settings
(shared/reference/csd-settings.md) where those apply; the rest are ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import BadInputError
from .checks import (MAX_GUIDANCE_WEIGHT, MAX_NAME_CHARS, MAX_VIEW_POOL, Settings, check_range, count, integer,
                     number, text)

DEFAULT_NEGATIVE_PROMPT = "oversaturated color, ugly, tiling, low quality, noisy"
BUNDLED_MODEL = "bundled"
DEFAULT_LATENT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CONTROLNET_CONDITIONS = ("depth", "canny")


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


def _guidance_weight(default: float) -> float:
    return number(default, -MAX_GUIDANCE_WEIGHT, MAX_GUIDANCE_WEIGHT)


def _unit(default: float | None) -> float | None:
    return number(default, 0.0, 1.0)


@dataclass
class GuidanceConfig(Settings):
    """How the diffusion prior's predictions become a gradient on the render.

    mode "csd": g = w1 * (e(y) - e("")) - w2 * (e(y_neg) - e(""))   (paper Eq. 7, 10)
    mode "sds": g = e("") + cfg_scale * (e(y) - e("")) - noise        (paper Eq. 5, 6)
    w2 goes linearly from w2_start to w2_end over w2_anneal_steps (released code's ramps).
    """

    mode: Literal["csd", "sds"] = "csd"
    w1: float = _guidance_weight(1.0)
    w2_start: float = _guidance_weight(1.0)
    w2_end: float = _guidance_weight(0.5)
    w2_anneal_steps: int = count(10000)
    cfg_scale: float = _guidance_weight(100.0)
    t_min: float = _unit(0.02)
    t_max: float = _unit(0.50)
    # If set, t_max switches to this after `t_max_switch_step` (NeRF stage: 0.98 -> 0.5 at 5000).
    t_max_before_switch: float | None = _unit(None)
    t_max_switch_step: int = count(0)

    def check_relations(self, where: str) -> None:
        if not self.t_min < self.t_max:
            raise BadInputError(f"Timestep range [{self.t_min}, {self.t_max}] of {where}t_min, t_max is invalid.",
                                "Use 0 <= t_min < t_max <= 1.")

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
class CameraConfig(Settings):
    """Random views around an object normalised into the unit box (paper's texture setup)."""

    elevation_deg: tuple[float, float] = number((-10.0, 45.0), -90.0, 90.0)
    azimuth_deg: tuple[float, float] = number((-180.0, 180.0), -360.0, 360.0)
    distance: tuple[float, float] = number((2.6, 3.2), 0.0, 1_000.0, above=True)
    fovy_deg: tuple[float, float] = number((25.0, 45.0), 1.0, 170.0)
    view_pool: int = integer(96, 1, MAX_VIEW_POOL)

    def check_relations(self, where: str) -> None:
        for name in ("elevation_deg", "azimuth_deg", "distance", "fovy_deg"):
            check_range(f"Camera range {where}{name}", getattr(self, name))


@dataclass
class HashGridConfig(Settings):
    """Multiresolution hash encoding (Instant-NGP) plus a small MLP."""

    levels: int = integer(16, 1, 32)
    features_per_level: Literal[1, 2, 4, 8] = 2
    log2_table_size: int = integer(19, 8, 24)
    base_resolution: int = integer(16, 2, 4096)
    per_level_scale: float = number(1.447, 1.0, 4.0)
    mlp_width: int = integer(64, 1, 1024)
    mlp_hidden_layers: int = integer(1, 0, 8)


@dataclass
class PriorConfig(Settings):
    """Which diffusion model guides the job. `model` is a hub id, a local folder, or "bundled"."""

    model: str = text(BUNDLED_MODEL, MAX_NAME_CHARS, "Pass --model bundled, a hub id, or a local folder.")
    # ("auto",): the base model family's ControlNets (ControlNetDefaults; none for SD 2.x and
    # pixel models), plus any named in controlnet_models.
    controlnets: tuple[str, ...] = ("auto",)
    # ControlNets the user names (hub id or folder) by condition; they must match the base model.
    controlnet_models: dict[str, str] = field(default_factory=dict)
    controlnet_scale_start: float = number(0.5, 0.0, 10.0)
    controlnet_scale_end: float = number(0.2, 0.0, 10.0)
    controlnet_switch_step: int = count(1000)
    half_precision: bool = True
    cache_dir: str | None = text(None, MAX_NAME_CHARS)
    allow_download: bool = False

    def check_relations(self, where: str) -> None:
        for name, model in self.controlnet_models.items():
            if (name not in CONTROLNET_CONDITIONS or not isinstance(model, str) or not model.strip()
                    or len(model) > MAX_NAME_CHARS):
                raise BadInputError(f"{where}controlnet_models.{name} = {model!r} is not a ControlNet setting.",
                                    "Name a depth or canny ControlNet by hub id or folder.")
        if self.controlnets == ("auto",):
            return
        for name in self.controlnets:
            if name not in CONTROLNET_CONDITIONS:
                raise BadInputError(f"Unknown ControlNet {name!r}.", "Use depth, canny, auto, or none.")

    def controlnet_scale_at(self, step: int) -> float:
        return self.controlnet_scale_start if step < self.controlnet_switch_step else self.controlnet_scale_end
