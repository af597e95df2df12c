"""Stage 2's refinable-mesh terms, shared by generate's refinement and the geometry edits that
continue it: the shape regulariser, the geometry-only render and the preview render."""

from __future__ import annotations

import numpy as np
import torch

from ...guidance.perp_neg import FRONT_AZIMUTH_DEG
from ...refine.planar import PlanarRegions, find_planar_regions, planar_loss
from ...refine.refinable_mesh import RefinableMesh
from ...nerf.renderer import GEOMETRY_ALBEDO
from ...render.cameras import orbit_cameras
from ...render.gbuffer import GBuffer
from ...render.shading import sample_lighting, shade

PREVIEW_SIZE = 128


class ShapeRegulariser:
    """Stage 2's geometric losses on the refinable mesh: normal consistency, and where the settings
    ask for them the Laplacian and the planar regions (searched anew every `planar_every` steps).
    Geometry edits continue the refinement with it, less the planar regions."""

    def __init__(self, stage):  # a RefineStageConfig
        self.stage = stage
        self.regions: PlanarRegions | None = None

    def __call__(self, mesh: RefinableMesh, step: int) -> torch.Tensor:
        stage = self.stage
        loss = stage.normal_consistency_weight * mesh.normal_consistency(stage.normal_consistency)
        if stage.laplacian_weight:
            loss = loss + stage.laplacian_weight * mesh.laplacian()
        if stage.planar_weight:
            if self.regions is None or step % stage.planar_every == 0:
                self.regions = find_planar_regions(mesh.positions().detach(), mesh.triangles, mesh.adjacency,
                                                   stage.planar_angle_deg, stage.planar_min_share,
                                                   stage.planar_crease_deg, stage.planar_upright_deg)
            loss = loss + stage.planar_weight * planar_loss(mesh.positions(), mesh.triangles, self.regions)
        return loss


def render_mesh_geometry(view: GBuffer, mode: str, lighting, background: torch.Tensor) -> torch.Tensor:
    """Stage 2's geometry-only render: grey and lit ("shaded"), or the camera-space normal map."""
    if mode == "normal_map":
        return shade(view.normal_image(), view.normal, view.mask, None, background)
    grey = torch.full((*view.mask.shape, 3), GEOMETRY_ALBEDO, device=view.normal.device)
    return shade(grey, view.normal, view.mask, lighting, background)


@torch.no_grad()
def render_mesh_preview(mesh: RefinableMesh, device: torch.device) -> np.ndarray:
    """The refined mesh from the front-right: its albedo lit, and its shape in grey, side by side."""
    cameras = orbit_cameras(15.0, FRONT_AZIMUTH_DEG + 30.0, 1.8, 50.0).to(device)
    view, albedo = mesh.render(cameras, PREVIEW_SIZE)
    white = torch.ones(1, 3, device=device)
    lighting = sample_lighting(cameras, torch.Generator().manual_seed(0))
    rgb = shade(albedo, view.normal, view.mask, lighting, white)[0]
    shaded = render_mesh_geometry(view, "shaded", lighting, white)[0]
    return torch.cat([rgb, shaded], dim=1).clamp(0, 1).cpu().numpy()
