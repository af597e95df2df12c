"""Physically based shading: glTF's metallic-roughness material under image-based environment light.

One shading for every renderer that shows materials: the optimisation renders of texture and
generate jobs and the training renders of the bundled prior. `shade_pbr` is the material
counterpart of `shading.shade`, with the same inputs' layout (B, H, W, C), the same mask and
background compositing and the same output range (display colours in 0..1), so a caller swaps
one for the other. What differs:

- `shade` lights an albedo in display space with one random directional light plus ambient
  (a surface facing the light shows exactly its albedo). `shade_pbr` takes a *linear* base
  colour, a perceptual roughness and a metallic value, lights them with a whole environment
  (diffuse and specular), tone-maps the linear radiance (identity below 0.8, soft above) and
  encodes it to sRGB. The environments are normalised so that a white Lambertian surface facing
  the brightest part of the sky reflects 1.0, so an unlit base colour and a lit one agree
  where `shade`'s albedo and its lit albedo agree.

The material (glTF 2.0 metallic-roughness, which Blender's Principled BSDF approximates):
alpha = roughness^2, F0 = mix(0.04, base_colour, metallic), diffuse colour
base_colour * (1 - metallic) (Lambert). Specular: Cook-Torrance with the GGX / Trowbridge-Reitz
distribution, Smith height-correlated visibility and Schlick's Fresnel. As glTF defines it, the
dielectric and the metal BRDF are mixed by metallic (for the single-scattering lobe that is
exactly the F0 mix above).

Lighting is the split-sum approximation (Karis 2013): the specular integral is the environment
pre-filtered with the GGX lobe (normal = view = reflection direction) at the reflection
direction, times the directional albedo F0 * A + B from a 2D lookup table over (n.v, roughness).
Diffuse light is the cosine-convolved (irradiance) map at the normal. The energy the single-
scattering GGX lobe loses on rough surfaces is added back as in Fdez-Aguera's (2019) multiple-
scattering model for image-based lighting, and the diffuse lobe gets what the specular lobes
leave, so a white surface in a uniform white environment reflects exactly the environment
(what Blender's default Multiscatter GGX aims at as well).

Directions are world space, Z up. Environment maps are equirectangular with row 0 at the
zenith and u = 0.5 - azimuth / (2 pi) (azimuth from +X towards +Y), so the image centre
faces +X as in Blender's world textures. Everything precomputed (maps, pre-filtered stacks,
the lookup table) is made in code, deterministically, once per process and device; a frame
costs three `grid_sample`s and elementwise math, differentiable w.r.t. base colour,
roughness, metallic and normal.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# Equirectangular sizes: the environments as made, the pre-filtered stack (every roughness
# level, so that one trilinear lookup interpolates between levels) and the irradiance map
# (cosine convolution is so smooth that 32 x 16 loses nothing visible).
ENVIRONMENT_SIZE = (64, 128)
STACK_SIZE = (32, 64)
IRRADIANCE_SIZE = (16, 32)
# Perceptual roughness of each pre-filtered level; uniform so that the level coordinate is linear in roughness.
ROUGHNESS_LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# The directional-albedo table: n.v x roughness cells, Hammersley samples per cell.
BRDF_TABLE_SIZE = 32
BRDF_TABLE_SAMPLES = 1024
# glTF's specular reflectance of dielectrics (index of refraction 1.5).
DIELECTRIC_F0 = 0.04
# Linear radiance is kept as it is up to this value and rolled off smoothly towards 1 above it,
# so highlights keep a gradient instead of clipping.
TONE_MAP_KNEE = 0.8
# Default range of the random per-view intensity (exposure) of the environment.
INTENSITY_RANGE = (0.8, 1.2)
# Keeps n.v away from 0, where the lookup table's grazing column and the reflection degenerate.
MIN_N_DOT_V = 1e-4


@dataclass(frozen=True)
class EnvironmentBank:
    """Environments ready for shading, all on one device and dtype.

    radiance: (E, 3, 64, 128) the equirectangular maps, linear HDR radiance
    specular: (E, 3, L, 34, 66) pre-filtered per level of ROUGHNESS_LEVELS (32 x 64 texels),
      padded with pole rows and wrapped columns
    irradiance: (E, 3, 18, 34) cosine-convolved radiance / pi (what a white Lambertian surface
      reflects; 16 x 32 texels), padded the same way
    brdf: (1, 2, 32, 32) the split-sum scale A and bias B, rows roughness, columns n.v, both at
      cell centres
    names: one per environment
    """

    radiance: Tensor
    specular: Tensor
    irradiance: Tensor
    brdf: Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.radiance.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EnvironmentBank:
        return EnvironmentBank(self.radiance.to(device, dtype), self.specular.to(device, dtype),
                               self.irradiance.to(device, dtype), self.brdf.to(device, dtype), self.names)


@dataclass
class EnvironmentLighting:
    """The light of B views: environment `index` (B,) of `bank`, turned by `rotation` (B,) radians
    about +Z (counter-clockwise seen from above) and scaled by `intensity` (B,)."""

    bank: EnvironmentBank
    index: Tensor
    rotation: Tensor
    intensity: Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])


# ---------------------------------------------------------------------------------------------
# Directions and equirectangular maps


def equirect_directions(height: int, width: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """(H, W, 3) unit directions at the texel centres and (H, W) their solid angles."""
    polar = (torch.arange(height, dtype=dtype) + 0.5) * (math.pi / height)
    u = (torch.arange(width, dtype=dtype) + 0.5) / width
    azimuth = 2.0 * math.pi * (0.5 - u)
    polar, azimuth = torch.meshgrid(polar, azimuth, indexing="ij")
    directions = torch.stack([polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=-1)
    solid_angle = polar.sin() * (2.0 * math.pi / width) * (math.pi / height)
    return directions, solid_angle


def _equirect_uv(direction: Tensor, rotation: Tensor) -> tuple[Tensor, Tensor]:
    """u in [0, 1) (wrapping) and v in [0, 1] of unit directions (B, H, W, 3) in an environment
    turned by rotation (B,)."""
    x, y, z = direction.unbind(-1)
    # The tiny term keeps the gradient finite straight up and down (every flat top of a mesh).
    horizontal = torch.sqrt(x * x + y * y + 1e-12)
    # There the azimuth is undefined and atan2's gradient 0/0; the pole rows read the same whatever it is.
    x = torch.where(horizontal < 1e-5, torch.ones_like(x), x)
    u = torch.remainder(0.5 + (rotation[:, None, None] - torch.atan2(y, x)) / (2.0 * math.pi), 1.0)
    v = 0.5 - torch.atan2(z, horizontal) / math.pi
    return u, v


def _padded_grid(u: Tensor, v: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """grid_sample coordinates (align_corners=True) into a map of height x width texels padded by
    _pad: columns wrap; rows run from the zenith's pole row, half a texel above row 0's centre,
    to the nadir's, so the lookup is continuous through the poles."""
    gx = (u * width + 0.5) / (width + 1) * 2.0 - 1.0
    row = v * height + 0.5
    row = torch.where(row < 1.0, 2.0 * row - 1.0, torch.where(row > height, 2.0 * row - height, row))
    gy = row / (height + 1) * 2.0 - 1.0
    return gx, gy


