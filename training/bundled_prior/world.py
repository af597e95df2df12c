"""The attribute world the bundled prior is trained on: shapes, colours, patterns, captions.

Everything here is deterministic given a numpy Generator / torch Generator, so the dataset
(and with it the shipped weights) can be reproduced exactly.

Patterns are defined procedurally on the 3D surface position in the object's own frame
(no UVs needed), so a texture optimised on any mesh can show them:
  striped    bands perpendicular to a direction (mostly the object's up axis)
  checkered  a 3D checkerboard of cubes
  dotted     spheres on a 3D lattice, cut by the surface (round spots)
Each pattern uses two colours; see judge/palette.py for the colour rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from judge.palette import COLOURS, PALETTE, PATTERNS, SHAPES, default_second_colour

VIEWS = ("front", "side", "back")
# Degradations that make the paper's default negative prompt mean something in miniature:
# each is applied to a training image and named in its caption.
DEGRADATIONS = ("noisy", "oversaturated color", "low quality", "tiling", "ugly")
NEGATIVE_PROMPT = "oversaturated color, ugly, tiling, low quality, noisy"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
EXTRA_WORDS = ("a", "an", "the", "and", "object", "plain", "view", "with", "of", "stripes", "checkers", "dots",
               "colored", "color", "colour", "shape", "render", "photo", "3d", "model", "grey", "striped", ",")


def vocabulary() -> list[str]:
    words: list[str] = list(SPECIAL_TOKENS)
    pool = list(COLOURS) + list(SHAPES) + list(PATTERNS) + list(VIEWS) + list(EXTRA_WORDS)
    for degradation in DEGRADATIONS:
        pool += degradation.split()
    for word in pool:
        if word not in words:
            words.append(word)
    return words


# ----------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------

@dataclass
class ShapeMesh:
    shape: str
    positions: np.ndarray  # (V, 3) float32, Z-up, centred, max extent 1 (the engine's unit box)
    triangles: np.ndarray  # (F, 3) int64


def normalise_unit_box(positions: np.ndarray) -> np.ndarray:
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    return ((positions - (lo + hi) / 2) / float((hi - lo).max())).astype(np.float32)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
                     [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
                     [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)]])


def make_shape(shape: str, rng: np.random.Generator | None = None) -> ShapeMesh:
    """One mesh of `shape`, upright (axis along Z); with rng: jittered proportions, a turn about Z
    and, sometimes, a slight tilt. Without rng: the canonical shape."""
    import trimesh

    jitter = rng is not None
    if shape == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    elif shape == "cube":
        extents = (1.0 + rng.uniform(-0.08, 0.08, 3)) if jitter else np.ones(3)
        mesh = trimesh.creation.box(extents=extents)
        mesh = mesh.subdivide().subdivide()
    elif shape == "cylinder":
        height = rng.uniform(0.7, 1.5) if jitter else 1.0
        mesh = trimesh.creation.cylinder(radius=0.5, height=height, sections=48)
    elif shape == "cone":
        height = rng.uniform(0.8, 1.5) if jitter else 1.0
        mesh = trimesh.creation.cone(radius=0.5, height=height, sections=48)
    elif shape == "torus":
        minor = rng.uniform(0.12, 0.2) if jitter else 0.16
        mesh = trimesh.creation.torus(major_radius=0.35, minor_radius=minor, major_sections=48, minor_sections=20)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    positions = np.asarray(mesh.vertices, dtype=np.float64)
    if jitter:
        rotation = _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * math.pi))
        if rng.random() < 0.5:
            tilt_axis = np.array([math.cos(rng.uniform(0, 2 * math.pi)), math.sin(rng.uniform(0, 2 * math.pi)), 0.0])
            max_tilt = 60.0 if shape == "torus" else 15.0  # a torus also stands up, like a ring
            rotation = _rotation(tilt_axis, math.radians(rng.uniform(-max_tilt, max_tilt))) @ rotation
        positions = positions @ rotation.T
    return ShapeMesh(shape, normalise_unit_box(positions), np.asarray(mesh.faces, dtype=np.int64))


def shape_bank(variants_per_shape: int, seed: int) -> list[ShapeMesh]:
    """variants_per_shape meshes of every shape (the first of each canonical)."""
    rng = np.random.default_rng(seed)
    bank = []
    for shape in SHAPES:
        bank.append(make_shape(shape))
        for _ in range(variants_per_shape - 1):
            bank.append(make_shape(shape, rng))
    return bank


# ----------------------------------------------------------------------------------------------
# Colours and patterns
# ----------------------------------------------------------------------------------------------

def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    v = maxc
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(r == maxc, bc - gc, np.where(g == maxc, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, v], -1)


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


_PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)
_PALETTE_HSV = _rgb_to_hsv(_PALETTE_RGB)
_ACHROMATIC_MASK = np.array([c in ("white", "black", "gray") for c in COLOURS])


def jitter_colours(indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random albedos (N, 3) that still read as the named colours COLOURS[indices]."""
    n = len(indices)
    hsv = _PALETTE_HSV[indices].copy()
    achromatic = _ACHROMATIC_MASK[indices]
    u = rng.random((n, 3))
    chroma_h = (hsv[:, 0] + (u[:, 0] * 0.04 - 0.02)) % 1.0
    chroma_s = np.clip(hsv[:, 1] * (0.85 + 0.2 * u[:, 1]), 0, 1)
    chroma_v = np.clip(hsv[:, 2] * (0.85 + 0.2 * u[:, 2]), 0, 1)
    gray_h = u[:, 0]
    gray_s = u[:, 1] * 0.06
    gray_v = np.clip(hsv[:, 2] + (u[:, 2] * 0.12 - 0.06), 0, 1)
    out = np.stack([np.where(achromatic, gray_h, chroma_h), np.where(achromatic, gray_s, chroma_s),
                    np.where(achromatic, gray_v, chroma_v)], -1)
    return _hsv_to_rgb(out).astype(np.float32)


