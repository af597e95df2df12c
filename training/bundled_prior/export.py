"""Turn a training run's fp16 weights into the diffusers folder the engine ships and loads.

    python -m training.bundled_prior.export --weights runs/prior/prior_fp16.safetensors --out engine/prior/bundled

The run's run.json beside the weights (written by train.py) gives its architecture and training views;
without one, the shipped architecture and views are assumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from judge.palette import COLOURS, PALETTE, PATTERNS, SHAPES

from .dataset import TRAIN_CAMERAS
from .model import MAX_TOKENS, RESOLUTION, build_text_encoder, build_tokenizer, build_unet, export_folder
from .world import DEGRADATIONS, NEGATIVE_PROMPT, VIEWS, vocabulary


def run_description(weights: Path) -> dict:
    """The run's UNet overrides and training cameras (run.json), or the shipped ones."""
    path = weights.parent / "run.json"
    run = json.loads(path.read_text()) if path.is_file() else {}
    cameras = run.get("training_cameras", {})
    return {"unet": run.get("unet", {}),
            "training_cameras": {key: list(cameras.get(key, getattr(TRAIN_CAMERAS, key)))
                                 for key in ("elevation_deg", "azimuth_deg", "distance", "fovy_deg")}}


def load_weights(path: Path, unet_overrides: dict):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    tokenizer = build_tokenizer(vocabulary())
    unet = build_unet(**unet_overrides)
    text_encoder = build_text_encoder(tokenizer.get_vocab_size())
    unet.load_state_dict({k[len("unet."):]: v.float() for k, v in tensors.items() if k.startswith("unet.")})
    text_encoder.load_state_dict({k[len("text_encoder."):]: v.float() for k, v in tensors.items()
                                  if k.startswith("text_encoder.")})
    return unet, text_encoder, tokenizer


def world_description(weights_sha256: str, training_cameras: dict) -> dict:
    """world.json: what the bundled prior knows (read by tests, the bench and, if it likes, the UI)."""
    return {
        "description": "The bundled prior: a tiny pixel-space text-to-image diffusion model trained by "
                       "training/bundled_prior on renders of simple shapes made with engine.render.",
        "resolution": RESOLUTION,
        "max_tokens": MAX_TOKENS,
        "shapes": list(SHAPES),
        "colours": {name: list(PALETTE[name]) for name in COLOURS},
        "patterns": list(PATTERNS),
        "colour_rule": "'a red striped cube' = red and white; 'a white striped cube' = white and black; "
                       "'a black and white striped cube' = black base with white stripes (first colour = base)",
        "views": list(VIEWS),
        "view_rule": "', front view' / ', side view' / ', back view' appended; front = camera azimuth within "
                     "45 degrees of -90 (camera on -Y)",
        "degradations": list(DEGRADATIONS),
        "negative_prompt": NEGATIVE_PROMPT,
        "training_cameras": training_cameras,
        "example_prompts": ["a red sphere", "a green checkered cube", "a black and white striped cylinder",
                            "a yellow dotted cone", "a blue torus, front view"],
        "weights_sha256": weights_sha256,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run = run_description(Path(args.weights))
    unet, text_encoder, tokenizer = load_weights(Path(args.weights), run["unet"])
    digest = hashlib.sha256(Path(args.weights).read_bytes()).hexdigest()
    export_folder(Path(args.out), unet, text_encoder, tokenizer, world_description(digest, run["training_cameras"]))
    total = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"wrote {args.out} ({total / 2**20:.2f} MiB)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
