"""Occupancy grid for empty-space skipping (as nerfacc's OccGridEstimator, in plain PyTorch).

A G^3 grid over [-bound, bound]^3 keeps, per cell, an exponential moving maximum of the
opacity of one march step, 1 - exp(-density * step). Every `update_every` steps each cell
(during warm-up) or a random quarter of the cells plus a quarter of the occupied ones is
re-measured at a random point inside it. Cells above min(threshold, mean) are occupied;
the renderer evaluates the field only at samples in occupied cells.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WARMUP_STEPS = 256
DECAY = 0.95


class OccupancyGrid(torch.nn.Module):
    def __init__(self, resolution: int, bound: float, step_size: float, threshold: float):
        super().__init__()
        self.resolution, self.bound, self.step_size, self.threshold = resolution, bound, step_size, threshold
        cells = resolution ** 3
        self.register_buffer("opacity", torch.zeros(cells))
        self.register_buffer("occupied", torch.ones(cells, dtype=torch.bool))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def cell_index(self, points: Tensor) -> Tensor:
        """(...,) flat index of the cell holding each point (clamped into the grid)."""
        grid = ((points / (2.0 * self.bound) + 0.5) * self.resolution).long().clamp(0, self.resolution - 1)
        return (grid[..., 0] * self.resolution + grid[..., 1]) * self.resolution + grid[..., 2]

    def is_occupied(self, points: Tensor) -> Tensor:
        return self.occupied[self.cell_index(points)]

    def _cell_points(self, cells: Tensor, generator: torch.Generator) -> Tensor:
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        jitter = torch.rand(cells.shape[0], 3, generator=generator, device=generator.device).to(cells.device)
        return ((ijk + jitter) / r - 0.5) * (2.0 * self.bound)

    @torch.no_grad()
    def update(self, density: Callable[[Tensor], Tensor], step: int, generator: torch.Generator,
               chunk: int = 1 << 18) -> None:
        device = self.opacity.device
        total = self.opacity.shape[0]
        if step < WARMUP_STEPS:
            cells = torch.arange(total, device=device)
        else:
            quarter = max(1, total // 4)
            uniform = torch.randint(0, total, (quarter,), generator=generator, device=generator.device).to(device)
            occupied = torch.nonzero(self.occupied).squeeze(1)
            if occupied.numel() > 0:
                pick = torch.randint(0, occupied.numel(), (min(quarter, occupied.numel()),),
                                     generator=generator, device=generator.device).to(device)
                uniform = torch.cat([uniform, occupied[pick]])
            cells = torch.unique(uniform)
        points = self._cell_points(cells, generator)
        measured = torch.cat([density(points[start:start + chunk]).float()
                              for start in range(0, points.shape[0], chunk)])
        opacity = 1.0 - torch.exp(-measured * self.step_size)
        current = self.opacity[cells] * DECAY
        self.opacity[cells] = torch.maximum(current, opacity)
        threshold = min(self.threshold, float(self.opacity.mean()))
        self.occupied = self.opacity > threshold
        self.updates += 1
