"""The judge: analytic colour and pattern statistics, the shape/pattern classifier on held-out
renders (meshes, views and scene draws from a seed used neither by the prior nor by the judge's
own training), and the retrieval helpers the Table-2 bench uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from judge import (AttributeJudge, attribute_accuracy, estimate_object_mask, judge_colour, parse_prompt,
                          pattern_score, prompt_log_score, r_precision, top_colours)
from judge.classifier import WEIGHTS_PATH
from judge.palette import COLOURS, PALETTE, PATTERNS, SHAPES

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 3000   # the prior trained on seed 0, the judge on 1000 and was evaluated on 2000


@pytest.mark.parametrize("name", COLOURS)
def test_palette_colours_are_recognised(name):
    patch = np.tile(np.array(PALETTE[name], dtype=np.float32), (8, 8, 1))
    assert judge_colour(patch)[0] == name
    assert judge_colour((patch * 255).astype(np.uint8))[0] == name


@pytest.mark.parametrize("name", [c for c in COLOURS if c not in ("white", "gray")])
def test_shaded_colours_are_recognised(name):
    """A lit render darkens the albedo to ambient (0.5..0.7) on faces turned from the light."""
    patch = np.tile(np.array(PALETTE[name], dtype=np.float32) * 0.6, (8, 8, 1))
    assert judge_colour(patch, shaded=True)[0] == name


def test_mask_and_background_estimate():
    image = np.zeros((32, 32, 3), dtype=np.float32) + np.array([0.1, 0.7, 0.2], dtype=np.float32)  # green bg
    image[8:24, 8:24] = PALETTE["red"]
    mask = estimate_object_mask(image)
    assert mask[8:24, 8:24].all() and not mask[:8].any()
    name, scores = judge_colour(image)
    assert name == "red" and scores["red"] == 1.0
    explicit = np.zeros((32, 32), dtype=bool)
    explicit[:4] = True
    assert judge_colour(image, explicit)[0] == "green"


def test_top_colours_of_a_two_colour_object():
    image = np.zeros((32, 32, 3), dtype=np.float32)
    image[:, :20] = PALETTE["black"]
    image[:, 20:] = PALETTE["white"]
    _, scores = judge_colour(image, np.ones((32, 32), dtype=bool))
    assert set(top_colours(scores, 2)) == {"black", "white"}


def test_pattern_score_separates_patterns_from_shading():
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    mask = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.2
    shading = (0.5 + 0.5 * xx)[..., None]
    plain = np.array(PALETTE["red"]) * shading
    stripes = np.where((np.floor(yy * 8) % 2 == 0)[..., None], PALETTE["black"], PALETTE["white"]) * shading
    checks = np.where(((np.floor(yy * 6) + np.floor(xx * 6)) % 2 == 0)[..., None], PALETTE["green"],
                      PALETTE["white"]) * shading
    plain_score = pattern_score(plain, mask)["score"]
    assert plain_score < 0.01
    for patterned in (stripes, checks):
        result = pattern_score(patterned, mask)
        assert result["score"] > 0.03 and result["score"] > 5 * plain_score and result["balance"] > 0.3


def test_judge_weights_are_small_and_independent_of_the_prior():
    assert WEIGHTS_PATH.stat().st_size < 2 * 2**20
    from safetensors.torch import load_file

    judge = load_file(str(WEIGHTS_PATH))
    prior = load_file(str(ROOT / "engine" / "prior" / "bundled" / "unet" / "diffusion_pytorch_model.safetensors"))
    prior_shapes = {tuple(v.shape): v for v in prior.values()}
    for tensor in judge.values():
        twin = prior_shapes.get(tuple(tensor.shape))
        if twin is not None and tensor.numel() > 16:
            assert not torch.equal(twin.float(), tensor.float())


@pytest.fixture(scope="module")
def held_out():
    """Renders the judge never saw: a fresh shape bank, cameras and scenes from HELD_OUT_SEED, 64 px."""
    from training.bundled_prior.dataset import BankConfig, SceneSampler, build_bank, compose
    from training.bundled_prior.train_judge import JUDGE_CAMERAS

    bank = build_bank(BankConfig(views=40, resolution=64, supersample=2, variants_per_shape=2, views_per_draw=4,
                                 seed=HELD_OUT_SEED, cameras=JUDGE_CAMERAS), "cpu", log=None)
    sampler = SceneSampler(bank.shape.numpy(), bank.cameras.azimuth.numpy(), seed=HELD_OUT_SEED,
                           empty_prompt_prob=0.0, view_word_prob=0.0, degrade_prob=0.0)
    scenes = sampler.sample(160)
    generator = torch.Generator().manual_seed(HELD_OUT_SEED)
    lit, lit_coverage = compose(bank, scenes.select(0, 80), generator, unlit_prob=0.0)
    unlit, unlit_coverage = compose(bank, scenes.select(80, 160), generator, unlit_prob=1.0)
    images = torch.cat([lit, unlit]).permute(0, 2, 3, 1).numpy()
    masks = (torch.cat([lit_coverage, unlit_coverage]) > 0.99).numpy()
    return images, masks, scenes.labels


def test_classifier_on_held_out_renders(held_out):
    images, masks, labels = held_out
    judge = AttributeJudge.load()
    lit = judge.predict(images[:80], masks[:80], shaded=True)
    unlit = judge.predict(images[80:], masks[80:], shaded=False)
    predictions = lit + unlit
    shape_acc = np.mean([p["shape"] == SHAPES[int(s)] for p, s in zip(predictions, labels["shape"])])
    pattern_acc = np.mean([p["pattern"] == PATTERNS[int(s)] for p, s in zip(predictions, labels["pattern"])])
    colour_hits = []
    for p, base, second, pattern in zip(predictions, labels["colour"], labels["second"], labels["pattern"]):
        if PATTERNS[int(pattern)] == "plain":
            colour_hits.append(p["colour"] == COLOURS[int(base)])
        else:
            colour_hits.append(set(p["colours"]) == {COLOURS[int(base)], COLOURS[int(second)]})
    colour_acc = float(np.mean(colour_hits))
    print(f"held-out accuracy: shape {shape_acc:.3f} pattern {pattern_acc:.3f} colour {colour_acc:.3f}")
    assert shape_acc >= 0.95
    assert pattern_acc >= 0.9
    assert colour_acc >= 0.85


def test_prompt_parsing_and_accuracy():
    assert parse_prompt("a black and white striped cube, front view") == {
        "shape": "cube", "pattern": "striped", "colours": ["black", "white"]}
    assert parse_prompt("a grey sphere") == {"shape": "sphere", "pattern": "plain", "colours": ["gray"]}
    prediction = {"shape": "cube", "pattern": "striped", "colour": "black", "colours": ["black", "white"]}
    assert attribute_accuracy(prediction, "a black and white striped cube") == {
        "shape": True, "pattern": True, "colour": True}
    assert attribute_accuracy(prediction, "a red cube") == {"shape": True, "pattern": False, "colour": False}


def _fake_prediction(shape: str, pattern: str, colours: dict[str, float]) -> dict:
    def onehot(names, chosen):
        return {n: (0.9 if n == chosen else 0.1 / (len(names) - 1)) for n in names}

    fractions = {c: colours.get(c, 0.0) for c in COLOURS}
    return {"shape": shape, "pattern": pattern, "colour": max(fractions, key=fractions.get),
            "colours": top_colours(fractions), "probabilities": {
                "shape": onehot(SHAPES, shape), "pattern": onehot(PATTERNS, pattern), "colour": fractions}}


def test_r_precision_retrieves_the_right_prompt():
    prompts = ["a red cube", "a blue cube", "a red striped cube", "a black and white checkered cube"]
    predictions = [_fake_prediction("cube", "plain", {"red": 1.0}),
                   _fake_prediction("cube", "plain", {"blue": 0.95, "gray": 0.05}),
                   _fake_prediction("cube", "striped", {"red": 0.5, "white": 0.5}),
                   _fake_prediction("cube", "checkered", {"black": 0.45, "white": 0.55})]
    assert r_precision(predictions, prompts) == 1.0
    swapped = [predictions[1], predictions[0], predictions[2], predictions[3]]
    assert r_precision(swapped, prompts) == 0.5
    scores = [prompt_log_score(predictions[2], p) for p in prompts]
    assert int(np.argmax(scores)) == 2
