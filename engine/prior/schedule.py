"""The noise schedule a model was trained with and what its network predicts, read from the
model's own scheduler config with the model's own scheduler class.

Real folders ship PNDMScheduler (SD 1.5), DDIMScheduler (SD 2.x), EulerDiscreteScheduler (SDXL)
or DDPMScheduler (IF) configs. Their classes build the training alphas from the same fields
(betas or beta_start/beta_end/beta_schedule, rescale_betas_zero_snr) but not identically
(Euler keeps the last alpha_bar at 2^-24 under zero terminal SNR), so the folder's class is used
rather than one class for all. timestep_spacing and the like only shape sampling and do not matter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelNotFoundError

# What DiffusionPrior.noise_from_prediction converts to noise.
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # (T,) float32: alpha_bar_t of the training timesteps
    prediction_type: str  # "epsilon" or "v_prediction"


def load_noise_schedule(folder: Path, name: str) -> NoiseSchedule:
    """`folder`/scheduler's training schedule and prediction type; a model whose network predicts
    anything but noise or v (e.g. `sample`), or that is not a DDPM-style model, is refused."""
    import diffusers

    config_path = folder / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelNotFoundError(f"{name}: its scheduler config ({config_path}) cannot be read: {exc}.",
                                 "Download the model again; the engine needs scheduler/scheduler_config.json.") from exc
    class_name = str(config.get("_class_name", ""))
    scheduler_class = getattr(diffusers, class_name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise ModelNotFoundError(f"{name}: its scheduler {class_name or '(unnamed)'} is not a diffusers scheduler.",
                                 "Use a Stable Diffusion 1.x/2.x, SDXL or DeepFloyd IF stage I model.")
    scheduler = scheduler_class.from_config(config)
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if not isinstance(alphas_cumprod, torch.Tensor):
        raise ModelNotFoundError(
            f"{name} is not a DDPM-style diffusion model (its {class_name} has no alpha schedule; "
            "flow-matching models such as SD3 and FLUX are not supported).",
            "Use a Stable Diffusion 1.x/2.x, SDXL or DeepFloyd IF stage I model.")
    prediction_type = str(scheduler.config.get("prediction_type", "epsilon"))
    if prediction_type not in PREDICTION_TYPES:
        raise ModelNotFoundError(
            f"{name}'s network predicts {prediction_type!r}; score distillation needs a noise (epsilon) "
            "or v-prediction model.",
            "Use a model whose scheduler config says prediction_type epsilon or v_prediction.")
    return NoiseSchedule(alphas_cumprod.to(torch.float32), prediction_type)
