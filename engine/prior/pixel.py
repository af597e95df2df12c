"""Pixel-space priors: DeepFloyd IF stage I style folders and the bundled prior.

The render is resized to the model's resolution and mapped to [-1, 1]; no autoencoder.
IF's UNet predicts noise and a learned variance (6 channels): only the noise is used.

IF's T5 encodes prompts as IFPipeline.encode_prompt does: 77 tokens (IF was trained at that
length, though T5 takes more), with the attention mask, after the pipeline's text preprocessing
without caption cleaning (lowercase, stripped). IFPipeline's default clean_caption=True also
drops URLs, HTML and some punctuation when bs4 and ftfy are installed; for plain prompts it is
the same. threestudio's DeepFloyd prompt processor does not lowercase.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelNotFoundError
from .base import ControlImages, DiffusionPrior
from .hub import load_weights
from .schedule import load_noise_schedule
from .tokenizer import load_tokenizer

IF_TEXT_LENGTH = 77


class PixelPrior(DiffusionPrior):
    pixel_space = True

    def __init__(self, unet, text_encoder, tokenizer, alphas_cumprod: torch.Tensor, name: str,
                 device: torch.device, dtype: torch.dtype, t5_prompts: bool, prediction_type: str = "epsilon"):
        """t5_prompts: encode prompts as IF does its T5 (see the module's docstring); otherwise as
        CLIP-style encoders were trained, padded to the tokenizer's length without a mask."""
        self.unet, self.text_encoder, self.tokenizer = unet, text_encoder, tokenizer
        self.name, self.device, self.dtype = name, device, dtype
        self.t5_prompts = t5_prompts
        self.prediction_type = prediction_type
        self.warnings = []
        self.alphas_cumprod = alphas_cumprod.to(device=device, dtype=torch.float32)
        self.resolution = int(unet.config.sample_size)
        for module in (unet, text_encoder):
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_folder(cls, folder: Path, name: str, device: torch.device, dtype: torch.dtype) -> "PixelPrior":
        import json

        import transformers
        from diffusers import UNet2DConditionModel

        index = json.loads((folder / "model_index.json").read_text())
        encoder_library, encoder_class = index.get("text_encoder", ["transformers", "T5EncoderModel"])
        encoder_type = getattr(transformers, encoder_class, None)
        if encoder_library != "transformers" or encoder_type is None:
            raise ModelNotFoundError(f"{name}: text encoder {encoder_library}.{encoder_class} is not supported.",
                                     "Use a DeepFloyd IF stage I folder or the bundled prior.")
        schedule = load_noise_schedule(folder, name)
        tokenizer = load_tokenizer(folder, "tokenizer", name)
        unet = load_weights(UNet2DConditionModel, folder, "unet", dtype).to(device)
        text_encoder = load_weights(encoder_type, folder, "text_encoder", dtype).to(device)
        return cls(unet, text_encoder, tokenizer, schedule.alphas_cumprod, name, device, dtype,
                   t5_prompts=encoder_class.startswith("T5"), prediction_type=schedule.prediction_type)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        if self.t5_prompts:
            prompts = [prompt.lower().strip() for prompt in prompts]
            self.warn_truncated_prompts(self.tokenizer, prompts, IF_TEXT_LENGTH)
            tokens = self.tokenizer(prompts, padding="max_length",
                                    max_length=IF_TEXT_LENGTH, truncation=True, add_special_tokens=True,
                                    return_tensors="pt")
            mask = tokens.attention_mask.to(self.device)
        else:
            self.warn_truncated_prompts(self.tokenizer, prompts, self.tokenizer.model_max_length)
            tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            mask = None
        return self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0].to(self.dtype)

    def release_text_encoder(self) -> None:
        self.text_encoder = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def images_to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        return images * 2.0 - 1.0

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor,
                      control: ControlImages | None = None) -> torch.Tensor:
        output = self.unet(noisy.to(self.dtype), timesteps, encoder_hidden_states=embeddings, return_dict=False)[0]
        # The first channels are the prediction; IF's others are its learned variance.
        return self.noise_from_prediction(output[:, : noisy.shape[1]], noisy, timesteps)
