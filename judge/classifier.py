"""A small CNN that names the shape and the pattern of an object in a render (the judge's learned part).

Trained by training/bundled_prior/train_judge.py on renders of the attribute world made from
other meshes, views and seeds than the prior's training set; it shares no weights with the
prior. Input: (B, 3, 64, 64) in [0, 1]. Heads: shape, pattern, and (auxiliary) base and second
colour; the judge reports colour from the analytic statistics (judge/colour.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .palette import COLOURS, PATTERNS, SHAPES

INPUT_SIZE = 64
WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "judge.safetensors"
HEADS = {"shape": SHAPES, "pattern": PATTERNS, "colour": COLOURS, "second": COLOURS}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class JudgeNet(nn.Module):
    def __init__(self, widths: tuple[int, ...] = (32, 64, 96, 128)):
        super().__init__()
        blocks = []
        cin = 3
        for w in widths:
            blocks.append(_block(cin, w))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(0.2)
        self.heads = nn.ModuleDict({name: nn.Linear(cin, len(labels)) for name, labels in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> logits per head."""
        x = prepare(images)
        x = (x - 0.5) / 0.25
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.blocks) - 1:
                x = F.max_pool2d(x, 2)
        features = self.dropout(x.mean(dim=(2, 3)))
        return {name: head(features) for name, head in self.heads.items()}


def prepare(images: torch.Tensor) -> torch.Tensor:
    if images.shape[-1] != INPUT_SIZE or images.shape[-2] != INPUT_SIZE:
        mode = "bilinear"
        images = F.interpolate(images, (INPUT_SIZE, INPUT_SIZE), mode=mode, align_corners=False,
                               antialias=images.shape[-1] > INPUT_SIZE)
    return images


def save_judge(model: JudgeNet, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"input_size": str(INPUT_SIZE)})


def load_judge(path: Path | None = None, device: str | torch.device = "cpu") -> JudgeNet:
    from safetensors.torch import load_file

    path = Path(path) if path is not None else WEIGHTS_PATH
    model = JudgeNet()
    state = load_file(str(path))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return model.to(device).eval()
