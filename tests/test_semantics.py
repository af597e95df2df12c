"""Semantic tests: CSD with the bundled prior moves a texture toward the prompt, on the CPU.

Issue 3's checks, each a real texture job (`python -m engine texture ... --model bundled`,
run in-process through engine.cli.main), judged by judge (which shares no weights
with the prior):
- "a <colour> sphere" for 8 colours: at least 7 textures come out in the named colour;
- "a black and white striped cube" (CSD without negative prompt): the result is patterned (analytic
  pattern score well above a plain result's, and the judge's classifier does not call it plain), in
  black and white;
- the paper's Fig. 2: SDS with guidance weight w = 0 in the paper's Eq. 6 (the generative term
  e(y) - eps alone; the engine's --cfg-scale 1, since its SDS is e("") + s (e(y) - e("")) - eps,
  i.e. w = s - 1) does not reach "a green checkered cube" where CSD does, with the same seed and
  steps. (For a plain colour it does: see the test's docstring.)

Settings: colour jobs COLOUR_STEPS steps (env CSD_COLOUR_STEPS, default 60), the others
SEMANTIC_STEPS (env CSD_SEMANTIC_STEPS, default 100); 64 px renders, 128 px textures, seed 0, CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.cli import main as engine_main
from judge import AttributeJudge
from judge.results import judge_result

ROOT = Path(__file__).resolve().parents[1]
SPHERE = ROOT / "examples" / "sphere.obj"
CUBE = ROOT / "examples" / "cube.obj"
SEMANTIC_STEPS = int(os.environ.get("CSD_SEMANTIC_STEPS", "100"))
COLOUR_STEPS = int(os.environ.get("CSD_COLOUR_STEPS", "60"))
COLOURS_TESTED = ("red", "green", "blue", "yellow", "orange", "purple", "white", "black")

pytestmark = pytest.mark.skipif(not (ROOT / "engine" / "prior" / "bundled" / "model_index.json").is_file(),
                                reason="the bundled prior is not installed")


@pytest.fixture(scope="module")
def judge():
    return AttributeJudge.load()


@pytest.fixture(scope="module")
def texture(tmp_path_factory):
    """texture(prompt, mesh, guidance="csd", cfg_scale=None, w2=None) -> output folder; cached per module.
    w2=None keeps the engine's default negative-prompt weights; w2=0 is CSD without a negative prompt (Eq. 7)."""
    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("semantics")

    def run(prompt: str, mesh: Path, guidance: str = "csd", cfg_scale: float | None = None, w2: float | None = None,
            seed: int = 0, steps: int = SEMANTIC_STEPS) -> Path:
        key = (prompt, str(mesh), guidance, cfg_scale, w2, seed, steps)
        if key not in cache:
            out = root / f"job{len(cache)}"
            argv = ["texture", str(mesh), "--prompt", prompt, "--model", "bundled", "--out", str(out),
                    "--steps", str(steps), "--render-size", "64", "--texture-size", "128",
                    "--guidance", guidance, "--seed", str(seed), "--preview-every", "0", "--device", "cpu"]
            if cfg_scale is not None:
                argv += ["--cfg-scale", str(cfg_scale)]
            if w2 is not None:
                argv += ["--w2-start", str(w2), "--w2-end", str(w2)]
            assert engine_main(argv) == 0, (out / "result.json").read_text() if (out / "result.json").exists() else ""
            assert json.loads((out / "result.json").read_text())["status"] == "ok"
            cache[key] = out
        return cache[key]

    return run


def test_colour_prompts_give_their_colour(texture, judge):
    verdicts = {}
    for colour in COLOURS_TESTED:
        result = judge_result(texture(f"a {colour} sphere", SPHERE, steps=COLOUR_STEPS), judge=judge)
        verdicts[colour] = (result["texture_colour"][0], result["colour"])
    right = [c for c, (tex, render) in verdicts.items() if tex == c and render == c]
    print("colour verdicts (texture, renders):", verdicts)
    assert len(right) >= 7, f"only {len(right)}/8 colours right: {verdicts}"


def test_striped_prompt_gives_a_pattern(texture, judge):
    """CSD as in Eq. 7 (no negative prompt): the default negative prompt ("oversaturated color, ugly,
    tiling, ...") at full weight damps high-contrast patterns in this miniature world (see
    docs/benchmarks.md), so the pattern check isolates the prompt's classifier score."""
    striped = judge_result(texture("a black and white striped cube", CUBE, w2=0.0), judge=judge)
    plain = judge_result(texture("a white cube", CUBE, w2=0.0), judge=judge)
    print("striped:", striped["pattern"], striped["colours"], round(striped["pattern_score"], 3),
          "plain:", plain["pattern"], plain["colours"], round(plain["pattern_score"], 3))
    assert striped["pattern_score"] > 0.05
    assert striped["pattern_score"] > 2 * plain["pattern_score"]
    assert set(striped["colours"]) == {"black", "white"}
    assert striped["pattern"] != "plain"


def test_generative_term_alone_fails_where_csd_succeeds(texture, judge):
    """Paper Fig. 2: w = 0 in Eq. 6 (engine --cfg-scale 1) versus CSD, same seed and steps.

    The prompt is a pattern prompt: in this miniature world the generative term alone does turn a
    sphere red ("a red sphere" reaches red with either), but it cannot make a pattern appear,
    while CSD's classifier score does (docs/benchmarks.md has both)."""
    prompt = "a green checkered cube"
    csd = judge_result(texture(prompt, CUBE, w2=0.0), judge=judge)
    sds = judge_result(texture(prompt, CUBE, guidance="sds", cfg_scale=1.0), judge=judge)
    print(f"CSD: {csd['pattern']} {csd['colours']} score {csd['pattern_score']:.3f}; "
          f"SDS w=0: {sds['pattern']} {sds['colours']} score {sds['pattern_score']:.3f}")
    assert csd["pattern"] != "plain" and csd["pattern_score"] > 0.05 and "green" in csd["colours"]
    sds_reached = sds["pattern"] != "plain" and sds["pattern_score"] > 0.05 and "green" in sds["colours"]
    assert not sds_reached
