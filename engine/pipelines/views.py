"""A pool of camera views over fixed geometry, rasterised once and reused every step.

While texturing, geometry never changes: a view's surface points, normals, mask and its
ControlNet conditions (depth map, canny edges of the normal map) are the same each time
it is drawn, so they are computed on first use and kept.
"""

from __future__ import annotations

import dataclasses

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


class ViewPool:
    def __init__(self, positions: torch.Tensor, triangles: torch.Tensor, cameras: Cameras, size: int,
                 with_control: bool):
        self.positions, self.triangles = positions, triangles
        self.cameras = cameras.to(positions.device)
        self.size = size
        self.with_control = with_control
        self._views: dict[int, tuple[GBuffer, dict[str, torch.Tensor]]] = {}
        self._crease_normals: torch.Tensor | None = None

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
