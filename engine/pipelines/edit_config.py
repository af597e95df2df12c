"""Settings of the edit job (paper section 4, "CSD for Text-Guided Editing", Eq. 11), and how the
command line and job.json build them. Kept apart from engine/pipelines/edit.py so that the CLI
can parse and validate an edit without importing torch.

    g = w1 * (e(y_target) - e("")) - w2 * (e(y_edit) - e(""))           (Eq. 11; paper 5.4: w1 = 1, w2 = 0.5)
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from ..config import (BUNDLED_MODEL, MAX_NAME_CHARS, MAX_PROMPT_CHARS, CameraConfig, GuidanceConfig, HashGridConfig,
                      PriorConfig, add_common_arguments, apply_common_arguments, update_from_dict, validate_common,
                      validate_count, validate_extra_cameras, validate_learning_rate, validate_size,
                      validate_text)
from ..errors import BadInputError, JobFileError

# `prior.model` when the user names none: the model the source was made with (bundled for mesh files).
SOURCE_MODEL = "source"
# An edit starts from a finished texture, so it needs fewer steps than texturing (300 / 2000).
EDIT_BUNDLED_DEFAULTS = {"steps": 150, "render_size": 64, "texture_size": 512, "preview_every": 50}
EDIT_LATENT_DEFAULTS = {"steps": 800, "render_size": 512, "texture_size": 1024, "preview_every": 200}
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
class EditJobConfig:
    source: str  # a texture job's output folder (state.pt) or a textured mesh file (.glb/.gltf/.obj)
    target_prompt: str  # the object as it should be after the edit ("a blue striped sphere")
    edit_prompt: str  # the attribute to change or remove ("red"); empty: plain CSD towards the target
    out: str
    # None: the source job's value when it used the same prior, else EDIT_*_DEFAULTS.
    steps: int | None = None
    render_size: int | None = None
    texture_size: int | None = None  # None: the source's texture size
    seed: int = 0
    device: str = "auto"
    learning_rate: float = 1e-2
    preserve_weight: float = DEFAULT_PRESERVE_WEIGHT
    fit_steps: int = DEFAULT_FIT_STEPS  # only for mesh files, whose texture must be fitted first
    edit_geometry: bool = False  # generated assets only; textures on a given mesh never move it
    preview_every: int | None = None
    lighting: bool = True
    up_axis: str | None = None  # a mesh file's up axis, "Y" or "Z"; None: the format's convention
    guidance: GuidanceConfig = field(default_factory=edit_guidance)
    cameras: CameraConfig = field(default_factory=CameraConfig)
    # The field's layout for mesh-file sources; a saved state brings its own (and it is recorded here).
    hash_grid: HashGridConfig = field(default_factory=HashGridConfig)
    prior: PriorConfig = field(default_factory=lambda: PriorConfig(model=SOURCE_MODEL))
    # Cameras given by the caller (the add-on's scene cameras), as in TextureJobConfig.
    extra_cameras: list[dict] = field(default_factory=list)

    def resolve_source_defaults(self, source_settings: dict, texture_size_hint: int | None) -> "EditJobConfig":
        """Fill what the user left open from the source: its prior, render and texture size."""
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
        same_prior = source_prior.get("model") == self.prior.model
        defaults = EDIT_BUNDLED_DEFAULTS if self.prior.model == BUNDLED_MODEL else EDIT_LATENT_DEFAULTS
        if self.render_size is None:
            source_size = source_settings.get("render_size")
            self.render_size = source_size if same_prior and isinstance(source_size, int) else defaults["render_size"]
        if self.texture_size is None:
            source_size = source_settings.get("texture_size")
            if isinstance(source_size, int):
                self.texture_size = source_size
            elif texture_size_hint is not None:
                self.texture_size = min(max(int(texture_size_hint), 16), 4096)
            else:
                self.texture_size = defaults["texture_size"]
        for key in ("steps", "preview_every"):
            if getattr(self, key) is None:
                setattr(self, key, defaults[key])
        self.validate_resolved()
        return self

    def validate(self) -> None:
        """Everything that can be checked before the source is opened."""
        if not isinstance(self.source, str) or not self.source.strip():
            raise BadInputError("No edit source given.",
                                "Pass a texture job's output folder or a textured .glb/.obj file as SOURCE.")
        validate_text("source", self.source, MAX_NAME_CHARS)
        if not isinstance(self.target_prompt, str) or not self.target_prompt.strip():
            raise BadInputError("The target prompt is empty.",
                                "Describe the object as it should become, "
                                "e.g. --target-prompt \"a blue striped sphere\".")
        validate_text("target_prompt", self.target_prompt, MAX_PROMPT_CHARS)
        if not isinstance(self.edit_prompt, str):
            raise BadInputError("The edit prompt must be text.", "e.g. --edit-prompt \"red\".")
        validate_text("edit_prompt", self.edit_prompt, MAX_PROMPT_CHARS)
        validate_common(self.steps if self.steps is not None else 1,
                        self.render_size if self.render_size is not None else 64, self.seed, self.device)
        if self.texture_size is not None:
            validate_size("texture_size", self.texture_size, 16, 8192)
        if self.up_axis not in (None, "Y", "Z"):
            raise BadInputError(f"up_axis must be Y or Z, got {self.up_axis!r}.", "")
        validate_learning_rate("learning_rate", self.learning_rate)
        if not 0 <= self.preserve_weight <= MAX_PRESERVE_WEIGHT:
            raise BadInputError(f"preserve_weight must be a number from 0 to {MAX_PRESERVE_WEIGHT:g}, "
                                f"got {self.preserve_weight!r}.",
                                "0 turns preservation off; larger values keep more of the source.")
        validate_count("fit_steps", self.fit_steps)
        if self.preview_every is not None:
            validate_count("preview_every (0 turns previews off)", self.preview_every)
        validate_extra_cameras(self.extra_cameras)
        if self.guidance.mode != "csd":
            raise BadInputError(f"Edits use CSD (paper Eq. 11), not {self.guidance.mode!r} guidance.",
                                "Leave guidance.mode at \"csd\".")
        self.guidance.validate()
        self.cameras.validate()
        self.hash_grid.validate()
        self.prior.validate()

    def validate_resolved(self) -> None:
        validate_common(self.steps, self.render_size, self.seed, self.device)
        validate_size("texture_size", self.texture_size, 16, 8192)
        validate_count("preview_every (0 turns previews off)", self.preview_every)
        self.prior.validate()


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a texture job's output folder (with state.pt), or a textured .glb/.obj")
    parser.add_argument("--target-prompt", required=True, help="the object as it should become")
    parser.add_argument("--edit-prompt", required=True, help="the attribute to change or remove, e.g. \"red\"")
    add_common_arguments(parser, controlnet_auto="the source's")
    parser.add_argument("--w1", type=float, default=1.0, help="weight of the target prompt's classifier score")
    parser.add_argument("--w2", type=float, default=0.5,
                        help="weight of the edit prompt's (subtracted) classifier score")
    parser.add_argument("--steps", type=int, default=None, help="default: 150 (bundled) / 800")
    parser.add_argument("--preserve-weight", type=float, default=DEFAULT_PRESERVE_WEIGHT,
                        help="image-space L2 to the source's renders (0: off)")
    parser.add_argument("--edit-geometry", action="store_true", help="also move a generated asset's surface")
    parser.add_argument("--model", default=SOURCE_MODEL,
                        help="hub id, local diffusers folder, 'bundled', or 'source' (the source's model; default)")
    parser.add_argument("--render-size", type=int, default=None, help="default: the source's")
    parser.add_argument("--texture-size", type=int, default=None, help="default: the source's")
    parser.add_argument("--fit-steps", type=int, default=DEFAULT_FIT_STEPS,
                        help="steps fitting a field to a mesh file's texture before editing")
    parser.add_argument("--up-axis", choices=("Y", "Z"), default=None, help="a mesh file's up axis")


def edit_config_from_args(args: argparse.Namespace) -> EditJobConfig:
    config = EditJobConfig(source=args.source, target_prompt=args.target_prompt, edit_prompt=args.edit_prompt,
                           out=args.out, steps=args.steps, render_size=args.render_size,
                           texture_size=args.texture_size, preserve_weight=args.preserve_weight,
                           fit_steps=args.fit_steps, edit_geometry=args.edit_geometry, up_axis=args.up_axis)
    apply_common_arguments(config, args)
    config.guidance.w1, config.guidance.w2_start, config.guidance.w2_end = args.w1, args.w2, args.w2
    config.prior.model = args.model
    return config


def edit_config_from_job(settings: dict, source: Path, out: Path) -> EditJobConfig:
    for key in ("source", "out"):
        if key in settings:
            raise JobFileError(f"job.json settings may not contain {key!r}.",
                               "Give the source as the job's top-level 'source' and the folder as 'output'.")
    if "target_prompt" not in settings:
        raise JobFileError("job.json settings have no 'target_prompt'.", "An edit needs target_prompt and edit_prompt.")
    config = EditJobConfig(source=str(source), target_prompt="", edit_prompt="", out=str(out))
    return update_from_dict(config, settings)
