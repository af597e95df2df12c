"""Training images for the bundled prior, rendered with the engine's own renderer (engine.render).

Two stages, both seeded:
1. A G-buffer bank: every mesh of the shape bank (world.shape_bank) seen by random orbit
   cameras (engine.render.cameras.sample_cameras), rasterised by engine.render.gbuffer.render_gbuffer
   at `resolution * supersample` pixels. Geometry only: surface position (object frame), normal, mask.
2. Scenes, made on the fly from the bank (on the GPU during training): per image a G-buffer, two
   colours, a procedural pattern evaluated at the surface positions (world.pattern_albedo), a light
   from engine.render.shading.sample_lighting and a background from sample_backgrounds, shaded by
   engine.render.shading.shade -- exactly how the texture pipeline lights its renders -- then
   area-downsampled to `resolution` (supersampling: no aliasing on the patterns). A fraction of
   the images is degraded (noise, oversaturation, blur, tiling, posterised colours) and the
   degradation is named in the caption, so the paper's default negative prompt carries a real
   classifier score.

The scene parameters and captions are drawn on the CPU (`SceneSampler`, numpy); lighting,
backgrounds and degradation noise on the G-buffer bank's device (a torch.Generator).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import CameraConfig
from judge.palette import COLOURS, PATTERNS, SHAPES
from engine.render.cameras import Cameras, sample_cameras
from engine.render.gbuffer import render_gbuffer
from engine.render.shading import sample_backgrounds, sample_lighting, shade

from .world import DEGRADATIONS, PatternParams, caption, pattern_albedo, sample_attributes, sample_pattern_params, \
    shape_bank, view_name

# The training views: a superset of the texture pipeline's defaults (engine.config.CameraConfig).
TRAIN_CAMERAS = CameraConfig(elevation_deg=(-15.0, 55.0), azimuth_deg=(-180.0, 180.0), distance=(2.5, 3.3),
                             fovy_deg=(22.0, 46.0))


@dataclass
class BankConfig:
    views: int = 24_000
    resolution: int = 32
    supersample: int = 2
    variants_per_shape: int = 12
    views_per_draw: int = 64
    seed: int = 0
    cameras: CameraConfig = field(default_factory=lambda: TRAIN_CAMERAS)


@dataclass
class GBufferBank:
    position: torch.Tensor   # (N, S, S, 3) float16, object frame (= world frame: meshes are posed in the bank)
    normal: torch.Tensor     # (N, S, S, 3) float16
    mask: torch.Tensor       # (N, S, S) bool
    cameras: Cameras         # N cameras
    shape: torch.Tensor      # (N,) int64 index into SHAPES
    resolution: int
    supersample: int

    def __len__(self) -> int:
        return int(self.mask.shape[0])

    @property
    def device(self) -> torch.device:
        return self.mask.device


def build_bank(config: BankConfig, device: torch.device | str = "cpu", log=print) -> GBufferBank:
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    meshes = shape_bank(config.variants_per_shape, config.seed)
    size = config.resolution * config.supersample
    n = config.views
    position = torch.empty(n, size, size, 3, dtype=torch.float16, device=device)
    normal = torch.empty(n, size, size, 3, dtype=torch.float16, device=device)
    mask = torch.empty(n, size, size, dtype=torch.bool, device=device)
    shape = torch.empty(n, dtype=torch.long)
    cameras = sample_cameras(config.cameras, n, generator).to(device)
    # Views are dealt to meshes round-robin in blocks, so every mesh gets the same share.
    order = np.arange(n) // config.views_per_draw % len(meshes)
    start = time.time()
    with torch.no_grad():
        for first in range(0, n, config.views_per_draw):
            last = min(first + config.views_per_draw, n)
            mesh = meshes[int(order[first])]
            g = render_gbuffer(torch.as_tensor(mesh.positions, device=device),
                               torch.as_tensor(mesh.triangles, device=device), cameras.index(slice(first, last)), size)
            position[first:last] = g.position.to(torch.float16)
            normal[first:last] = g.normal.to(torch.float16)
            mask[first:last] = g.mask
            shape[first:last] = SHAPES.index(mesh.shape)
            if log is not None and (first // config.views_per_draw) % 100 == 99:
                log(f"g-buffers {last}/{n} ({last / (time.time() - start):.0f} views/s)")
    return GBufferBank(position, normal, mask, cameras, shape.to(device), config.resolution, config.supersample)


# ----------------------------------------------------------------------------------------------
# Scene sampling (CPU) and composition (bank device)
# ----------------------------------------------------------------------------------------------

@dataclass
class SceneBatch:
    index: torch.Tensor          # (B,) G-buffer indices
    params: PatternParams
    degrade: torch.Tensor        # (B, len(DEGRADATIONS)) bool
    degrade_amount: torch.Tensor  # (B,) float in [0, 1], the strength of every degradation
    flip: torch.Tensor           # (B,) bool, mirror the image left-right
    captions: list[str]
    labels: dict[str, torch.Tensor]  # shape, pattern, colour, second (int64 indices)

    def to(self, device, non_blocking: bool = False) -> "SceneBatch":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        return SceneBatch(move(self.index), self.params.to(device, non_blocking), move(self.degrade),
                          move(self.degrade_amount), move(self.flip), self.captions,
                          {k: move(v) for k, v in self.labels.items()})

    def select(self, start: int, stop: int) -> "SceneBatch":
        """Scenes start..stop-1 of the batch."""
        p = self.params
        params = PatternParams(*(getattr(p, f)[start:stop] for f in p.__dataclass_fields__))
        return SceneBatch(self.index[start:stop], params, self.degrade[start:stop], self.degrade_amount[start:stop],
                          self.flip[start:stop], self.captions[start:stop],
                          {k: v[start:stop] for k, v in self.labels.items()})

    def pin_memory(self) -> "SceneBatch":
        """Called by DataLoader(pin_memory=True): page-locked copies make the per-step uploads asynchronous."""
        return SceneBatch(self.index.pin_memory(), self.params.pin_memory(), self.degrade.pin_memory(),
                          self.degrade_amount.pin_memory(), self.flip.pin_memory(), self.captions,
                          {k: v.pin_memory() for k, v in self.labels.items()})


class SceneSampler:
    """Draws scene parameters and captions for images made from a G-buffer bank."""

    def __init__(self, bank_shapes: np.ndarray, bank_azimuths: np.ndarray, seed: int, empty_prompt_prob: float = 0.12,
                 view_word_prob: float = 0.3, degrade_prob: float = 0.15):
        self.shapes = np.asarray(bank_shapes)
        self.azimuths = np.asarray(bank_azimuths)
        self.rng = np.random.default_rng(seed)
        self.empty_prompt_prob = empty_prompt_prob
        self.view_word_prob = view_word_prob
        self.degrade_prob = degrade_prob

    def sample(self, batch: int) -> SceneBatch:
        rng = self.rng
        index = rng.integers(len(self.shapes), size=batch)
        attributes = [sample_attributes(rng, SHAPES[self.shapes[i]]) for i in index]
        params = sample_pattern_params(attributes, rng)
        degrade = np.zeros((batch, len(DEGRADATIONS)), dtype=bool)
        captions = []
        for k, a in enumerate(attributes):
            view = view_name(float(self.azimuths[index[k]])) if rng.random() < self.view_word_prob else None
            kinds: tuple[str, ...] = ()
            if rng.random() < self.degrade_prob:
                chosen = rng.choice(len(DEGRADATIONS), 1 if rng.random() < 0.7 else 2, replace=False)
                degrade[k, chosen] = True
                kinds = tuple(DEGRADATIONS[j] for j in chosen)
            text = caption(a, rng, view, kinds)
            captions.append("" if rng.random() < self.empty_prompt_prob else text)
        labels = {
            "shape": torch.tensor([SHAPES.index(a.shape) for a in attributes]),
            "pattern": torch.tensor([PATTERNS.index(a.pattern) for a in attributes]),
            "colour": torch.tensor([COLOURS.index(a.colour) for a in attributes]),
            "second": torch.tensor([COLOURS.index(a.second) for a in attributes]),
        }
        return SceneBatch(torch.from_numpy(index), params, torch.from_numpy(degrade),
                          torch.from_numpy(rng.random(batch).astype(np.float32)),
                          torch.from_numpy(rng.random(batch) < 0.5), captions, labels)


def _apply_degradations(images: torch.Tensor, degrade: torch.Tensor, amount: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
    """Degrade images (B, 3, R, R) in [0, 1] where degrade[:, k] is set, kinds in DEGRADATIONS order."""
    b, _, r, _ = images.shape
    dev = images.device
    a = amount.view(-1, 1, 1, 1)
    out = images
    # noisy
    noise = torch.randn(images.shape, generator=generator, device=generator.device).to(dev)
    noisy = (out + (0.06 + 0.12 * a) * noise).clamp(0, 1)
    out = torch.where(degrade[:, 0].view(-1, 1, 1, 1), noisy, out)
    # oversaturated color
    gray = out.mean(dim=1, keepdim=True)
    boosted = (((gray + (out - gray) * (2.5 + 1.5 * a)) - 0.5) * 1.3 + 0.5).clamp(0, 1)
    out = torch.where(degrade[:, 1].view(-1, 1, 1, 1), boosted, out)
    # low quality: downsample to 6..10 px (3 sizes chosen by amount) and back up, blurred
    blurred = out.clone()
    for level, small in enumerate((max(4, r // 5), max(4, r // 4), max(4, r // 3))):
        down = F.interpolate(out, (small, small), mode="area")
        up = F.interpolate(down, (r, r), mode="bilinear", align_corners=False)
        pick = ((amount * 3).long().clamp(0, 2) == level).view(-1, 1, 1, 1)
        blurred = torch.where(pick, up, blurred)
    out = torch.where(degrade[:, 2].view(-1, 1, 1, 1), blurred, out)
    # tiling: 2x2 (or 3x3) copies of the image
    tiled = out.clone()
    for reps in (2, 3):
        small = F.interpolate(out, (r // reps, r // reps), mode="area").repeat(1, 1, reps, reps)
        if small.shape[-1] != r:
            small = F.interpolate(small, (r, r), mode="nearest")
        pick = ((amount < 0.7) if reps == 2 else (amount >= 0.7)).view(-1, 1, 1, 1)
        tiled = torch.where(pick, small, tiled)
    out = torch.where(degrade[:, 3].view(-1, 1, 1, 1), tiled, out)
    # ugly: swapped channels, posterised, blotchy colour
    perm = torch.argsort(torch.rand(b, 3, generator=generator, device=generator.device).to(dev), dim=1)
    swapped = torch.gather(out, 1, perm.view(b, 3, 1, 1).expand(-1, -1, r, r))
    posterised = torch.round(swapped * 3.0) / 3.0
    blotch = F.interpolate(torch.rand(b, 3, 4, 4, generator=generator, device=generator.device).to(dev), (r, r),
                           mode="bilinear", align_corners=False)
    ugly = (0.6 * posterised + 0.4 * blotch).clamp(0, 1)
    out = torch.where(degrade[:, 4].view(-1, 1, 1, 1), ugly, out)
    return out


def compose(bank: GBufferBank, scenes: SceneBatch, generator: torch.Generator, unlit_prob: float = 0.15
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, R, R) in [0, 1] and coverage (B, R, R) of the scenes, on the bank's device.

    A fraction unlit_prob is rendered unlit (albedo only), as the texture pipeline does with lighting off."""
    scenes = scenes.to(bank.device, non_blocking=True)
    index = scenes.index
    position, normal, mask = bank.position[index].float(), bank.normal[index].float(), bank.mask[index]
    cameras = bank.cameras.index(index)
    lighting = sample_lighting(cameras, generator)
    unlit = torch.rand(len(index), generator=generator, device=generator.device).to(bank.device) < unlit_prob
    lighting.ambient = torch.where(unlit, torch.ones_like(lighting.ambient), lighting.ambient)
    lighting.diffuse = torch.where(unlit, torch.zeros_like(lighting.diffuse), lighting.diffuse)
    background = sample_backgrounds(len(index), generator, bank.device)
    albedo = pattern_albedo(position, scenes.params)
    rgb = shade(albedo, normal, mask, lighting, background).permute(0, 3, 1, 2)
    rgb = F.avg_pool2d(rgb, bank.supersample) if bank.supersample > 1 else rgb
    coverage = F.avg_pool2d(mask[:, None].float(), bank.supersample)[:, 0] if bank.supersample > 1 else mask.float()
    rgb = _apply_degradations(rgb.clamp(0, 1), scenes.degrade, scenes.degrade_amount, generator)
    flip = scenes.flip.view(-1, 1, 1, 1)
    rgb = torch.where(flip, rgb.flip(-1), rgb)
    coverage = torch.where(flip[:, 0], coverage.flip(-1), coverage)
    return rgb, coverage


def contact_sheet(images: torch.Tensor, columns: int = 16) -> np.ndarray:
    """(N, 3, R, R) in [0, 1] (or uint8) -> one (rows*R, columns*R, 3) uint8 grid, for looking at the data."""
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    images = images.cpu()
    n, _, r, _ = images.shape
    rows = math.ceil(n / columns)
    sheet = np.zeros((rows * r, columns * r, 3), dtype=np.uint8)
    for i in range(n):
        y, x = divmod(i, columns)
        sheet[y * r:(y + 1) * r, x * r:(x + 1) * r] = images[i].permute(1, 2, 0).numpy()
    return sheet
