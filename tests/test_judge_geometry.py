"""The geometric shape measures the generate tests and benchmarks read (judge/geometry.py)."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from judge.geometry import flat_share, sphericity, taper


def y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """trimesh makes cones and cylinders along Z; exported assets are Y-up."""
    return mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))


def test_a_ball_and_a_cube():
    ball, cube = trimesh.creation.icosphere(4), trimesh.creation.box()
    assert sphericity(ball) == pytest.approx(1.0, abs=0.01) and sphericity(cube) == pytest.approx(0.806, abs=0.001)
    assert flat_share(ball) == 0.0 and flat_share(cube) == pytest.approx(1.0)
    assert taper(ball) == pytest.approx(1.0, abs=0.02) and taper(cube) == pytest.approx(1.0, abs=0.02)


def test_taper_tells_which_way_a_shape_narrows():
    cone = y_up(trimesh.creation.cone(0.5, 1.0, sections=64))  # base on the ground, point up
    assert taper(cone) > 10.0
    upside_down = cone.copy().apply_transform(trimesh.transformations.rotation_matrix(np.pi, [1, 0, 0]))
    assert taper(upside_down) < 0.1
    frustum = y_up(trimesh.creation.box())
    frustum.vertices[frustum.vertices[:, 1] < 0, 0] *= 0.5  # the bottom half as wide along x
    # Widths along x at the bands' upper edges: 0.6 at 20% of the height, 0.95 at 90%.
    assert taper(frustum) == pytest.approx(0.60 / 0.95, rel=0.02)
