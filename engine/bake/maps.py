"""The image maps of a baked material field, in the layouts the exporters and importers expect.

A texture field gives, per surface point, [r, g, b] base colour as sRGB-encoded values, and for
a PBR material then perceptual roughness and metallic (docs/pbr.md). One bake of all channels
(engine/bake/bake.py) is split here into:

- base colour: (H, W, 3), sRGB (glTF's baseColorTexture, OBJ's map_Kd);
- roughness, metallic: (H, W) grayscale, linear (OBJ's map_Pr and map_Pm);
- ORM: (H, W, 3), glTF's occlusion-roughness-metallic packing, linear: R occlusion (255, none is
  baked), G roughness, B metallic (glTF's metallicRoughnessTexture reads G and B).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Material = Literal["albedo", "pbr"]
ALBEDO_CHANNELS = 3
PBR_CHANNELS = 5
# Occlusion written into the ORM map's R channel: 1.0, i.e. nothing occluded (none is baked).
NO_OCCLUSION = 255


@dataclass(frozen=True)
class MaterialMaps:
    """uint8 maps, row 0 is v = 1 (ready to save as PNG). roughness and metallic are None for
    an albedo material (a base colour only)."""

    base_colour: np.ndarray
    roughness: np.ndarray | None = None
    metallic: np.ndarray | None = None

    @classmethod
    def from_baked(cls, image: np.ndarray) -> MaterialMaps:
        """Split a bake of a field's channels ((H, W, 3) albedo or (H, W, 5) PBR, uint8)."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (ALBEDO_CHANNELS, PBR_CHANNELS):
            raise ValueError(f"expected a uint8 (H, W, {ALBEDO_CHANNELS}) or (H, W, {PBR_CHANNELS}) bake, "
                             f"got {image.dtype} {image.shape}")
        if image.shape[2] == ALBEDO_CHANNELS:
            return cls(np.ascontiguousarray(image))
        return cls(np.ascontiguousarray(image[..., :3]), np.ascontiguousarray(image[..., 3]),
                   np.ascontiguousarray(image[..., 4]))

    @property
    def material(self) -> Material:
        return "albedo" if self.roughness is None else "pbr"

    def orm(self) -> np.ndarray:
        """The (H, W, 3) occlusion-roughness-metallic map of a PBR material."""
        if self.roughness is None or self.metallic is None:
            raise ValueError("an albedo material has no roughness or metallic map")
        occlusion = np.full_like(self.roughness, NO_OCCLUSION)
        return np.stack([occlusion, self.roughness, self.metallic], axis=-1)
