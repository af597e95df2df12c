"""Find a diffusion model (bundled, local folder, single-file checkpoint or hub id) and load
the right prior for it, with the ControlNets that match it.

Downloads happen only when the caller allows them (the add-on passes Blender's
online-access setting; the CLI's --allow-download). Otherwise only files already on this
machine are used, and a missing model ends in a message saying how to get it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch

from ..config import BUNDLED_MODEL, CONTROLNET_CONDITIONS, PriorConfig
from ..errors import BadInputError, ModelNotFoundError
from .base import DiffusionPrior
from .families import (BUNDLED_PRIOR_DIR, SINGLE_FILE_SUFFIXES, SUPPORTED, Family, ModelDescription,
                       describe_controlnet_folder, describe_model_folder)


def resolve_model_folder(model: str, config: PriorConfig) -> Path:
    """The local folder holding a diffusers model: bundled, a path, or the hub cache."""
    if model == BUNDLED_MODEL:
        if not (BUNDLED_PRIOR_DIR / "model_index.json").is_file():
            raise ModelNotFoundError("The bundled prior's files are missing from this installation.",
                                     "Reinstall the engine (the repository ships engine/prior/bundled/).")
        return BUNDLED_PRIOR_DIR
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{model} is a file, not a diffusers model folder.",
                                     "Pass the folder that contains model_index.json or config.json "
                                     "(only base models can be single files).")
        return path
    looks_like_path = model.startswith((".", "/", "~")) or model.count("/") != 1
    if looks_like_path:  # hub ids are exactly "owner/name"
        raise ModelNotFoundError(f"Model {model!r} is not on this machine (no such folder).",
                                 "Pass an existing diffusers folder, a single .safetensors/.ckpt file, a hub id "
                                 "(owner/name), or --model bundled for the small offline prior.")
    from .hub import hub_model_folder

    return hub_model_folder(model, config.cache_dir, allow_download=config.allow_download)


def downloads_allowed(config: PriorConfig) -> bool:
    from huggingface_hub import is_offline_mode

    return config.allow_download and not is_offline_mode()


def base_model_folder(model: str, config: PriorConfig) -> tuple[Path, str | None]:
    """The diffusers folder of the base model `model` and, when a single-file checkpoint was
    converted into one just now, a notice saying so."""
    path = Path(model).expanduser()
    if model != BUNDLED_MODEL and path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ModelNotFoundError(f"{model} is a file, but not a .safetensors or .ckpt checkpoint.", SUPPORTED)
        from .single_file import folder_for_single_file

        return folder_for_single_file(path, model, config.cache_dir, offline=not downloads_allowed(config))
    return resolve_model_folder(model, config), None


def pick_controlnets(description: ModelDescription, config: PriorConfig,
                     model: str) -> tuple[dict[str, str], list[str]]:
    """The ControlNets (condition -> hub id or folder) the job uses with `model`, and what to tell
    the user about them. `auto` takes the ones the user named plus the family's defaults; a named
    condition takes the user's ControlNet, else the family's default, else fails."""
    if not config.controlnets:
        return {}, []
    auto = config.controlnets == ("auto",)
    defaults = description.controlnet_defaults
    if defaults is None:  # a pixel-space model: no ControlNet can guide it
        if not auto:
            raise BadInputError(f"{model} is a pixel-space model ({description.label}); ControlNets need a latent "
                                "(Stable Diffusion or SDXL) model.", "Pass --controlnet none, or a latent model.")
        ignored = sorted(config.controlnet_models)
        return {}, [f"The {' and '.join(ignored)} ControlNet(s) named in the settings are not used: {model} is a "
                    f"pixel-space model ({description.label})."] if ignored else []
    named = config.controlnet_models
    conditions = ([c for c in CONTROLNET_CONDITIONS if c in named or defaults.for_condition(c)] if auto
                  else list(config.controlnets))
    chosen = {}
    for condition in conditions:
        source = named.get(condition) or defaults.for_condition(condition)
        if source is None:
            raise BadInputError(f"There is no standard {condition} ControlNet for {description.label} models "
                                "(lllyasviel's and diffusers' are for SD 1.5 and SDXL).",
                                f"Name one made for {description.label} in the settings "
                                f"(prior.controlnet_models.{condition}), or pass --controlnet none.")
        chosen[condition] = source
    if not auto:
        return chosen, []
    if chosen:
        listed = ", ".join(f"{condition} {source}" for condition, source in chosen.items())
        return chosen, [f"ControlNets for {description.label}: {listed}."]
    return chosen, [f"No ControlNets: there are no standard depth or canny ControlNets for {description.label} "
                    "models, so the texture is guided by the prompt alone. Name one made for it in the settings "
                    "(prior.controlnet_models) to use it."]


def controlnet_folders(chosen: dict[str, str], description: ModelDescription, config: PriorConfig,
                       model: str) -> dict[str, Path]:
    """The chosen ControlNets' folders, each checked against the base model's UNet before any weight
    is loaded: a ControlNet for another family would fail at the first step on a shape mismatch."""
    folders = {}
    for condition, source in chosen.items():
        folder = resolve_model_folder(source, config)
        made_for = describe_controlnet_folder(folder, source)
        if made_for != description.unet:
            raise BadInputError(
                f"The {condition} ControlNet {source} is made for {made_for.describe()}, but {model} is "
                f"{description.label} ({description.unet.describe()}).",
                f"Name a {condition} ControlNet made for {description.label} in the settings "
                f"(prior.controlnet_models.{condition}), or pass --controlnet none.")
        folders[condition] = folder
    return folders


@contextlib.contextmanager
def broken_weights_reported(model: str) -> Iterator[None]:
    """Damaged model files (truncated, empty or foreign weights, configs that do not fit the weights or
    cannot build the network) as a broken-model error: the files, not the engine, are at fault."""
    from safetensors import SafetensorError

    try:
        yield
    except torch.OutOfMemoryError:  # a RuntimeError too, but the runner reports it as out of memory
        raise
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, SafetensorError) as exc:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
        raise ModelNotFoundError(f"The files of {model} are damaged or do not fit together ({reason}).",
                                 "Delete the model's folder and download it again "
                                 "(python -m engine models download ID --allow-download).") from exc


def load_prior(config: PriorConfig, device: torch.device, model: str | None = None) -> DiffusionPrior:
    """Load the prior `model` (default config.model) on `device`, with ControlNets if asked."""
    import diffusers
    import transformers

    from .latent import LatentPrior
    from .pixel import PixelPrior

    # Their loading chatter (accelerate hints, dtype notes) is noise in a job's output.
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()

    model = model or config.model
    folder, conversion_notice = base_model_folder(model, config)
    description = describe_model_folder(folder, model)
    chosen, notices = pick_controlnets(description, config, model)
    controlnets = controlnet_folders(chosen, description, config, model)
    dtype = torch.float16 if (device.type == "cuda" and config.half_precision) else torch.float32
    with broken_weights_reported(model):
        if description.family == Family.SDXL:
            from .sdxl import SdxlPrior

            prior = SdxlPrior.from_folder(folder, model, device, dtype, controlnets)
        elif description.pixel_space:
            prior = PixelPrior.from_folder(folder, model, device, dtype)
        else:
            prior = LatentPrior.from_folder(folder, model, device, dtype, controlnets)
    prior.warnings += [notice for notice in (conversion_notice, *notices) if notice]
    return prior
