"""The judge of the bundled prior's attribute world: did a result get the prompt's colour,
pattern and shape?

Independent of the prior (no shared weights):
- judge_colour: analytic colour statistics against the named palette (judge/colour.py)
- pattern_score: an analytic two-colour contrast / boundary / periodicity measure
- AttributeJudge: a small CNN for shape and pattern, trained on held-out renders
  (training/bundled_prior/train_judge.py; weights in judge/weights/, < 1 MB)
- prompt_log_score / r_precision: retrieval of the prompt among a set of prompts, with the judge
  as the scorer (the paper's R-precision, with the judge in place of CLIP)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .colour import colour_fractions, estimate_object_mask, judge_colour, pattern_score, top_colours
from .palette import ACHROMATIC, CHROMATIC, COLOURS, PALETTE, PATTERNS, SHAPES, default_second_colour

__all__ = [
    "judge_colour", "pattern_score", "colour_fractions", "top_colours", "estimate_object_mask",
    "AttributeJudge", "parse_prompt", "prompt_log_score", "r_precision", "attribute_accuracy",
    "COLOURS", "PATTERNS", "SHAPES", "PALETTE", "CHROMATIC", "ACHROMATIC", "default_second_colour",
]


def parse_prompt(text: str) -> dict:
    """The attributes a prompt names: shape (or None), pattern ("plain" if none), colours (base first;
    a patterned prompt naming one colour gets the rule's second colour)."""
    words = text.lower().replace(",", " ").split()
    shape = next((w for w in words if w in SHAPES), None)
    pattern = next((w for w in words if w in PATTERNS), "plain")
    colours = [("gray" if w == "grey" else w) for w in words if w in COLOURS or w == "grey"]
    if pattern != "plain" and len(colours) == 1:
        colours.append(default_second_colour(colours[0]))
    return {"shape": shape, "pattern": pattern, "colours": colours[:2]}


@dataclass
class AttributeJudge:
    """Shape and pattern from the CNN, colour from the analytic statistics."""

    model: object
    device: str = "cpu"

    @classmethod
    def load(cls, path=None, device: str = "cpu") -> "AttributeJudge":
        from .classifier import load_judge

        return cls(load_judge(path, device), device)

    def predict(self, images, masks=None, shaded: bool = False) -> list[dict]:
        """images (B, H, W, 3) float in [0, 1] (numpy or torch; uint8 accepted); masks (B, H, W) or None
        (the object is then separated from the solid background automatically).
        shaded: the images are lit renders (the colour statistics then allow for shading); judge
        unlit renders (albedo) where you can: lighting makes white and gray hard to tell apart.

        Returns per image {shape, pattern, colour, colours (up to 2 dominant), probabilities:
        {shape: {...}, pattern: {...}, colour: {name: fraction}}}."""
        import torch

        from .classifier import HEADS

        array = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        if array.ndim == 3:
            array = array[None]
        batch = torch.from_numpy(np.ascontiguousarray(array[..., :3], dtype=np.float32)).permute(0, 3, 1, 2)
        with torch.no_grad():
            logits = self.model(batch.to(self.device))
        probabilities = {name: torch.softmax(value.float(), dim=-1).cpu().numpy() for name, value in logits.items()}
        results = []
        for i in range(array.shape[0]):
            mask = None if masks is None else (masks[i].detach().cpu().numpy() if hasattr(masks[i], "detach")
                                               else np.asarray(masks[i]))
            colour, fractions = judge_colour(array[i], mask, shaded=bool(shaded))
            shape_p = {n: float(p) for n, p in zip(HEADS["shape"], probabilities["shape"][i])}
            pattern_p = {n: float(p) for n, p in zip(HEADS["pattern"], probabilities["pattern"][i])}
            results.append({
                "shape": max(shape_p, key=shape_p.get),
                "pattern": max(pattern_p, key=pattern_p.get),
                "colour": colour,
                "colours": top_colours(fractions, 2),
                "probabilities": {"shape": shape_p, "pattern": pattern_p, "colour": fractions,
                                  "colour_cnn": {n: float(p) for n, p in zip(HEADS["colour"],
                                                                             probabilities["colour"][i])}},
            })
        return results


def prompt_log_score(prediction: dict, prompt: str, use_shape: bool = True, floor: float = 0.02) -> float:
    """Log-likelihood-like score of `prompt` given one judge prediction (higher = better match).

    Sum of log p(shape) (CNN), log p(pattern) (CNN) and, per named colour, log of its pixel
    fraction (analytic), each floored at `floor` so one miss does not dominate."""
    attributes = parse_prompt(prompt)
    probabilities = prediction["probabilities"]
    score = 0.0
    if use_shape and attributes["shape"] is not None:
        score += math.log(max(probabilities["shape"].get(attributes["shape"], 0.0), floor))
    score += math.log(max(probabilities["pattern"].get(attributes["pattern"], 0.0), floor))
    colours = attributes["colours"]
    fractions = probabilities["colour"]
    for colour in colours:
        share = fractions.get(colour, 0.0)
        if attributes["pattern"] != "plain":
            share = min(1.0, 2.0 * share)  # two colours split the object
        score += math.log(max(share, floor))
    return score


def r_precision(predictions: list[dict], prompts: list[str], true_index: list[int] | None = None,
                candidates: list[str] | None = None, use_shape: bool = True) -> float:
    """R-precision (R = 1) in the paper's sense: for each result, retrieve the best-scoring prompt
    among `candidates` (default: the set's distinct prompts) and count a hit when it is the prompt
    the result was made from. predictions[i] was made from prompts[i] (or candidates[true_index[i]])."""
    candidates = candidates if candidates is not None else list(dict.fromkeys(prompts))
    if true_index is None:
        true_index = [candidates.index(p) for p in prompts]
    hits = 0
    for prediction, truth in zip(predictions, true_index):
        scores = [prompt_log_score(prediction, c, use_shape) for c in candidates]
        # A hit only when the true prompt scores strictly best (ties count as misses).
        hits += int(all(scores[truth] > s for k, s in enumerate(scores) if k != truth))
    return hits / max(len(predictions), 1)


def attribute_accuracy(prediction: dict, prompt: str) -> dict[str, bool]:
    """Per attribute, whether the prediction matches what the prompt names.

    colour: plain prompts -> the dominant colour is the named one; patterned prompts -> the two
    dominant colours are the pair (the rule's second colour when only one is named)."""
    attributes = parse_prompt(prompt)
    result = {}
    if attributes["shape"] is not None:
        result["shape"] = prediction["shape"] == attributes["shape"]
    result["pattern"] = prediction["pattern"] == attributes["pattern"]
    if attributes["colours"]:
        if attributes["pattern"] == "plain":
            result["colour"] = prediction["colour"] == attributes["colours"][0]
        else:
            result["colour"] = set(prediction["colours"]) == set(attributes["colours"])
    return result
