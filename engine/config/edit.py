"""Settings of the edit job (paper section 4, "CSD for Text-Guided Editing", Eq. 11). Apart from
engine/pipelines/edit_texture.py so that the CLI can parse and validate an edit without torch.

    g = w1 * (e(y_target) - e("")) - w2 * (e(y_edit) - e(""))           (Eq. 11; paper 5.4: w1 = 1, w2 = 0.5)
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Literal

from ..errors import BadInputError
from .checks import (MAX_NAME_CHARS, MAX_PROMPT_CHARS, Settings, check_extra_cameras, count, custom, learning_rate_setting,
                     number, text)
from .dicts import update_from_dict
from .parts import BUNDLED_MODEL, CameraConfig, GuidanceConfig, HashGridConfig, PriorConfig
from .presets import apply_preset, open_settings, preset_for
from .texture import (Material, check_lit_material, device_setting, feather_distance_setting, feather_texels_setting,
                      region_path_setting, region_view_share_setting, render_size_setting, resolve_unlit_material,
                      seed_setting, texture_size_setting)

# `prior.model` when the user names none: the model the source was made with (bundled for mesh files).
SOURCE_MODEL = "source"
# Weight of the image-space L2 between the current render and the source's render from the same
# view, light and background (mean over pixels of the squared RGB difference). Calibrated on the
# bundled prior at 64 px, where Eq. 11's pixel-space gradient has unit norm per view: this keeps a
# full recolouring possible while pulling back what the prompts do not ask to change
# (docs/edit.md has the measurements). 0 turns preservation off.
DEFAULT_PRESERVE_WEIGHT = 20.0
MAX_PRESERVE_WEIGHT = 1e6
# Adam steps that fit a fresh field to a mesh file's texture before the edit starts.
DEFAULT_FIT_STEPS = 300


def edit_guidance() -> GuidanceConfig:
    """Eq. 11 with the paper's weights: CSD, w1 = 1, a constant w2 = 0.5 on the edit prompt."""
    return GuidanceConfig(mode="csd", w1=1.0, w2_start=0.5, w2_end=0.5)


@dataclass
class EditJobConfig(Settings):
    # a texture job's output folder (state.pt) or a textured mesh file (.glb/.gltf/.obj)
    source: str = text(MISSING, MAX_NAME_CHARS,
                       "Pass a texture job's output folder or a textured .glb/.obj file as SOURCE.")
    # the object as it should be after the edit ("a blue striped sphere")
    target_prompt: str = text(MISSING, MAX_PROMPT_CHARS, "Describe the object as it should become, "
                                                         "e.g. --target-prompt \"a blue striped sphere\".")
    # the attribute to change or remove ("red"); empty: plain CSD towards the target
    edit_prompt: str = text(MISSING, MAX_PROMPT_CHARS)
    out: str
    # None: the source job's value when it used the same prior, else the edit preset's.
    steps: int | None = count(None, low=1)
    render_size: int | None = render_size_setting()
    texture_size: int | None = texture_size_setting()  # None: the source's texture size
    seed: int = seed_setting()
    device: str = device_setting()
    learning_rate: float = learning_rate_setting(1e-2)
    preserve_weight: float = number(DEFAULT_PRESERVE_WEIGHT, 0.0, MAX_PRESERVE_WEIGHT,
                                    hint="0 turns preservation off; larger values keep more of the source.")
    fit_steps: int = count(DEFAULT_FIT_STEPS)  # only for mesh files, whose texture must be fitted first
    edit_geometry: bool = False  # generated assets only; textures on a given mesh never move it
    preview_every: int | None = count(None)
    lighting: bool = True
    # None: the source's material (albedo or pbr; a mesh file's: the edit preset's). Another one
    # than the source's converts its field (albedo -> pbr starts matte; pbr -> albedo drops them).
    material: Material | None = None
    up_axis: Literal["Y", "Z"] | None = None  # a mesh file's up axis; None: the format's convention
    guidance: GuidanceConfig = field(default_factory=edit_guidance)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    # The field's layout for mesh-file sources; a saved state brings its own (and it is recorded here).
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(model=SOURCE_MODEL))
    # Cameras given by the caller (the add-on's scene cameras), as in TextureJobConfig.
    extra_cameras: list[dict] = custom([], check_extra_cameras)
    # Only part of the object (docs/job-protocol.md, "Regions"): a .npy of face indices or a per-face
    # bool mask of the source's mesh; outside it the source's own texture is kept.
    region: str | None = region_path_setting()
    region_feather_texels: int = feather_texels_setting()
    region_feather_distance: float = feather_distance_setting()
    region_allow_whole_mesh: bool = False
    region_view_share: float = region_view_share_setting()

    def resolve_source_defaults(self, source_settings: dict, texture_size_hint: int | None,
                                source_material: Material | None = "albedo") -> "EditJobConfig":
        """Fill what the user left open from the source (its prior, render and texture size, and
        `source_material`, its field's: None for a mesh file, albedo for a generated asset), then
        from the edit preset of the prior."""
        source_prior = source_settings.get("prior")
        if not isinstance(source_prior, dict):  # a generate job's texture: its refinement stage's prior
            stage2 = source_settings.get("stage2")
            source_prior = stage2.get("prior") if isinstance(stage2, dict) else None
        source_prior = source_prior if isinstance(source_prior, dict) else {}
        if self.prior.model == SOURCE_MODEL:
            self.prior.model = str(source_prior.get("model") or BUNDLED_MODEL)
            for key in ("controlnet_models", "controlnet_scale_start", "controlnet_scale_end",
                        "controlnet_switch_step", "half_precision"):
                if key in source_prior:
                    update_from_dict(self.prior, {key: source_prior[key]}, "source.prior")
            if self.prior.controlnets == ("auto",) and "controlnets" in source_prior:
                update_from_dict(self.prior, {"controlnets": source_prior["controlnets"]}, "source.prior")
        if self.render_size is None and source_prior.get("model") == self.prior.model:
            source_size = source_settings.get("render_size")
            self.render_size = source_size if isinstance(source_size, int) else None
        if self.texture_size is None:
            source_size = source_settings.get("texture_size")
            if isinstance(source_size, int):
                self.texture_size = source_size
            elif texture_size_hint is not None:
                self.texture_size = min(max(int(texture_size_hint), 16), 4096)
        resolve_unlit_material(self)
        if self.material is None:
            self.material = source_material
        apply_preset(self, open_settings(self, preset_for("edit", self.prior.model)), "edit")
        self.validate()
        return self

    def check_relations(self, where: str) -> None:
        if self.guidance.mode != "csd":
            raise BadInputError(f"Edits use CSD (paper Eq. 11), not {self.guidance.mode!r} guidance.",
                                "Leave guidance.mode at \"csd\".")
        check_lit_material(self)
        if self.edit_geometry and self.material == "pbr":
            raise BadInputError("A geometry edit keeps a generated asset's albedo texture; it cannot make a PBR "
                                "material.", "Leave out --material pbr with --edit-geometry.")
        if self.edit_geometry and self.region is not None:
            raise BadInputError("A geometry edit moves the whole surface; it cannot keep to a region.",
                                "Leave out --edit-geometry to edit the region's texture, or the region.")