@dataclass
class SceneAttributes:
    shape: str
    pattern: str
    colour: str           # the base (first-named) colour
    second: str           # the pattern's second colour (equal to colour when plain)
    explicit_pair: bool   # the caption names both colours


@dataclass
class PatternParams:
    """Per-scene pattern parameters, as arrays over a batch of N scenes (torch, any device)."""

    pattern: torch.Tensor    # (N,) int64 index into PATTERNS
    base: torch.Tensor       # (N, 3) albedo of the first colour
    second: torch.Tensor     # (N, 3) albedo of the second colour
    frequency: torch.Tensor  # (N,) cycles per unit
    direction: torch.Tensor  # (N, 3) unit vector (stripes)
    offset: torch.Tensor     # (N, 3) phase offset
    dot_radius: torch.Tensor  # (N,) dot radius as a fraction of the lattice period

    def to(self, device, non_blocking: bool = False) -> "PatternParams":
        return PatternParams(*(getattr(self, f).to(device, non_blocking=non_blocking)
                               for f in self.__dataclass_fields__))

    def pin_memory(self) -> "PatternParams":
        return PatternParams(*(getattr(self, f).pin_memory() for f in self.__dataclass_fields__))


PATTERN_PROBABILITIES = (0.4, 0.2, 0.2, 0.2)


def sample_attributes(rng: np.random.Generator, shape: str) -> SceneAttributes:
    pattern = PATTERNS[rng.choice(len(PATTERNS), p=PATTERN_PROBABILITIES)]
    colour = COLOURS[rng.integers(len(COLOURS))]
    if pattern == "plain":
        return SceneAttributes(shape, pattern, colour, colour, False)
    if rng.random() < 0.4:  # two named colours
        second = COLOURS[(COLOURS.index(colour) + 1 + rng.integers(len(COLOURS) - 1)) % len(COLOURS)]
        return SceneAttributes(shape, pattern, colour, second, True)
    return SceneAttributes(shape, pattern, colour, default_second_colour(colour), False)


