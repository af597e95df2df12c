"""Tiny diffusers models built in code and saved as real model folders, so tests exercise the
same loading path as real checkpoints without any download."""

from __future__ import annotations

import json
from pathlib import Path

import torch

WORDS = ["a", "red", "green", "blue", "sphere", "cube", "striped", "and", "wooden", "chair", "nurse", "corgi"]


def save_word_tokenizer(folder: Path, max_length: int = 8) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                             special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]",
                                   bos_token="[BOS]", eos_token="[EOS]", model_max_length=max_length)
    fast.save_pretrained(folder)


def _text_encoder(hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8,
                            pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return CLIPTextModel(config)


def _scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


def make_tiny_pixel_prior(folder: Path, size: int = 16, seed: int = 0) -> Path:
    """An IF-stage-I-style folder: UNet2DConditionModel on pixels, a text encoder, tokenizer, scheduler."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel(sample_size=size, in_channels=3, out_channels=6, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    _text_encoder(16).save_pretrained(folder / "text_encoder")
    save_word_tokenizer(folder / "tokenizer")
    _scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "IFPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


def make_tiny_stable_diffusion(folder: Path, seed: int = 0) -> Path:
    """A Stable-Diffusion-style folder (VAE with 8x downsampling, latent UNet at 8x8 -> 64 px)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=16,
                                attention_head_dim=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                        block_out_channels=(4, 4, 4, 4), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    vae.save_pretrained(folder / "vae")
    _text_encoder(16).save_pretrained(folder / "text_encoder")
    save_word_tokenizer(folder / "tokenizer")
    _scheduler().save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


def make_tiny_controlnet(folder: Path, sd_folder: Path, seed: int = 0) -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    controlnet.save_pretrained(folder)
    return folder


def _text_encoder_with_projection(hidden: int, projection: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=8,
                            pad_token_id=0, bos_token_id=2, eos_token_id=3, projection_dim=projection)
    return CLIPTextModelWithProjection(config)


# Tiny SDXL: hidden states 16 + 16 = 32 wide; the pooled embedding (24) is narrower than a row, so
# the engine's packing of it pads; the added embedding reads 24 + 6 time ids x 4 = 48 values.
TINY_SDXL_POOLED, TINY_SDXL_TIME_EMBED = 24, 4


def make_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """An SDXL-base-style folder: two text encoders (the second with projection), two tokenizers, a
    UNet with addition_embed_type text_time, a VAE with force_upcast, SDXL's Euler scheduler config."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=32,
                                attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=TINY_SDXL_TIME_EMBED,
                                projection_class_embeddings_input_dim=TINY_SDXL_POOLED + 6 * TINY_SDXL_TIME_EMBED,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder / "unet")
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                        block_out_channels=(4, 4, 4, 4), layers_per_block=1, scaling_factor=0.13025,
                        force_upcast=True, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    vae.save_pretrained(folder / "vae")
    _text_encoder(16).save_pretrained(folder / "text_encoder")
    _text_encoder_with_projection(16, TINY_SDXL_POOLED).save_pretrained(folder / "text_encoder_2")
    save_word_tokenizer(folder / "tokenizer")
    save_word_tokenizer(folder / "tokenizer_2")
    EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           steps_offset=1, timestep_spacing="leading").save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
        "force_zeros_for_empty_prompt": True, "add_watermarker": None,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"]}))
    return folder


def make_tiny_sdxl_controlnet(folder: Path, sdxl_folder: Path, seed: int = 0) -> Path:
    """An SDXL ControlNet (addition_embed_type text_time, from the tiny SDXL UNet)."""
    return make_tiny_controlnet(folder, sdxl_folder, seed)