def _pad(maps: Tensor) -> Tensor:
    """(..., H + 2, W + 2): a pole row above and below (the mean of the row next to it: the value
    at the pole) and one wrapped column on each side."""
    top = maps[..., :1, :].mean(-1, keepdim=True).expand_as(maps[..., :1, :])
    bottom = maps[..., -1:, :].mean(-1, keepdim=True).expand_as(maps[..., -1:, :])
    maps = torch.cat([top, maps, bottom], dim=-2)
    return torch.cat([maps[..., -1:], maps, maps[..., :1]], dim=-1)


def _area_downsample(maps: Tensor, factor: int) -> Tensor:
    """Solid-angle-weighted average of factor x factor texel blocks of (..., H, W) equirect maps."""
    height, width = maps.shape[-2:]
    _, solid_angle = equirect_directions(height, width, maps.dtype)
    weighted = F.avg_pool2d((maps * solid_angle).reshape(-1, 1, height, width), factor)
    weights = F.avg_pool2d(solid_angle[None, None], factor)
    return (weighted / weights).reshape(*maps.shape[:-2], height // factor, width // factor)


# ---------------------------------------------------------------------------------------------
# The environments, made in code


def _luminance(rgb: Tensor) -> Tensor:
    return rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722


def _rgb(*values: float) -> Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _unit(elevation_deg: float, azimuth_deg: float) -> Tensor:
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    return torch.tensor([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], dtype=torch.float64)


def _disc(directions: Tensor, centre: Tensor, radius_deg: float) -> Tensor:
    """(H, W) soft-edged disc of angular radius radius_deg, 1 inside."""
    angle = torch.rad2deg(torch.acos((directions @ centre).clamp(-1.0, 1.0)))
    return torch.sigmoid((radius_deg - angle) / (0.25 * radius_deg))


def _glow(directions: Tensor, centre: Tensor, width_deg: float) -> Tensor:
    """(H, W) Gaussian falloff around centre, the sky's brightening around the sun."""
    angle = torch.acos((directions @ centre).clamp(-1.0, 1.0))
    return torch.exp(-0.5 * (angle / math.radians(width_deg)) ** 2)


def _panel(directions: Tensor, elevation_deg: float, azimuth_deg: float, half_width_deg: float,
           half_height_deg: float) -> Tensor:
    """(H, W) soft rectangle in azimuth x elevation, a softbox or window."""
    elevation = torch.rad2deg(torch.asin(directions[..., 2].clamp(-1.0, 1.0)))
    azimuth = torch.rad2deg(torch.atan2(directions[..., 1], directions[..., 0]))
    d_az = torch.remainder(azimuth - azimuth_deg + 180.0, 360.0) - 180.0
    across = torch.sigmoid((half_width_deg - d_az.abs()) / 2.0)
    up = torch.sigmoid((half_height_deg - (elevation - elevation_deg).abs()) / 2.0)
    return across * up


def _sky(directions: Tensor, generator: torch.Generator) -> Tensor:
    """Clear day: blue gradient sky, a bright sun high up, brown-grey ground."""
    z = directions[..., 2:]
    sun = _unit(_uniform(generator, 25.0, 65.0), _uniform(generator, -180.0, 180.0))
    sky = torch.lerp(_rgb(0.75, 0.85, 1.0), _rgb(0.2, 0.4, 0.85), z.clamp_min(0.0).sqrt())
    sky = sky + 0.6 * _glow(directions, sun, 25.0)[..., None] * _rgb(1.0, 0.95, 0.85)
    ground = _rgb(0.3, 0.26, 0.2) * (0.6 + 0.4 * (-z).clamp_min(0.0))
    base = torch.lerp(ground, sky, torch.sigmoid(z * 40.0))
    return base + 600.0 * _disc(directions, sun, 2.5)[..., None] * _rgb(1.0, 0.95, 0.85)


def _sunset(directions: Tensor, generator: torch.Generator) -> Tensor:
    """Low warm sun over an orange horizon fading to deep blue; dark ground."""
    z = directions[..., 2:]
    sun = _unit(_uniform(generator, 4.0, 12.0), _uniform(generator, -180.0, 180.0))
    sky = torch.lerp(_rgb(1.0, 0.55, 0.25), _rgb(0.1, 0.15, 0.45), z.clamp_min(0.0) ** 0.4)
    sky = sky + 1.2 * _glow(directions, sun, 20.0)[..., None] * _rgb(1.0, 0.6, 0.3)
    ground = _rgb(0.12, 0.09, 0.07)
    base = torch.lerp(ground, sky, torch.sigmoid(z * 40.0))
    return base + 300.0 * _disc(directions, sun, 3.0)[..., None] * _rgb(1.0, 0.7, 0.4)


def _studio(directions: Tensor, generator: torch.Generator) -> Tensor:
    """Dark grey studio with a large key softbox, a dimmer fill on the other side and a top strip."""
    z = directions[..., 2:]
    base = torch.lerp(_rgb(0.08, 0.08, 0.08), _rgb(0.03, 0.03, 0.035), torch.sigmoid(z * 10.0))
    key_azimuth = _uniform(generator, -180.0, 180.0)
    key = _panel(directions, _uniform(generator, 20.0, 40.0), key_azimuth, 18.0, 14.0)
    fill_azimuth = key_azimuth + _uniform(generator, 120.0, 200.0)
    fill = _panel(directions, _uniform(generator, 5.0, 25.0), fill_azimuth, 14.0, 12.0)
    top = _panel(directions, 75.0, _uniform(generator, -180.0, 180.0), 40.0, 6.0)
    return base + (12.0 * key + 4.0 * fill + 6.0 * top)[..., None] * _rgb(1.0, 0.98, 0.95)


def _overcast(directions: Tensor, generator: torch.Generator) -> Tensor:
    """Overcast sky, brighter towards the zenith as in the CIE overcast model and around the hidden
    sun; grey ground."""
    z = directions[..., 2:]
    tint = _uniform(generator, 0.0, 0.08)
    hidden_sun = _unit(_uniform(generator, 30.0, 60.0), _uniform(generator, -180.0, 180.0))
    sky = (1.0 + 2.0 * z.clamp_min(0.0)) / 3.0 + 0.5 * _glow(directions, hidden_sun, 30.0)[..., None]
    sky = sky * _rgb(0.95 - tint, 0.97, 1.0)
    ground = _rgb(0.25, 0.25, 0.24)
    return torch.lerp(ground, sky, torch.sigmoid(z * 30.0))


def _window(directions: Tensor, generator: torch.Generator) -> Tensor:
    """Room interior: warm dim walls, a large cool daylight window and a small warm ceiling lamp."""
    z = directions[..., 2:]
    walls = torch.lerp(_rgb(0.12, 0.1, 0.08), _rgb(0.22, 0.2, 0.17), torch.sigmoid(z * 8.0))
    window = _panel(directions, _uniform(generator, 10.0, 25.0), _uniform(generator, -180.0, 180.0), 30.0, 22.0)
    lamp = _disc(directions, _unit(_uniform(generator, 60.0, 85.0), _uniform(generator, -180.0, 180.0)), 4.0)
    return walls + 5.0 * window[..., None] * _rgb(0.85, 0.92, 1.0) + 40.0 * lamp[..., None] * _rgb(1.0, 0.8, 0.55)


ENVIRONMENTS = {"sky": _sky, "sunset": _sunset, "studio": _studio, "overcast": _overcast, "window": _window}


def make_environment_maps(seed: int = 0) -> tuple[Tensor, tuple[str, ...]]:
    """(E, 3, 64, 128) float64 linear radiance of the environments in ENVIRONMENTS, their names.

    Sun, softbox and window placements are drawn from a generator seeded with `seed`, so a
    seed gives the same maps on every machine. Not normalised: `environment_bank` scales them.
    """
    generator = torch.Generator().manual_seed(seed)
    directions, _ = equirect_directions(*ENVIRONMENT_SIZE)
    maps = [make(directions, generator).permute(2, 0, 1) for make in ENVIRONMENTS.values()]
    return torch.stack(maps).contiguous(), tuple(ENVIRONMENTS)


# ---------------------------------------------------------------------------------------------
# Precomputation: pre-filtered stacks, irradiance, the directional-albedo table


def _convolve(maps: Tensor, lobe) -> Tensor:
    """(E, 3, H, W) equirect maps convolved on the sphere, same size: each texel becomes the average
    of all texels weighted by lobe(cosine between the two directions) times their solid angle.

    The weight between two texels depends on their rows and their azimuth difference only, so per
    pair of rows it is a circular correlation along the azimuth, done with real FFTs: exact, and
    H * H * W weights instead of (H * W)^2.
    """
    height, width = maps.shape[-2:]
    directions, solid_angle = equirect_directions(height, width, maps.dtype)
    polar_cos, polar_sin = directions[:, 0, 2], torch.sqrt(1.0 - directions[:, 0, 2] ** 2)
    # Azimuth difference between columns k and m is 2 pi (k - m) / W (u runs against the azimuth).
    azimuth_cos = torch.cos(2.0 * math.pi * torch.arange(width, dtype=maps.dtype) / width)
    cosine = (polar_cos[:, None, None] * polar_cos[None, :, None]
              + polar_sin[:, None, None] * polar_sin[None, :, None] * azimuth_cos)   # (out row, in row, k - m)
    kernel = lobe(cosine.clamp(-1.0, 1.0)) * solid_angle[None, :, :1]
    spectrum = torch.einsum("rif,ecif->ecrf", torch.fft.rfft(kernel, dim=-1).conj(), torch.fft.rfft(maps, dim=-1))
    return torch.fft.irfft(spectrum, n=width, dim=-1) / kernel.sum(dim=(1, 2))[:, None]


def _ggx_lobe(roughness: float):
    """Weight of a light direction at cosine c from the reflection direction, with normal = view
    = reflection: D(h) n.l, where n.h = sqrt((1 + c) / 2) and n.l = c."""
    alpha2 = roughness ** 4

    def lobe(cosine: Tensor) -> Tensor:
        n_dot_h2 = (1.0 + cosine) / 2.0
        distribution = alpha2 / (math.pi * (n_dot_h2 * (alpha2 - 1.0) + 1.0) ** 2)
        return distribution * cosine.clamp_min(0.0)

    return lobe


def _prefilter(maps: Tensor) -> Tensor:
    """(E, 3, L, 32, 64): per level of ROUGHNESS_LEVELS the maps GGX-convolved (level 0, the mirror,
    as they are) at full size, then averaged down over each stack texel."""
    factor = ENVIRONMENT_SIZE[0] // STACK_SIZE[0]
    levels = [maps if roughness == 0.0 else _convolve(maps, _ggx_lobe(roughness)) for roughness in ROUGHNESS_LEVELS]
    return torch.stack([_area_downsample(level, factor) for level in levels], dim=2)


def _irradiance(maps: Tensor) -> Tensor:
    """(E, 3, 16, 32) cosine-weighted average of the radiance over each hemisphere: the radiance a
    white Lambertian surface reflects (irradiance / pi, normalised by the discrete cosine sum so a
    uniform environment gives exactly its radiance)."""
    convolved = _convolve(maps, lambda cosine: cosine.clamp_min(0.0))
    return _area_downsample(convolved, ENVIRONMENT_SIZE[0] // IRRADIANCE_SIZE[0])


def _hammersley(count: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The 2D Hammersley point set: i / count and the base-2 radical inverse of i."""
    index = torch.arange(count, dtype=torch.int64)
    radical = torch.zeros(count, dtype=dtype)
    scale, bits = 0.5, index.clone()
    while bool(bits.any()):
        radical += (bits & 1).to(dtype) * scale
        bits >>= 1
        scale /= 2.0
    return index.to(dtype) / count, radical


def split_sum_brdf_table(size: int = BRDF_TABLE_SIZE, samples: int = BRDF_TABLE_SAMPLES) -> Tensor:
    """(2, size, size) float64 scale A and bias B of the split-sum directional albedo, rows
    roughness and columns n.v at cell centres (i + 0.5) / size.

    For each cell, half vectors are importance-sampled from GGX's D(h) n.h on a Hammersley set
    and the light direction is the view reflected about them; with Smith height-correlated
    visibility Vis and Schlick's Fc = (1 - v.h)^5 the estimator of the specular integral is
    F * Vis * 4 n.l v.h / n.h, so A averages (1 - Fc) times that and B averages Fc times it
    (F0 * A + B is the directional albedo for F0).
    """
    dtype = torch.float64
    centres = (torch.arange(size, dtype=dtype) + 0.5) / size
    alpha = (centres ** 2)[:, None, None]          # rows: roughness
    n_dot_v = centres[None, :, None]               # columns: n.v
    xi1, xi2 = _hammersley(samples, dtype)
    phi = 2.0 * math.pi * xi1
    alpha2 = alpha ** 2
    cos_h = torch.sqrt((1.0 - xi2) / (1.0 + (alpha2 - 1.0) * xi2))
    sin_h = torch.sqrt((1.0 - cos_h ** 2).clamp_min(0.0))
    # View in the x-z plane; h = (sin_h cos phi, sin_h sin phi, cos_h).
    view_x, view_z = torch.sqrt(1.0 - n_dot_v ** 2), n_dot_v
    v_dot_h = (view_x * sin_h * phi.cos() + view_z * cos_h).clamp_min(0.0)
    n_dot_l = 2.0 * v_dot_h * cos_h - view_z
    lit = n_dot_l > 0.0
    n_dot_l = n_dot_l.clamp_min(1e-12)
    visibility = 0.5 / (n_dot_l * torch.sqrt(n_dot_v ** 2 * (1.0 - alpha2) + alpha2)
                        + n_dot_v * torch.sqrt(n_dot_l ** 2 * (1.0 - alpha2) + alpha2))
    weight = torch.where(lit, visibility * 4.0 * n_dot_l * v_dot_h / cos_h, torch.zeros_like(n_dot_l))
    fresnel = (1.0 - v_dot_h) ** 5
    return torch.stack([((1.0 - fresnel) * weight).mean(-1), (fresnel * weight).mean(-1)])


def make_environment_bank(radiance: Tensor, names: tuple[str, ...]) -> EnvironmentBank:
    """An EnvironmentBank (float64, CPU) from (E, 3, 64, 128) radiance maps, used as given.

    make_environment_bank(*make_environment_maps(seed)) is not normalised; `environment_bank`
    is the normalised, cached bank shading uses.
    """
    if tuple(radiance.shape[-2:]) != ENVIRONMENT_SIZE or radiance.ndim != 4 or radiance.shape[1] != 3:
        raise ValueError(f"environment maps must be (E, 3, {ENVIRONMENT_SIZE[0]}, {ENVIRONMENT_SIZE[1]}) "
                         f"equirectangular radiance, got {tuple(radiance.shape)}; resample them to that size")
    radiance = radiance.to("cpu", torch.float64)
    return EnvironmentBank(radiance, _pad(_prefilter(radiance)), _pad(_irradiance(radiance)),
                           split_sum_brdf_table()[None], names)


@functools.lru_cache(maxsize=4)
def _normalised_bank(seed: int) -> EnvironmentBank:
    maps, names = make_environment_maps(seed)
    bank = make_environment_bank(maps, names)
    # Scale each environment so that a white Lambertian surface facing its brightest direction reflects 1.
    peak = _luminance(bank.irradiance.permute(0, 2, 3, 1)).flatten(1).amax(-1)
    scale = (1.0 / peak)[:, None, None, None]
    return EnvironmentBank(bank.radiance * scale, bank.specular * scale[..., None], bank.irradiance * scale,
                           bank.brdf, names)


@functools.lru_cache(maxsize=8)
def _bank_on(seed: int, device: str, dtype: torch.dtype) -> EnvironmentBank:
    return _normalised_bank(seed).to(device, dtype)


def environment_bank(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     seed: int = 0) -> EnvironmentBank:
    """The bank of environments of ENVIRONMENTS made with `seed`, normalised so that a white
    Lambertian surface facing each one's brightest direction reflects 1.0; computed once per
    process (about a second on a CPU) and kept per device and dtype."""
    return _bank_on(seed, str(torch.device(device)), dtype)


# ---------------------------------------------------------------------------------------------
# Per-view lighting and shading


def sample_environment_lighting(count: int, generator: torch.Generator, device: torch.device | str,
                                bank: EnvironmentBank | None = None,
                                intensity_range: tuple[float, float] = INTENSITY_RANGE) -> EnvironmentLighting:
    """One environment per view, uniformly from the bank (default: environment_bank on `device`),
    turned uniformly about +Z, its intensity uniform in intensity_range.

    The same random draws whatever the settings, on the generator's device, as sample_lighting;
    the result is on `device`.
    """
    bank = environment_bank(device) if bank is None else bank
    index = torch.randint(len(bank), (count,), generator=generator, device=generator.device).to(device)
    rotation = 2.0 * math.pi * torch.rand(count, generator=generator, device=generator.device).to(device)
    unit = torch.rand(count, generator=generator, device=generator.device).to(device)
    intensity = intensity_range[0] + (intensity_range[1] - intensity_range[0]) * unit
    return EnvironmentLighting(bank, index, rotation, intensity)


def environment_brdf(n_dot_v: Tensor, roughness: Tensor, brdf: Tensor) -> tuple[Tensor, Tensor]:
    """Split-sum scale A and bias B at n.v and roughness (same shape, values in [0, 1]),
    bilinear in the table `brdf` (1, 2, N, N) (EnvironmentBank.brdf)."""
    size = brdf.shape[-1]
    gx = (n_dot_v * size - 0.5) / (size - 1) * 2.0 - 1.0
    gy = (roughness * size - 0.5) / (size - 1) * 2.0 - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(1, 1, -1, 2).to(brdf.dtype)
    table = F.grid_sample(brdf, grid, mode="bilinear", padding_mode="border", align_corners=True)
    scale, bias = table.reshape(2, *n_dot_v.shape).unbind(0)
    return scale, bias


@dataclass
class ReflectedLight:
    """(B, H, W, 3) linear radiance towards the camera, by lobe: `diffuse` the Lambertian lobe,
    `specular` the GGX lobe (single and multiple scattering); both already scaled by the views'
    intensities."""

    diffuse: Tensor
    specular: Tensor

    @property
    def radiance(self) -> Tensor:
        return self.diffuse + self.specular


def reflected_light(base_colour: Tensor, roughness: Tensor, metallic: Tensor, normal: Tensor, view_dir: Tensor,
                    environment: EnvironmentLighting) -> ReflectedLight:
    """The light the material reflects towards the camera, everywhere (no mask).

    base_colour (B, H, W, 3) linear in [0, 1]; roughness, metallic (B, H, W, 1) in [0, 1]
    (perceptual roughness); normal (B, H, W, 3) world-space shading normal, normalised here;
    view_dir (B, H, W, 3) unit vectors from the surface towards the camera.
    """
    bank, dtype = environment.bank, base_colour.dtype
    normal = F.normalize(normal, dim=-1)
    n_dot_v_raw = (normal * view_dir).sum(-1, keepdim=True)
    reflected = 2.0 * n_dot_v_raw * normal - view_dir
    n_dot_v = n_dot_v_raw.clamp(MIN_N_DOT_V, 1.0)
    roughness = roughness.clamp(0.0, 1.0)
    rotation = environment.rotation.to(dtype)
    intensity = environment.intensity.to(dtype)[:, None, None, None]

    # Pre-filtered specular light: one trilinear lookup, (u, v) at the reflection, level by roughness.
    stack = bank.specular[environment.index].to(dtype)
    height, width = stack.shape[-2] - 2, stack.shape[-1] - 2
    gx, gy = _padded_grid(*_equirect_uv(reflected, rotation), height, width)
    grid = torch.stack([gx, gy, roughness[..., 0] * 2.0 - 1.0], dim=-1)[:, None]
    specular_light = F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=True)
    specular_light = specular_light[:, :, 0].permute(0, 2, 3, 1)

    irradiance = bank.irradiance[environment.index].to(dtype)
    height, width = irradiance.shape[-2] - 2, irradiance.shape[-1] - 2
    gx, gy = _padded_grid(*_equirect_uv(normal, rotation), height, width)
    diffuse_light = F.grid_sample(irradiance, torch.stack([gx, gy], dim=-1), mode="bilinear",
                                  padding_mode="border", align_corners=True).permute(0, 2, 3, 1)

    scale, bias = environment_brdf(n_dot_v, roughness, bank.brdf.to(dtype))
    lost = 1.0 - (scale + bias)                     # the energy single scattering loses (F0 = 1)

    def albedos(f0: Tensor | float) -> tuple[Tensor, Tensor]:
        """Directional albedo of the single- and of the multiple-scattering specular lobe for F0."""
        single = f0 * scale + bias
        fresnel_average = f0 + (1.0 - f0) / 21.0
        return single, single * fresnel_average * lost / (1.0 - lost * fresnel_average)

    # glTF mixes the dielectric and the metal BRDF by metallic; the single-scattering lobe's mix is
    # the same as F0 = mix(0.04, base_colour, metallic). The diffuse lobe, the dielectric's only,
    # gets what the dielectric's specular lobes leave.
    dielectric_single, dielectric_multiple = albedos(DIELECTRIC_F0)
    metal_single, metal_multiple = albedos(base_colour)
    single = torch.lerp(dielectric_single.expand_as(metal_single), metal_single, metallic)
    multiple = torch.lerp(dielectric_multiple.expand_as(metal_multiple), metal_multiple, metallic)
    diffuse = base_colour * (1.0 - metallic) * (1.0 - dielectric_single - dielectric_multiple) * diffuse_light
    specular = single * specular_light + multiple * diffuse_light
    return ReflectedLight(diffuse * intensity, specular * intensity)


def tone_map(linear: Tensor, knee: float = TONE_MAP_KNEE) -> Tensor:
    """Linear radiance to [0, 1): unchanged up to `knee`, then rolled off with tanh (slope 1 at the
    knee), so overexposed highlights keep a gradient."""
    over = (linear - knee).clamp_min(0.0)
    return torch.where(linear > knee, knee + (1.0 - knee) * torch.tanh(over / (1.0 - knee)), linear.clamp_min(0.0))


def linear_to_srgb(linear: Tensor) -> Tensor:
    """The sRGB transfer function of values in [0, 1] (what a base-colour texture stores)."""
    safe = linear.clamp_min(0.0031308)
    return torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * safe ** (1.0 / 2.4) - 0.055)


def shade_pbr(base_colour: Tensor, roughness: Tensor, metallic: Tensor, normal: Tensor, view_dir: Tensor,
              mask: Tensor, environment: EnvironmentLighting, background: Tensor) -> Tensor:
    """(B, H, W, 3) display colours in [0, 1]: the reflected radiance tone-mapped and sRGB-encoded
    on the mask (B, H, W) bool, background elsewhere.

    background is (B, 3) solid colours or (B, H, W, 3), already display colours (as for shade).
    Differentiable w.r.t. base colour, roughness, metallic, normal (and background).
    """
    radiance = reflected_light(base_colour, roughness, metallic, normal, view_dir, environment).radiance
    lit = linear_to_srgb(tone_map(radiance))
    if background.ndim == 2:
        background = background[:, None, None, :]
    return torch.where(mask[..., None], lit, background.to(lit.dtype).expand_as(lit))