def sample_pattern_params(attributes: list[SceneAttributes], rng: np.random.Generator) -> PatternParams:
    n = len(attributes)
    pattern = np.array([PATTERNS.index(a.pattern) for a in attributes], dtype=np.int64)
    base = jitter_colours(np.array([COLOURS.index(a.colour) for a in attributes]), rng)
    second = jitter_colours(np.array([COLOURS.index(a.second) for a in attributes]), rng)
    u = rng.random((n, 8))
    # Periods chosen so a pattern stays visible at the prior's 32 px (the object spans ~12-28 px).
    low = np.array([1.0, 2.5, 2.0, 2.5])[pattern]
    high = np.array([1.0, 4.0, 3.0, 3.5])[pattern]
    frequency = (low + (high - low) * u[:, 0]).astype(np.float32)
    dot_radius = (0.26 + 0.08 * u[:, 1]).astype(np.float32)
    angle = 2 * math.pi * u[:, 2]
    horizontal = np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], -1)
    random_dir = rng.normal(size=(n, 3))
    up = np.tile(np.array([0.0, 0.0, 1.0]), (n, 1))
    direction = np.where((u[:, 3] < 0.6)[:, None], up, np.where((u[:, 3] < 0.8)[:, None], horizontal, random_dir))
    direction = (direction / np.linalg.norm(direction, axis=1, keepdims=True)).astype(np.float32)
    offset = u[:, 4:7].astype(np.float32)
    return PatternParams(torch.from_numpy(pattern), torch.from_numpy(base), torch.from_numpy(second),
                         torch.from_numpy(frequency), torch.from_numpy(direction), torch.from_numpy(offset),
                         torch.from_numpy(dot_radius))


def pattern_albedo(position: torch.Tensor, params: PatternParams) -> torch.Tensor:
    """Albedo (N, H, W, 3) of N scenes from their surface positions (N, H, W, 3) in the object frame."""
    position = position.float()
    f = params.frequency.view(-1, 1, 1, 1)
    p = position * f + params.offset.view(-1, 1, 1, 3)
    stripes = torch.frac((p * params.direction.view(-1, 1, 1, 3)).sum(-1) + 10.0) < 0.5
    cells = torch.floor(p + 10.0).sum(-1)
    checks = torch.remainder(cells, 2.0) < 0.5
    nearest = p - torch.round(p)
    dots = nearest.norm(dim=-1) < params.dot_radius.view(-1, 1, 1)
    kind = params.pattern.view(-1, 1, 1)
    use_second = torch.where(kind == 1, stripes, torch.where(kind == 2, checks, torch.where(kind == 3, dots,
                                                                                        torch.zeros_like(dots))))
    base = params.base.view(-1, 1, 1, 3)
    second = params.second.view(-1, 1, 1, 3)
    return torch.where(use_second[..., None], second, base)


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

def view_name(azimuth_deg: float) -> str:
    """front / side / back from the camera's azimuth (-90 deg = camera on -Y = front), as threestudio."""
    relative = (azimuth_deg + 90.0 + 180.0) % 360.0 - 180.0
    if abs(relative) < 45.0:
        return "front"
    if abs(relative) > 135.0:
        return "back"
    return "side"


def article(word: str, rng: np.random.Generator | None) -> str:
    correct = "an" if word[0] in "aeiou" else "a"
    if rng is not None and rng.random() < 0.05:
        return "an" if correct == "a" else "a"
    return correct


def caption(attributes: SceneAttributes, rng: np.random.Generator | None = None, view: str | None = None,
            degradations: tuple[str, ...] = ()) -> str:
    """The caption of a scene. Without rng: the canonical caption (used by tests and the bench)."""
    a = attributes
    colour_words = [a.colour]
    if a.pattern != "plain" and (a.explicit_pair or (rng is not None and rng.random() < 0.3)):
        colour_words = [a.colour, "and", a.second]
    shape_word = a.shape
    pattern_words = [] if a.pattern == "plain" else [a.pattern]
    if rng is not None:
        if a.pattern == "plain" and rng.random() < 0.15:
            pattern_words = ["plain"]
        u = rng.random()
        if u < 0.05:
            colour_words = []           # "a striped cube"
        elif u < 0.08:
            shape_word = "object"       # "a red striped object"
        elif u < 0.10 and pattern_words and pattern_words != ["plain"] and len(colour_words) == 1:
            pattern_words = []          # the pattern unnamed
    words = colour_words + pattern_words + [shape_word]
    if rng is None or rng.random() > 0.08:
        words = [article(words[0], rng)] + words
    text = " ".join(words)
    if view is not None:
        text += f", {view} view"
    for degradation in degradations:
        text += f", {degradation}"
    return text
