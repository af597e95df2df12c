"""The cameras of a job on a fixed mesh (texture, edit): random views, plus the caller's own."""

from __future__ import annotations

import numpy as np
import torch

from ...mesh.types import Normalization
from ...render.cameras import Cameras, cameras_from_matrices, sample_cameras


def build_cameras(config, normalization: Normalization, generator: torch.Generator) -> Cameras:
    """Random views within the paper's ranges (`config.cameras`), plus the caller's cameras
    (`config.extra_cameras`, in the user's frame) mapped into the unit box."""
    cameras = sample_cameras(config.cameras, config.cameras.view_pool, generator)
    if not config.extra_cameras:
        return cameras
    matrices, fovs = [], []
    for camera in config.extra_cameras:
        matrix = np.asarray(camera["matrix_world"], dtype=np.float64)
        position = normalization.to_unit(matrix[None, :3, 3])[0]
        rotation = np.stack([normalization.directions_to_unit(matrix[None, :3, i])[0] for i in range(3)], axis=1)
        unit_matrix = np.eye(4)
        unit_matrix[:3, :3], unit_matrix[:3, 3] = rotation, position
        matrices.append(unit_matrix)
        fovs.append(float(camera.get("fovy_deg", 40.0)))
    return cameras.concat(cameras_from_matrices(np.stack(matrices), np.asarray(fovs)))
