"""The bundled prior's attribute world: names and reference colours.

Shared by the training code (training/bundled_prior) and the judge; the engine never
imports training code, so the names live here.

Colour rule for patterns (used by the captions and documented in training/bundled_prior/README.md):
  "a red striped cube"              -> red and white stripes (the named colour is the base colour)
  "a white striped cube"            -> white and black stripes
  "a black and white striped cube"  -> black base, white stripes/checks/dots (first colour = base)
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus")
PATTERNS: tuple[str, ...] = ("plain", "striped", "checkered", "dotted")

# Reference albedo (sRGB in [0, 1]) of each named colour; training jitters around these.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "green": (0.10, 0.62, 0.14),
    "blue": (0.08, 0.20, 0.88),
    "yellow": (0.96, 0.86, 0.08),
    "orange": (0.98, 0.48, 0.04),
    "purple": (0.50, 0.12, 0.72),
    "pink": (0.98, 0.52, 0.72),
    "brown": (0.46, 0.26, 0.10),
    "white": (0.93, 0.93, 0.93),
    "black": (0.05, 0.05, 0.05),
    "gray": (0.50, 0.50, 0.50),
    "cyan": (0.08, 0.80, 0.86),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
CHROMATIC: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "cyan")
ACHROMATIC: tuple[str, ...] = ("white", "black", "gray")


def default_second_colour(colour: str) -> str:
    """The pattern's second colour when a caption names only one."""
    return "black" if colour == "white" else "white"
