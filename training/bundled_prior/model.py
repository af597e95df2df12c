"""The bundled prior's components and their diffusers-format export.

A DeepFloyd-IF-stage-I-shaped model in miniature: a pixel-space UNet2DConditionModel at 32 px
(3 channels in and out, epsilon prediction), a small CLIPTextModel whose last hidden state is
the cross-attention context (and, through IF's "text" addition embedding, a pooled global
condition), a word-level tokenizer over the world's vocabulary, and a DDPM scheduler.

Why 32 px: a batch-3 forward of the smallest useful 64 px UNet took ~100 ms on the 2-core CPU
(the budget was ~25 ms); this 32 px UNet takes ~40 ms (measured by
`python -m training.bundled_prior.model --time`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MAX_TOKENS = 24          # tokenizer model_max_length = text encoder positions
RESOLUTION = 32
TEXT_HIDDEN = 128

MODEL_INDEX = {
    "_class_name": "IFPipeline",
    "_diffusers_version": "0.42.1",
    "unet": ["diffusers", "UNet2DConditionModel"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "watermarker": [None, None],
    "requires_safety_checker": False,
}

UNET_CONFIG = dict(
    sample_size=RESOLUTION,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    layers_per_block=1,
    attention_head_dim=(1, 2, 4),     # diffusers' legacy name: these are head counts (head size 32)
    cross_attention_dim=TEXT_HIDDEN,
    norm_num_groups=8,
    resnet_time_scale_shift="scale_shift",
    addition_embed_type="text",        # as DeepFloyd IF: attention-pooled text added to the time embedding
    addition_embed_type_num_heads=4,
)

TEXT_CONFIG = dict(
    hidden_size=TEXT_HIDDEN,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_TOKENS,
    hidden_act="quick_gelu",
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
    projection_dim=TEXT_HIDDEN,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    variance_type="fixed_small",
    clip_sample=True,
    clip_sample_range=1.0,
)


def build_tokenizer(vocab: list[str]):
    """A `tokenizers` word-level tokenizer: lowercase, split on whitespace and punctuation,
    [BOS] ... [EOS], padded and truncated to MAX_TOKENS."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    ids = {word: i for i, word in enumerate(vocab)}
    assert ids["[PAD]"] == 0 and ids["[UNK]"] == 1 and ids["[BOS]"] == 2 and ids["[EOS]"] == 3
    tokenizer = Tokenizer(WordLevel(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation(behavior="isolated")])
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]", special_tokens=[
        ("[BOS]", 2), ("[EOS]", 3)])
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_TOKENS)
    return tokenizer


def encode_texts(tokenizer, texts: list[str]) -> torch.Tensor:
    """(N, MAX_TOKENS) int64 ids, exactly as the transformers wrapper gives them with
    padding="max_length", truncation=True (checked in tests/test_bundled_prior.py)."""
    return torch.tensor([e.ids for e in tokenizer.encode_batch(texts)], dtype=torch.long)


def build_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, **TEXT_CONFIG))


def build_unet(**overrides):
    """The shipped architecture, or a variant of it (`overrides` of UNET_CONFIG, e.g. layers_per_block)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULER_CONFIG)


def export_folder(folder: Path, unet, text_encoder, tokenizer, extra: dict | None = None) -> None:
    """Write the diffusers folder the engine loads (engine/prior/load.py): fp16 safetensors."""
    import copy

    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    copy.deepcopy(unet).to(torch.float16).save_pretrained(folder / "unet", safe_serialization=True)
    copy.deepcopy(text_encoder).to(torch.float16).save_pretrained(folder / "text_encoder", safe_serialization=True)
    build_scheduler().save_pretrained(folder / "scheduler")
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="[BOS]", eos_token="[EOS]",
                                      unk_token="[UNK]", pad_token="[PAD]", model_max_length=MAX_TOKENS,
                                      padding_side="right", truncation_side="right")
    wrapped.save_pretrained(folder / "tokenizer")
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = MAX_TOKENS
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    if extra is not None:
        (folder / "world.json").write_text(json.dumps(extra, indent=2) + "\n")


def time_forward(repeats: int = 30) -> float:
    """Median seconds of a batch-3 fp32 UNet forward (text, empty, negative) on this CPU."""
    import time

    unet = build_unet().eval()
    x = torch.randn(3, 3, RESOLUTION, RESOLUTION)
    t = torch.tensor([500] * 3)
    context = torch.randn(3, MAX_TOKENS, TEXT_HIDDEN)
    times = []
    with torch.no_grad():
        for _ in range(5):
            unet(x, t, context)
        for _ in range(repeats):
            start = time.perf_counter()
            unet(x, t, context)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--time", action="store_true")
    args = parser.parse_args()
    unet = build_unet()
    from .world import vocabulary

    encoder = build_text_encoder(len(vocabulary()))
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in encoder.parameters())
    print(f"UNet {n_unet / 1e6:.2f} M params, text encoder {n_text / 1e6:.2f} M; fp16 total "
          f"{2 * (n_unet + n_text) / 2**20:.1f} MiB")
    if args.time:
        torch.set_num_threads(2)
        print(f"batch-3 fp32 forward on {torch.get_num_threads()} threads: {time_forward() * 1000:.1f} ms (median)")
