"""Physically based shading (engine/render/pbr.py): gradients, fitting a material from renders,
energy and highlights, the split-sum table against an independent integration, determinism.

Spheres are drawn analytically: an orthographic camera on -Y looking along +Y (Blender's front
view), Z up, so each pixel's normal is known without a rasteriser.
"""

from __future__ import annotations

import math

import torch

from engine.render import pbr


def sphere(size: int, views: int, dtype: torch.dtype = torch.float32
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """normal (views, size, size, 3), zero off the sphere; mask; view_dir towards the camera (-Y)."""
    coords = (torch.arange(size, dtype=dtype) + 0.5) / size * 2.0 - 1.0
    z, x = torch.meshgrid(-coords, coords, indexing="ij")
    inside = x ** 2 + z ** 2 < 1.0
    normal = torch.stack([x, -torch.sqrt((1.0 - x ** 2 - z ** 2).clamp_min(0.0)), z], dim=-1) * inside[..., None]
    view_dir = torch.tensor([0.0, -1.0, 0.0], dtype=dtype).expand(views, size, size, 3)
    return normal.expand(views, -1, -1, -1), inside.expand(views, -1, -1), view_dir


def fixed_lighting(bank: pbr.EnvironmentBank, index: list[int], rotation: list[float]) -> pbr.EnvironmentLighting:
    return pbr.EnvironmentLighting(bank, torch.tensor(index), torch.tensor(rotation, dtype=torch.float64),
                                   torch.ones(len(index), dtype=torch.float64))


def uniform_material(views: int, size: int, base: tuple[float, float, float], roughness: float, metallic: float,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = (views, size, size)
    return (torch.tensor(base, dtype=dtype).expand(*shape, 3), torch.full((*shape, 1), roughness, dtype=dtype),
            torch.full((*shape, 1), metallic, dtype=dtype))


def test_gradients_match_finite_differences():
    """Autograd against central differences in float64 for all four inputs, with a background
    pixel whose normal is zero (as the G-buffer leaves it) to show no NaN leaks from there."""
    bank = pbr.environment_bank(dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    shape = (2, 3, 3)
    base = (0.1 + 0.8 * torch.rand(*shape, 3, generator=generator, dtype=torch.float64)).requires_grad_()
    roughness = (0.1 + 0.8 * torch.rand(*shape, 1, generator=generator, dtype=torch.float64)).requires_grad_()
    metallic = (0.1 + 0.8 * torch.rand(*shape, 1, generator=generator, dtype=torch.float64)).requires_grad_()
    view_dir = torch.nn.functional.normalize(torch.tensor([0.3, -1.0, 0.2], dtype=torch.float64), dim=0)
    view_dir = view_dir.expand(*shape, 3)
    normal = (view_dir + 0.6 * torch.randn(*shape, 3, generator=generator, dtype=torch.float64)).contiguous()
    mask = torch.ones(shape, dtype=torch.bool)
    mask[1, 2, 2] = False
    normal[1, 2, 2] = 0.0
    normal.requires_grad_()
    lighting = fixed_lighting(bank, [0, 2], [0.4, 2.5])
    background = torch.tensor([[0.2, 0.3, 0.4], [0.9, 0.1, 0.5]], dtype=torch.float64)

    def render(base, roughness, metallic, normal):
        return pbr.shade_pbr(base, roughness, metallic, normal, view_dir, mask, lighting, background)

    assert torch.autograd.gradcheck(render, (base, roughness, metallic, normal), eps=1e-6, atol=1e-5, rtol=1e-3)
    render(base, roughness, metallic, normal).sum().backward()
    for tensor in (base, roughness, metallic, normal):
        assert torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_fit_recovers_a_known_material_from_renders():
    """Renders of a sphere under six random environments and rotations; Adam from a grey,
    half-metallic start with the roughness on the other side recovers each material."""
    size, views, steps = 24, 6, 200
    normal, mask, view_dir = sphere(size, views)
    lighting = pbr.sample_environment_lighting(views, torch.Generator().manual_seed(3), "cpu")
    background = torch.zeros(views, 3)
    materials = [((0.8, 0.15, 0.1), 0.3, 0.9),    # polished copper-like metal
                 ((0.2, 0.5, 0.8), 0.6, 0.1),     # rough blue plastic
                 ((0.3, 0.3, 0.35), 0.15, 0.3)]   # glossy, partly metallic grey
    for base, roughness, metallic in materials:
        target = pbr.shade_pbr(*uniform_material(views, size, base, roughness, metallic), normal, view_dir, mask,
                               lighting, background)
        base_logit = torch.zeros(3, requires_grad=True)
        roughness_logit = torch.logit(torch.tensor([0.7 if roughness < 0.5 else 0.2])).requires_grad_()
        metallic_logit = torch.zeros(1, requires_grad=True)
        optimiser = torch.optim.Adam([base_logit, roughness_logit, metallic_logit], lr=0.1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        for _ in range(steps):
            shape = (views, size, size)
            image = pbr.shade_pbr(base_logit.sigmoid().expand(*shape, 3), roughness_logit.sigmoid().expand(*shape, 1),
                                  metallic_logit.sigmoid().expand(*shape, 1), normal, view_dir, mask, lighting,
                                  background)
            loss = (image - target).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        found = (base_logit.sigmoid().tolist(), roughness_logit.sigmoid().item(), metallic_logit.sigmoid().item())
        assert abs(found[1] - roughness) < 0.1, (base, roughness, metallic, found)
        assert abs(found[2] - metallic) < 0.1, (base, roughness, metallic, found)
        assert max(abs(a - b) for a, b in zip(found[0], base)) < 0.05, (base, roughness, metallic, found)


def test_white_furnace_conserves_energy():
    """In a uniform white environment a white surface reflects the environment at every angle
    and roughness, dielectric or metal (the diffuse lobe gets what the specular lobe leaves, and
    the multiple-scattering term returns what single-scattering GGX loses)."""
    bank = pbr.make_environment_bank(torch.ones(1, 3, *pbr.ENVIRONMENT_SIZE, dtype=torch.float64), ("white",))
    size = 24
    normal, mask, view_dir = sphere(size, 1, torch.float64)
    lighting = fixed_lighting(bank, [0], [0.0])
    for roughness in (0.05, 0.3, 0.6, 1.0):
        for metallic in (0.0, 0.5, 1.0):
            light = pbr.reflected_light(*uniform_material(1, size, (1.0, 1.0, 1.0), roughness, metallic, torch.float64),
                                        normal, view_dir, lighting)
            assert (light.radiance[mask] - 1.0).abs().max() < 0.01, (roughness, metallic)


def test_furnace_fresnel_and_metal_colour():
    """In the same white furnace, up to moderate roughness: a black dielectric reflects only
    Fresnel, about 0.04 facing the camera and more towards grazing; a metal facing the camera
    reflects about its base colour, F0 (a rough one a little less where F0 < 1, as light bouncing
    between its microfacets loses 1 - F0 at every bounce)."""
    bank = pbr.make_environment_bank(torch.ones(1, 3, *pbr.ENVIRONMENT_SIZE, dtype=torch.float64), ("white",))
    size = 24
    normal, mask, view_dir = sphere(size, 1, torch.float64)
    lighting = fixed_lighting(bank, [0], [0.0])
    centre = (size // 2, size // 2)
    gold = (1.0, 0.78, 0.34)
    for roughness, metal_tolerance in ((0.05, 0.02), (0.3, 0.02), (0.6, 0.05)):
        black = pbr.reflected_light(*uniform_material(1, size, (0.0, 0.0, 0.0), roughness, 0.0, torch.float64),
                                    normal, view_dir, lighting).radiance[0]
        assert 0.025 < black[centre].mean() < 0.06, roughness
        assert black[mask[0]].amax() > 2 * black[centre].mean(), roughness
        metal = pbr.reflected_light(*uniform_material(1, size, gold, roughness, 1.0, torch.float64),
                                    normal, view_dir, lighting).radiance[0]
        assert (metal[centre] - torch.tensor(gold, dtype=torch.float64)).abs().max() < metal_tolerance, roughness


def test_metal_has_no_diffuse_lobe():
    bank = pbr.environment_bank()
    size = 16
    normal, _, view_dir = sphere(size, 2)
    lighting = fixed_lighting(bank, [0, 2], [1.0, 4.0])
    metal = pbr.reflected_light(*uniform_material(2, size, (0.9, 0.6, 0.2), 0.5, 1.0), normal, view_dir, lighting)
    plastic = pbr.reflected_light(*uniform_material(2, size, (0.9, 0.6, 0.2), 0.5, 0.0), normal, view_dir, lighting)
    assert metal.diffuse.abs().max() == 0.0
    assert metal.specular.amax() > 0.1
    assert plastic.diffuse.amax() > 0.1


def sun_facing_sky(bank: pbr.EnvironmentBank, towards_azimuth: float) -> pbr.EnvironmentLighting:
    """The "sky" environment turned so its sun lies at the given azimuth (radians from +X)."""
    index = bank.names.index("sky")
    height, width = pbr.ENVIRONMENT_SIZE
    brightest = int(bank.radiance[index].sum(0).argmax())
    row, column = divmod(brightest, width)
    assert row < height // 2, "the sun is above the horizon (Z up)"
    sun_azimuth = 2.0 * math.pi * (0.5 - (column + 0.5) / width)
    return fixed_lighting(bank, [index], [towards_azimuth - sun_azimuth])


def test_lower_roughness_gives_a_sharper_brighter_highlight():
    """A grey metal sphere under the sky with its sun near the camera: the highlight's peak is
    brighter and its area (pixels above half the peak) smaller the lower the roughness."""
    bank = pbr.environment_bank()
    size = 64
    normal, mask, view_dir = sphere(size, 1)
    lighting = sun_facing_sky(bank, -math.pi / 2 + 0.5)
    peaks, areas = [], []
    for roughness in (0.2, 0.35, 0.5):
        light = pbr.reflected_light(*uniform_material(1, size, (0.8, 0.8, 0.8), roughness, 1.0), normal, view_dir,
                                    lighting)
        luminance = light.radiance[0].mean(-1)[mask[0]]
        peaks.append(float(luminance.max()))
        areas.append(int((luminance > 0.5 * luminance.max()).sum()))
    assert peaks[0] > peaks[1] > peaks[2], peaks
    assert areas[0] < areas[1] < areas[2], areas
    assert peaks[0] > 3.0, "the sun's highlight is HDR, beyond display white"


def test_world_is_z_up_and_rotation_turns_about_z():
    """Under the sky the top of a white sphere is brighter than its bottom; turning the environment
    by an angle gives the same image as turning the scene (normals and view) by minus that angle."""
    bank = pbr.environment_bank(dtype=torch.float64)
    size = 24
    normal, mask, view_dir = sphere(size, 1, torch.float64)
    material = uniform_material(1, size, (0.8, 0.8, 0.8), 0.4, 0.0, torch.float64)
    sky = bank.names.index("sky")
    image = pbr.reflected_light(*material, normal, view_dir, fixed_lighting(bank, [sky], [0.0])).radiance[0]
    assert image[2, size // 2].mean() > 1.5 * image[-3, size // 2].mean()

    angle = 1.1
    turn = torch.tensor([[math.cos(-angle), -math.sin(-angle), 0.0], [math.sin(-angle), math.cos(-angle), 0.0],
                         [0.0, 0.0, 1.0]], dtype=torch.float64)
    for index in range(len(bank)):
        turned_light = pbr.reflected_light(*material, normal, view_dir, fixed_lighting(bank, [index], [angle]))
        turned_scene = pbr.reflected_light(*material, normal @ turn.T, view_dir @ turn.T,
                                           fixed_lighting(bank, [index], [0.0]))
        assert torch.allclose(turned_light.radiance[mask], turned_scene.radiance[mask], atol=1e-9)
        unturned = pbr.reflected_light(*material, normal, view_dir, fixed_lighting(bank, [index], [0.0]))
        assert (unturned.radiance[mask] - turned_light.radiance[mask]).abs().max() > 1e-3, bank.names[index]


def test_poles_are_continuous_with_finite_gradients():
    """Flat tops and bottoms of meshes have normals exactly along Z: there the lookups must not
    depend on the (undefined) azimuth, and the gradient must stay finite."""
    bank = pbr.environment_bank(dtype=torch.float64)
    views = len(bank)
    lighting = fixed_lighting(bank, list(range(views)), [0.3] * views)
    tilt = 1e-4
    azimuths = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    for pole in (1.0, -1.0):
        axis = torch.tensor([0.0, 0.0, pole], dtype=torch.float64)
        near = torch.stack([tilt * azimuths.cos(), tilt * azimuths.sin(), torch.full_like(azimuths, pole)], dim=-1)
        directions = torch.cat([axis[None], torch.nn.functional.normalize(near, dim=-1)])
        normal = directions.expand(views, 1, -1, -1).clone().requires_grad_()
        view_dir = directions.expand(views, 1, -1, -1)
        material = uniform_material(views, 1, (0.6, 0.6, 0.6), 0.1, 0.0, torch.float64)
        radiance = pbr.reflected_light(*[m[:, :, :1].expand(views, 1, 9, -1) for m in material], normal, view_dir,
                                       lighting).radiance
        assert (radiance[:, :, 1:] - radiance[:, :, :1]).abs().max() < 1e-3
        radiance.sum().backward()
        assert torch.isfinite(normal.grad).all()


def reference_split_sum(n_dot_v: float, roughness: float) -> tuple[float, float]:
    """Our own reference values: scale and bias by midpoint quadrature over the light hemisphere
    (1024 x 1024 directions over half of it, float64): A = integral of D Vis n.l (1 - Fc) and
    B = integral of D Vis n.l Fc, with GGX's D, Smith height-correlated Vis and Fc = (1 - v.h)^5
    written out here from their definitions. No importance sampling, no table: it shares nothing
    with split_sum_brdf_table but the formulas."""
    dtype = torch.float64
    count = 1024
    polar = (torch.arange(count, dtype=dtype) + 0.5) * (math.pi / 2 / count)
    # The integrand is symmetric about the view's plane: half the azimuths, counted twice.
    azimuth = (torch.arange(count, dtype=dtype) + 0.5) * (math.pi / count)
    polar, azimuth = torch.meshgrid(polar, azimuth, indexing="ij")
    light = torch.stack([polar.sin() * azimuth.cos(), polar.sin() * azimuth.sin(), polar.cos()], dim=-1)
    view = torch.tensor([math.sqrt(1 - n_dot_v ** 2), 0.0, n_dot_v], dtype=dtype)
    half = torch.nn.functional.normalize(light + view, dim=-1)
    alpha2 = roughness ** 4
    n_dot_l, n_dot_h, v_dot_h = light[..., 2], half[..., 2], (half * view).sum(-1)
    distribution = alpha2 / (math.pi * (n_dot_h ** 2 * (alpha2 - 1) + 1) ** 2)
    visibility = 0.5 / (n_dot_l * math.sqrt(n_dot_v ** 2 * (1 - alpha2) + alpha2)
                        + n_dot_v * torch.sqrt(n_dot_l ** 2 * (1 - alpha2) + alpha2))
    fresnel = (1 - v_dot_h) ** 5
    measure = 2 * polar.sin() * (math.pi / 2 / count) * (math.pi / count)
    lobe = distribution * visibility * n_dot_l * measure
    return float((lobe * (1 - fresnel)).sum()), float((lobe * fresnel).sum())


def test_split_sum_table_matches_reference_values():
    """The table, read as shading reads it, against: the mirror limit (roughness 0: A + B = 1,
    B = (1 - n.v)^5, exact), and the independent quadrature above at rough points."""
    brdf = pbr.environment_bank(dtype=torch.float64).brdf
    points = [(1.0, 0.0, 1.0, 0.0), (0.5, 0.0, 1.0 - 0.5 ** 5, 0.5 ** 5)]
    points += [(n_dot_v, roughness, *reference_split_sum(n_dot_v, roughness))
               for n_dot_v, roughness in [(0.5, 0.5), (0.9, 0.8), (0.25, 0.9), (0.7, 0.35), (0.15, 0.6)]]
    for n_dot_v, roughness, scale, bias in points:
        got_scale, got_bias = pbr.environment_brdf(torch.tensor([n_dot_v], dtype=torch.float64),
                                                   torch.tensor([roughness], dtype=torch.float64), brdf)
        assert abs(float(got_scale) - scale) < 0.02, (n_dot_v, roughness, float(got_scale), scale)
        assert abs(float(got_bias) - bias) < 0.02, (n_dot_v, roughness, float(got_bias), bias)


def test_prefiltering_equals_the_direct_weighted_average():
    """The FFT convolution against the plain GGX-weighted sum over every texel, at a few texels."""
    maps, _ = pbr.make_environment_maps(0)
    directions, solid_angle = pbr.equirect_directions(*pbr.ENVIRONMENT_SIZE)
    for roughness in (0.2, 0.6):
        lobe = pbr._ggx_lobe(roughness)
        convolved = pbr._convolve(maps, lobe)
        for row, column in [(3, 0), (20, 37), (40, 127), (63, 64)]:
            weights = lobe((directions.reshape(-1, 3) @ directions[row, column]).clamp(-1, 1)) * solid_angle.reshape(-1)
            direct = (maps.flatten(2) * weights).sum(-1) / weights.sum()
            assert torch.allclose(convolved[:, :, row, column], direct, rtol=1e-9, atol=1e-9)


def test_same_seed_same_environments_and_lighting():
    first, names = pbr.make_environment_maps(seed=5)
    again, _ = pbr.make_environment_maps(seed=5)
    other, _ = pbr.make_environment_maps(seed=6)
    assert len(names) >= 4 and first.shape == (len(names), 3, *pbr.ENVIRONMENT_SIZE)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    bank, bank_again = pbr.make_environment_bank(first, names), pbr.make_environment_bank(again, names)
    for field in ("specular", "irradiance", "brdf"):
        assert torch.equal(getattr(bank, field), getattr(bank_again, field))

    def draw(seed: int) -> pbr.EnvironmentLighting:
        return pbr.sample_environment_lighting(8, torch.Generator().manual_seed(seed), "cpu")

    a, b, c = draw(1), draw(1), draw(2)
    for field in ("index", "rotation", "intensity"):
        assert torch.equal(getattr(a, field), getattr(b, field))
        assert not torch.equal(getattr(a, field), getattr(c, field))
    assert ((a.intensity >= pbr.INTENSITY_RANGE[0]) & (a.intensity <= pbr.INTENSITY_RANGE[1])).all()
