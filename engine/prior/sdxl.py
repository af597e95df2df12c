"""Stable Diffusion XL (base) as a texture prior, conditioned as diffusers' StableDiffusionXLPipeline
(and StableDiffusionXLControlNetPipeline) condition it.

What SDXL adds to Stable Diffusion 1.x/2.x (LatentPrior):
  - two text encoders, CLIP ViT-L (CLIPTextModel) and OpenCLIP bigG (CLIPTextModelWithProjection):
    the UNet cross-attends to both penultimate hidden states side by side (768 + 1280 = 2048 wide);
  - added conditions for the UNet and its ControlNets: `text_embeds`, the second encoder's pooled and
    projected embedding, and `time_ids`, (original height, width, crop top, left, target height, width)
    of the image, here the render as the VAE sees it, uncropped;
  - the unconditional prompt "" is all zeros, hidden states and pooled embedding alike, when the
    model's model_index.json sets force_zeros_for_empty_prompt (SDXL base does): what the pipeline
    uses for classifier-free guidance when no negative prompt is given;
  - a VAE that overflows in float16 (its config's force_upcast): on a GPU in half precision the
    fp16-fixed VAE is used when it is on this machine, else the VAE runs in float32.

The engine passes a prompt's embedding around as one (L, D) tensor (indexed, repeated, interpolated
for Perp-Neg) into predict_noise. SDXL's pooled embedding travels in that tensor as extra rows:
`pack_embeddings` appends it, zero-padded to whole rows of width D, after the L hidden-state rows, and
predict_noise takes it back out (`unpack_embeddings`). Every operation the engine applies to embeddings
is row-wise or linear, so it acts on the pooled rows as it would on a separate pooled tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ModelNotFoundError
from .base import ControlImages
from .hub import load_weights
from .latent import LatentPrior
from .schedule import load_noise_schedule
from .tokenizer import load_tokenizer

# The SDXL VAE fine-tuned to stay finite in float16 (same latents up to small differences).
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
TIME_IDS = 6  # original size (2), crop top-left (2), target size (2)


def pack_embeddings(hidden_states: Tensor, pooled: Tensor) -> Tensor:
    """(K, L, D) hidden states and (K, P) pooled embeddings -> (K, L + ceil(P / D), D)."""
    count, width = hidden_states.shape[0], hidden_states.shape[-1]
    rows = pooled_rows(pooled.shape[-1], width)
    padded = F.pad(pooled.to(hidden_states.dtype), (0, rows * width - pooled.shape[-1]))
    return torch.cat([hidden_states, padded.view(count, rows, width)], dim=1)


def unpack_embeddings(embeddings: Tensor, pooled_dim: int) -> tuple[Tensor, Tensor]:
    """pack_embeddings' inverse: (hidden states (K, L, D), pooled (K, P))."""
    tokens = embeddings.shape[1] - pooled_rows(pooled_dim, embeddings.shape[-1])
    return embeddings[:, :tokens], embeddings[:, tokens:].flatten(1)[:, :pooled_dim]


