"""A pool of camera views over fixed geometry, rasterised once and reused every step.

While texturing, geometry never changes: a view's surface points, normals, mask and its
ControlNet conditions (depth map, canny edges of the normal map) are the same each time
it is drawn, so they are computed on first use and kept; so are a region job's blend weights and
kept values (RegionLayer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..render.cameras import Cameras
from ..render.gbuffer import GBuffer, crease_corner_normals, render_gbuffer


# The released recipe's canny on the normal map: a 5 x 5 box blur, then thresholds 50 / 100.
CANNY_BLUR = 5
CANNY_THRESHOLDS = (50, 100)
# Edges sharper than this keep their face normals in the control normal map (Blender's default
# auto-smooth angle): smoothed vertex normals across a welded crease would hide it from canny.
CONTROL_CREASE_DEG = 30.0


def canny_edges(normal_image: torch.Tensor) -> torch.Tensor:
    """Canny edges of a rendered normal map (1, H, W, 3) in [0, 1] -> (1, 3, H, W) in {0, 1}."""
    pixels = (normal_image[0].detach().cpu().numpy() * 255).astype(np.uint8)
    edges = cv2.Canny(cv2.blur(pixels, (CANNY_BLUR, CANNY_BLUR)), *CANNY_THRESHOLDS)
    return torch.from_numpy(edges).float().div(255.0)[None, None].repeat(1, 3, 1, 1)


@dataclass
class RegionLayer:
    """A region job's view (engine/pipelines/kit/regions.py): the field's share of each pixel
    (1, H, W, 1) (0 outside the region and off the object) and the kept maps' values (1, H, W, C)."""

    weight: torch.Tensor
    kept: torch.Tensor

    def blend(self, values: torch.Tensor) -> torch.Tensor:
        """The field's values (1, H, W, C) where the region takes them, the kept ones elsewhere: the
        kept values carry no gradient, and the field's only where its share is above 0."""
        return values * self.weight + self.kept * (1.0 - self.weight)


class ViewPool:
    def __init__(self, positions: torch.Tensor, triangles: torch.Tensor, cameras: Cameras, size: int,
                 with_control: bool, region: Callable[[GBuffer], RegionLayer] | None = None):
        self.positions, self.triangles = positions, triangles
        self.cameras = cameras.to(positions.device)
        self.size = size
        self.with_control = with_control
        self.region = region
        self._views: dict[int, tuple[GBuffer, dict[str, torch.Tensor]]] = {}
        self._layers: dict[int, RegionLayer] = {}
        self._crease_normals: torch.Tensor | None = None

    def subset(self, indices: list[int]) -> "ViewPool":
        """A pool of these views only (numbered 0.. in this order), sharing what is rasterised already."""
        pool = ViewPool(self.positions, self.triangles, self.cameras.index(indices), self.size, self.with_control,
                        self.region)
        pool._crease_normals = self._crease_normals
        for new, old in enumerate(indices):
            if old in self._views:
                pool._views[new] = self._views[old]
            if old in self._layers:
                pool._layers[new] = self._layers[old]
        return pool

    def layer(self, index: int) -> RegionLayer | None:
        """A region job's blend weights and kept values in view `index` (None for a whole-object job)."""
        if self.region is None:
            return None
        if index not in self._layers:
            with torch.no_grad():
                self._layers[index] = self.region(self.get(index)[0])
        return self._layers[index]

    def __len__(self) -> int:
        return len(self.cameras)

    def get(self, index: int) -> tuple[GBuffer, dict[str, torch.Tensor]]:
        if index not in self._views:
            with torch.no_grad():
                view = render_gbuffer(self.positions, self.triangles, self.cameras.index([index]), self.size)
            control: dict[str, torch.Tensor] = {}
            if self.with_control:
                device = self.positions.device
                control["depth"] = view.depth_image().permute(0, 3, 1, 2).expand(-1, 3, -1, -1).to(device)
                if self._crease_normals is None:
                    self._crease_normals = crease_corner_normals(self.positions, self.triangles.long(),
                                                                 CONTROL_CREASE_DEG)
                normals = view.corner_normal_map(self.positions, self.triangles, self._crease_normals)
                control["canny"] = canny_edges(view.normal_image(normals)).to(device)
            # Fixed geometry needs no antialiasing: drop the per-vertex clip positions it would keep.
            self._views[index] = (dataclasses.replace(view, clip=None, triangles=None, nvdiffrast_raster=None), control)
        return self._views[index]
