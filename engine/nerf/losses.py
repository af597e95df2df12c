"""Stage 1's regularisers and their linear ramps (paper A.4): the orientation loss of Ref-NeRF
(Verbin et al. 2022) is computed in the renderer; the sparsity loss on the opacity is
sqrt(opacity^2 + 0.01) averaged over pixels (threestudio's form).
"""

from __future__ import annotations

import torch
from torch import Tensor


def ramp(step: int, values: tuple[float, float], steps: int) -> float:
    """values[0] at step 0 going linearly to values[1] at `steps`, constant after."""
    if steps <= 0:
        return float(values[1])
    fraction = min(max(step / steps, 0.0), 1.0)
    return float(values[0] + (values[1] - values[0]) * fraction)


def sparsity_loss(opacity: Tensor) -> Tensor:
    return torch.sqrt(opacity ** 2 + 0.01).mean()