def pooled_rows(pooled_dim: int, width: int) -> int:
    return -(-pooled_dim // width)


def hub_cache_of(folder: Path) -> Path | None:
    """The Hugging Face cache a snapshot folder (<cache>/models--owner--name/snapshots/<rev>) lies in."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parents[1].name.startswith("models--"):
        return folder.parents[2]
    return None


def find_fp16_fix_vae(model_folder: Path) -> Path | None:
    """The fp16-fixed SDXL VAE's folder when it is on this machine, in the Hugging Face cache the model
    came from or in the default cache (never downloads); None if it is in neither."""
    from huggingface_hub import try_to_load_from_cache

    for cache in (hub_cache_of(model_folder), None):  # None: the default cache
        config = try_to_load_from_cache(FP16_FIX_VAE, "config.json", cache_dir=cache)
        if isinstance(config, str) and any(Path(config).parent.glob("diffusion_pytorch_model*.safetensors")):
            return Path(config).parent
    return None


def load_vae(folder: Path, dtype: torch.dtype):
    """The model's VAE, safe in `dtype`, and a warning when that costs speed or memory.

    SDXL's own VAE overflows in float16 (vae/config.json force_upcast): in half precision the
    fp16-fixed VAE replaces it when present, else it runs in float32, as the pipeline upcasts it.
    """
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(folder, subfolder="vae")
    if dtype != torch.float16 or not config.get("force_upcast", False):
        return load_weights(AutoencoderKL, folder, "vae", dtype), None
    fixed = find_fp16_fix_vae(folder)
    if fixed is not None:
        return load_weights(AutoencoderKL, fixed, dtype=dtype), None
    warning = (f"SDXL's VAE overflows in half precision, so it runs in float32 (slower, more GPU memory). "
               f"Download the fp16-fixed VAE once (`python -m engine models download {FP16_FIX_VAE} --allow-download`) and the engine uses it.")
    return load_weights(AutoencoderKL, folder, "vae", torch.float32), warning


class SdxlPrior(LatentPrior):
    """SDXL base: renders through the VAE encoder (with gradient), the UNet with pooled text embeddings
    and time ids, optional SDXL ControlNets (depth, canny) with the same added conditions."""

    def __init__(self, unet, vae, text_encoders: tuple, tokenizers: tuple, alphas_cumprod: Tensor,
                 controlnets: dict, name: str, device: torch.device, dtype: torch.dtype,
                 force_zeros_for_empty_prompt: bool = True, prediction_type: str = "epsilon"):
        if unet.config.addition_embed_type != "text_time":
            raise ValueError(f"{name}: an SDXL UNet has addition_embed_type 'text_time', "
                             f"not {unet.config.addition_embed_type!r}")
        super().__init__(unet, vae, text_encoders[0], tokenizers[0], alphas_cumprod, controlnets, name, device,
                         dtype, prediction_type=prediction_type)
        self.text_encoder_2, self.tokenizer_2 = text_encoders[1], tokenizers[1]
        if isinstance(self.text_encoder_2, torch.nn.Module):
            self.text_encoder_2.requires_grad_(False)
            self.text_encoder_2.eval()
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        # The UNet's added embedding reads [pooled text embedding, 6 sinusoidal time-id embeddings].
        self.pooled_dim = (int(unet.config.projection_class_embeddings_input_dim)
                           - TIME_IDS * int(unet.config.addition_time_embed_dim))
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self._time_ids: dict[tuple[int, int], Tensor] = {}

    @classmethod
    def from_folder(cls, folder: Path, name: str, device: torch.device, dtype: torch.dtype,
                    controlnet_folders: dict[str, Path]) -> "SdxlPrior":
        from diffusers import ControlNetModel, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        index = json.loads((folder / "model_index.json").read_text())
        schedule = load_noise_schedule(folder, name)
        unet = load_weights(UNet2DConditionModel, folder, "unet", dtype).to(device)
        vae, vae_warning = load_vae(folder, dtype)
        text_encoder = load_weights(CLIPTextModel, folder, "text_encoder", dtype)
        text_encoder_2 = load_weights(CLIPTextModelWithProjection, folder, "text_encoder_2", dtype)
        tokenizers = (load_tokenizer(folder, "tokenizer", name), load_tokenizer(folder, "tokenizer_2", name))
        # load_prior has checked that the ControlNets are SDXL ones (addition_embed_type text_time).
        controlnets = {key: load_weights(ControlNetModel, path, dtype=dtype).to(device)
                       for key, path in controlnet_folders.items()}
        prior = cls(unet, vae.to(device), (text_encoder.to(device), text_encoder_2.to(device)), tokenizers,
                    schedule.alphas_cumprod, controlnets, name, device, dtype,
                    force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
                    prediction_type=schedule.prediction_type)
        if int(text_encoder_2.config.projection_dim) != prior.pooled_dim:
            raise ModelNotFoundError(f"{name}: text_encoder_2's projection_dim ({text_encoder_2.config.projection_dim})"
                                     f" does not match the UNet's pooled text embedding ({prior.pooled_dim}).",
                                     "The folder mixes components of different models; download it again.")
        if vae_warning:
            prior.warnings.append(vae_warning)
        return prior

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """(K, L + pooled rows, 2048): see pack_embeddings."""
        hidden_states = []
        for tokenizer, text_encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            self.warn_truncated_prompts(tokenizer, prompts, tokenizer.model_max_length)
            tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                               truncation=True, return_tensors="pt")
            # As the pipeline: no attention mask, the penultimate layer's hidden states.
            output = text_encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
        # The pooled, projected embedding is the last (second) encoder's, CLIPTextModelWithProjection's.
        hidden, pooled = torch.cat(hidden_states, dim=-1), output.text_embeds
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([not prompt.strip() for prompt in prompts], device=self.device)
            hidden, pooled = hidden.masked_fill(empty[:, None, None], 0.0), pooled.masked_fill(empty[:, None], 0.0)
        return pack_embeddings(hidden.to(self.dtype), pooled.to(self.dtype))

    def release_text_encoder(self) -> None:
        self.text_encoder_2 = None
        super().release_text_encoder()

    def images_to_model_input(self, images: Tensor) -> Tensor:
        if images.shape[-1] != self.resolution:
            images = F.interpolate(images, (self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False, antialias=True)
        # The VAE's own dtype: float32 where SDXL's VAE would overflow in half precision.
        posterior = self.vae.encode(images.to(self.vae.dtype) * 2.0 - 1.0).latent_dist
        return posterior.mean * self.vae_scale

    def time_ids(self, latent_size: tuple[int, int]) -> Tensor:
        """(1, 6) time ids for latents of `latent_size`, as the pipeline's _get_add_time_ids builds them:
        original size = target size = the image size, crop (0, 0). Made once per size, so a CUDA graph
        that captures predict_noise after a warm-up call finds it made."""
        if latent_size not in self._time_ids:
            height, width = (side * self.vae_scale_factor for side in latent_size)
            self._time_ids[latent_size] = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype,
                                                       device=self.device)
        return self._time_ids[latent_size]

    def predict_noise(self, noisy: Tensor, timesteps: Tensor, embeddings: Tensor,
                      control: ControlImages | None = None) -> Tensor:
        model_input = noisy.to(self.dtype)
        hidden, pooled = unpack_embeddings(embeddings, self.pooled_dim)
        batch = model_input.shape[0]
        added = {"text_embeds": pooled,
                 "time_ids": self.time_ids(tuple(model_input.shape[-2:])).expand(batch, TIME_IDS)}
        down_residuals, mid_residual = self.controlnet_residuals(model_input, timesteps, hidden, control,
                                                                 added_cond_kwargs=added)
        output = self.unet(model_input, timesteps, encoder_hidden_states=hidden, added_cond_kwargs=added,
                           down_block_additional_residuals=down_residuals,
                           mid_block_additional_residual=mid_residual, return_dict=False)[0]
        return self.noise_from_prediction(output, noisy, timesteps)
