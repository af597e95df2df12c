"""The bundled prior: its world (shapes, colours, patterns, captions), tokenizer, shipped folder
and loading through the engine's own code path. Fast (seconds) on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from judge import judge_colour, parse_prompt
from judge.palette import COLOURS, PALETTE, PATTERNS, SHAPES
from training.bundled_prior.model import MAX_TOKENS, MODEL_INDEX, RESOLUTION, build_tokenizer, encode_texts
from training.bundled_prior.world import (DEGRADATIONS, NEGATIVE_PROMPT, PatternParams, SceneAttributes, caption,
                                          jitter_colours, make_shape, pattern_albedo, sample_attributes,
                                          sample_pattern_params, view_name, vocabulary)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "engine" / "prior" / "bundled"


# ------------------------------------------------------------------------------------------------
# The world
# ------------------------------------------------------------------------------------------------

def test_world_has_the_issue_attributes():
    assert {"sphere", "cube", "cylinder", "cone", "torus"} <= set(SHAPES)
    assert len(COLOURS) >= 8
    assert {"plain", "striped", "checkered", "dotted"} <= set(PATTERNS)


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_fill_the_unit_box(shape):
    for rng in (None, np.random.default_rng(3)):
        mesh = make_shape(shape, rng)
        lo, hi = mesh.positions.min(0), mesh.positions.max(0)
        assert np.isclose((hi - lo).max(), 1.0, atol=1e-5)
        assert np.allclose((hi + lo) / 2, 0.0, atol=1e-5)
        assert mesh.triangles.max() < len(mesh.positions)


def test_captions_name_the_attributes_and_use_known_words():
    rng = np.random.default_rng(0)
    tokenizer = build_tokenizer(vocabulary())
    texts = []
    for _ in range(600):
        attributes = sample_attributes(rng, SHAPES[rng.integers(len(SHAPES))])
        text = caption(attributes, rng, view_name(float(rng.uniform(-180, 180))) if rng.random() < 0.3 else None,
                       tuple(DEGRADATIONS[: rng.integers(0, 3)]))
        texts.append(text)
        canonical = caption(attributes)
        parsed = parse_prompt(canonical)
        assert parsed["shape"] == attributes.shape and parsed["pattern"] == attributes.pattern
        assert parsed["colours"][0] == attributes.colour
        if attributes.pattern != "plain":
            assert parsed["colours"][1] == attributes.second
    ids = encode_texts(tokenizer, texts + [NEGATIVE_PROMPT])
    assert not (ids == 1).any(), "a caption word is missing from the vocabulary ([UNK])"
    assert (ids[:, -1] == 0).all(), "captions must fit in the tokenizer's length with room to spare"


def test_caption_colour_rule():
    assert caption(SceneAttributes("cube", "striped", "red", "white", False)) == "a red striped cube"
    assert caption(SceneAttributes("cube", "striped", "black", "white", True)) == "a black and white striped cube"
    assert caption(SceneAttributes("torus", "plain", "orange", "orange", False)) == "an orange torus"
    assert parse_prompt("a white dotted cone")["colours"] == ["white", "black"]
    assert parse_prompt("a red striped cube")["colours"] == ["red", "white"]


@pytest.mark.parametrize("azimuth, view", [(-90, "front"), (-60, "front"), (0, "side"), (180, "side"),
                                           (90, "back"), (-150, "side"), (120, "back")])
def test_view_words(azimuth, view):
    assert view_name(azimuth) == view


def test_jittered_colours_still_read_as_their_name():
    rng = np.random.default_rng(1)
    for index, name in enumerate(COLOURS):
        albedos = jitter_colours(np.full(50, index), rng)
        for albedo in albedos:
            patch = np.tile(albedo, (4, 4, 1))
            assert judge_colour(patch)[0] == name


def test_patterns_split_the_surface_between_two_colours():
    rng = np.random.default_rng(2)
    grid = torch.stack(torch.meshgrid(torch.linspace(-0.5, 0.5, 64), torch.linspace(-0.5, 0.5, 64),
                                      indexing="ij"), -1)
    # A tilted plane through the unit box, the same for every pattern.
    position = torch.cat([grid, (0.3 * grid[..., :1] + 0.2 * grid[..., 1:])], -1)[None].repeat(4, 1, 1, 1)
    attributes = [SceneAttributes("cube", p, "red", "red" if p == "plain" else "white", False) for p in PATTERNS]
    params = sample_pattern_params(attributes, rng)
    albedo = pattern_albedo(position, params)
    second_share = [float((albedo[i] == params.second[i]).all(-1).float().mean()) if i else 0.0 for i in range(4)]
    base_share = [float((albedo[i] == params.base[i]).all(-1).float().mean()) for i in range(4)]
    assert base_share[0] == 1.0                      # plain
    assert 0.3 < second_share[1] < 0.7               # striped
    assert 0.3 < second_share[2] < 0.7               # checkered
    assert 0.0 < second_share[3] < 0.4               # dotted: round spots on the base colour
    assert isinstance(params, PatternParams)


# ------------------------------------------------------------------------------------------------
# The shipped folder
# ------------------------------------------------------------------------------------------------

def test_shipped_folder_layout_and_size():
    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index == json.loads(json.dumps(MODEL_INDEX))
    for path in ("unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                 "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                 "scheduler/scheduler_config.json", "world.json"):
        assert (BUNDLED / path).is_file(), path
    total = sum(f.stat().st_size for f in BUNDLED.rglob("*") if f.is_file())
    assert total < 16 * 2**20
    unet_config = json.loads((BUNDLED / "unet" / "config.json").read_text())
    text_config = json.loads((BUNDLED / "text_encoder" / "config.json").read_text())
    assert unet_config["sample_size"] == RESOLUTION and unet_config["in_channels"] == 3
    assert unet_config["out_channels"] == 3
    assert unet_config["cross_attention_dim"] == text_config["hidden_size"]
    scheduler = json.loads((BUNDLED / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler" and scheduler["num_train_timesteps"] == 1000
    assert scheduler["prediction_type"] == "epsilon"
    from safetensors import safe_open

    for path in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        with safe_open(str(BUNDLED / path), "pt") as f:
            assert all(f.get_slice(k).get_dtype() in ("F16", "I64") for k in f.keys())
    world = json.loads((BUNDLED / "world.json").read_text())
    assert world["shapes"] == list(SHAPES) and world["patterns"] == list(PATTERNS)
    assert world["colours"] == {name: list(PALETTE[name]) for name in COLOURS}


def test_shipped_tokenizer_matches_training_tokenizer():
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(BUNDLED, subfolder="tokenizer")
    assert shipped.model_max_length == MAX_TOKENS
    texts = ["a red sphere", "", "A Black and White STRIPED cube, front view", NEGATIVE_PROMPT, "a wooden chair!"]
    ids = shipped(texts, padding="max_length", max_length=shipped.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
    assert torch.equal(ids, encode_texts(build_tokenizer(vocabulary()), texts))
    assert ids[1, :2].tolist() == [2, 3] and (ids[1, 2:] == 0).all()   # "" = [BOS] [EOS] [PAD]...
    assert (ids[4] == 1).any()                                        # unknown words -> [UNK]


@pytest.fixture(scope="module")
def prior():
    from engine.config import PriorConfig
    from engine.prior.load import load_prior

    return load_prior(PriorConfig(model="bundled"), torch.device("cpu"))


def test_loads_through_the_engine(prior):
    from engine.prior.pixel import PixelPrior

    assert isinstance(prior, PixelPrior)
    assert prior.resolution == RESOLUTION and prior.num_train_timesteps == 1000
    embeddings = prior.encode_prompts(["a red sphere", ""])
    assert embeddings.shape == (2, MAX_TOKENS, 128)
    x = prior.images_to_model_input(torch.rand(1, 3, 64, 64))
    assert x.shape == (1, 3, RESOLUTION, RESOLUTION) and x.min() >= -1 and x.max() <= 1
    eps = prior.predict_noise(x.repeat(2, 1, 1, 1), torch.tensor([300, 300]), embeddings)
    assert eps.shape == (2, 3, RESOLUTION, RESOLUTION) and torch.isfinite(eps).all()


def test_prompt_steers_the_denoised_colour(prior):
    """The classifier score carries the prompt: from a noised gray image, the model's clean-image
    estimate is redder for "a red sphere" than for "a blue sphere", and vice versa."""
    torch.manual_seed(0)
    x0 = torch.full((1, 3, RESOLUTION, RESOLUTION), 0.0)
    noise = torch.randn_like(x0)
    t = torch.tensor([600])
    xt = prior.add_noise(x0, noise, t)
    embeddings = prior.encode_prompts(["a red sphere", "a blue sphere", ""])
    eps = prior.predict_noise(xt.repeat(3, 1, 1, 1), t.repeat(3), embeddings)
    abar = prior.alphas_cumprod[t]
    x0_hat = (xt - (1 - abar).sqrt() * eps) / abar.sqrt()
    centre = x0_hat[:, :, 8:24, 8:24].mean(dim=(2, 3))   # (3 prompts, RGB)
    red_minus_blue = centre[:, 0] - centre[:, 2]
    assert red_minus_blue[0] > red_minus_blue[2] > red_minus_blue[1]


def test_unet_forward_is_fast_enough_on_cpu(prior):
    """Budget: a batch-3 (prompt, "", negative) forward well under 0.5 s on a small CPU (~40 ms on an
    idle 2-core machine; generous here because CI machines are shared)."""
    import time

    x = torch.randn(3, 3, RESOLUTION, RESOLUTION)
    embeddings = prior.encode_prompts(["a red sphere", "", NEGATIVE_PROMPT])
    t = torch.tensor([300] * 3)
    prior.predict_noise(x, t, embeddings)
    start = time.perf_counter()
    for _ in range(3):
        prior.predict_noise(x, t, embeddings)
    assert (time.perf_counter() - start) / 3 < 0.5


def test_training_data_renders_with_the_engine_renderer():
    from training.bundled_prior.dataset import BankConfig, SceneSampler, build_bank, compose

    bank = build_bank(BankConfig(views=10, resolution=16, supersample=2, variants_per_shape=1, views_per_draw=2,
                                 seed=5), "cpu", log=None)
    assert bank.mask.any(dim=(1, 2)).all(), "every view sees its object"
    sampler = SceneSampler(bank.shape.numpy(), bank.cameras.azimuth.numpy(), seed=5, degrade_prob=0.5)
    scenes = sampler.sample(12)
    images, coverage = compose(bank, scenes, torch.Generator().manual_seed(0))
    assert images.shape == (12, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert coverage.shape == (12, 16, 16)
    degraded = [text for text, flags in zip(scenes.captions, scenes.degrade) if flags.any() and text]
    assert all(any(d in text for d in DEGRADATIONS) for text in degraded)


def test_training_pauses_by_its_deadline_and_continues_from_its_state(tmp_path):
    """One training run split over time-limited commands: each saves its state and stops by the
    deadline, and the same command continues from that state until the last step. The run is a
    variant (2 resnets per block, views from below), which export.py rebuilds from its run.json."""
    from training.bundled_prior import export, train

    run, state = tmp_path / "run", tmp_path / "state.pt"
    args = ["--out", str(run), "--steps", "3", "--batch", "2", "--views", "8", "--variants", "1", "--workers", "0",
            "--device", "cpu", "--warmup", "1", "--sample-steps", "1", "--log-every", "1", "--state", str(state),
            "--bank-cache", str(tmp_path / "bank.pt"), "--layers-per-block", "2", "--elevation", "-45", "60",
            "--deadline", "1"]  # already past when training starts: every command trains one step, then pauses
    for expected in (1, 2):
        train.main(args)
        saved = torch.load(state, weights_only=False)
        assert saved["step"] == expected and saved["total"] == 3 and saved["resumes"] == expected - 1
        assert {float(s["step"]) for s in saved["optimizer"]["state"].values()} == {float(expected)}
        assert not (run / "prior_fp16.safetensors").exists()
    train.main(args)
    log = (run / "train_log.txt").read_text()
    assert log.count("continuing from") == 2 and "step 3/3" in log and "training done: 3 steps" in log
    bank = torch.load(tmp_path / "bank.pt", weights_only=False)["bank"]
    assert bank.cameras.elevation.min() >= -45 and bank.cameras.elevation.max() <= 60

    export.main(["--weights", str(run / "prior_fp16.safetensors"), "--out", str(tmp_path / "folder")])
    unet_config = json.loads((tmp_path / "folder" / "unet" / "config.json").read_text())
    world = json.loads((tmp_path / "folder" / "world.json").read_text())
    assert unet_config["layers_per_block"] == 2 and world["training_cameras"]["elevation_deg"] == [-45.0, 60.0]
