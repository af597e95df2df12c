"""Stable Diffusion 1.x/2.x as a prior: renders go through the VAE encoder (with gradient),
the UNet predicts noise (or v, converted to noise) on latents, optional ControlNets (depth,
canny) condition it."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import ControlImages, DiffusionPrior
from .hub import load_weights
from .schedule import load_noise_schedule
from .tokenizer import load_tokenizer


class LatentPrior(DiffusionPrior):
    pixel_space = False

    def __init__(self, unet, vae, text_encoder, tokenizer, alphas_cumprod: torch.Tensor,
                 controlnets: dict, name: str, device: torch.device, dtype: torch.dtype,
                 prediction_type: str = "epsilon"):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.controlnets = controlnets
        self.name, self.device, self.dtype = name, device, dtype
        self.prediction_type = prediction_type
        self.warnings = []
        self.alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)
        self.vae_scale = float(vae.config.scaling_factor)
        self.resolution = int(unet.config.sample_size) * (2 ** (len(vae.config.block_out_channels) - 1))
        for module in (unet, vae, text_encoder, *controlnets.values()):
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_folder(cls, folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                    controlnet_folders: dict[str, Path]) -> "LatentPrior":
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel

        schedule = load_noise_schedule(folder, name)
        tokenizer = load_tokenizer(folder, "tokenizer", name)
        unet = load_weights(UNet2DConditionModel, folder, "unet", dtype).to(device)
        vae = load_weights(AutoencoderKL, folder, "vae", dtype).to(device)
        text_encoder = load_weights(CLIPTextModel, folder, "text_encoder", dtype).to(device)
        controlnets = {key: load_weights(ControlNetModel, path, dtype=dtype).to(device)
                       for key, path in controlnet_folders.items()}
        return cls(unet, vae, text_encoder, tokenizer, schedule.alphas_cumprod, controlnets, name, device, dtype,
                   prediction_type=schedule.prediction_type)

    @property
    def supports_controlnet(self) -> bool:
        return bool(self.controlnets)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        self.warn_truncated_prompts(self.tokenizer, prompts, self.tokenizer.model_max_length)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        # Stable Diffusion was trained without an attention mask on the padded prompt.
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def release_text_encoder(self) -> None:
        self.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def images_to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        posterior = self.vae.encode(images.to(self.dtype) * 2.0 - 1.0).latent_dist
        # The mean keeps a step deterministic; sampling adds noise the guidance does not need.
        return posterior.mean * self.vae_scale

    def controlnet_residuals(self, model_input: torch.Tensor, timesteps: torch.Tensor, hidden: torch.Tensor,
                             control: ControlImages | None, **conditioning) -> tuple[list | None, torch.Tensor | None]:
        """Every ControlNet's down and mid residuals, summed (None, None without control);
        `conditioning` is passed on to each ControlNet (SDXL's added_cond_kwargs)."""
        down_residuals, mid_residual = None, None
        if control is None or not self.controlnets:
            return down_residuals, mid_residual
        for key, controlnet in self.controlnets.items():
            condition = control.images[key].to(self.dtype)
            if condition.shape[-1] != self.resolution:
                condition = F.interpolate(condition, (self.resolution, self.resolution), mode="bilinear",
                                          align_corners=False, antialias=True)
            condition = condition.repeat(model_input.shape[0] // condition.shape[0], 1, 1, 1)
            down, mid = controlnet(model_input, timesteps, encoder_hidden_states=hidden, controlnet_cond=condition,
                                   conditioning_scale=control.scale, return_dict=False, **conditioning)
            if down_residuals is None:
                down_residuals, mid_residual = list(down), mid
            else:
                down_residuals = [a + b for a, b in zip(down_residuals, down)]
                mid_residual = mid_residual + mid
        return down_residuals, mid_residual

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
                      control: ControlImages | None = None) -> torch.Tensor:
        model_input = noisy.to(self.dtype)
        down_residuals, mid_residual = self.controlnet_residuals(model_input, timesteps, embeddings, control)
        output = self.unet(model_input, timesteps, encoder_hidden_states=embeddings,
                           down_block_additional_residuals=down_residuals,
                           mid_block_additional_residual=mid_residual, return_dict=False)[0]
        return self.noise_from_prediction(output, noisy, timesteps)
