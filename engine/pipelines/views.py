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
from ..render.gbuffer import GBuffer, render_gbuffer


def canny_edges(normal_image: torch.Tensor) -> torch.Tensor:
    """Canny edges of a rendered normal map (1, H, W, 3) in [0, 1] -> (1, 3, H, W) in {0, 1}."""
    pixels = (normal_image[0].detach().cpu().numpy() * 255).astype(np.uint8)
    edges = cv2.Canny(pixels, 100, 200)
    return torch.from_numpy(edges).float().div(255.0)[None, None].repeat(1, 3, 1, 1)


class ViewPool:
    def __init__(self, positions: torch.Tensor, triangles: torch.Tensor, cameras: Cameras, size: int,
                 with_control: bool):
        self.positions, self.triangles = positions, triangles
        self.cameras = cameras.to(positions.device)
        self.size = size
        self.with_control = with_control
        self._views: dict[int, tuple[GBuffer, dict[str, torch.Tensor]]] = {}

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
                control["canny"] = canny_edges(view.normal_image()).to(device)
            # Fixed geometry needs no antialiasing: drop the per-vertex clip positions it would keep.
            self._views[index] = (dataclasses.replace(view, clip=None, triangles=None, nvdiffrast_raster=None), control)
        return self._views[index]
