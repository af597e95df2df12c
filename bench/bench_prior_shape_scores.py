"""How strongly does the bundled prior call each shape the prompt? A probe of what CSD can reach.

Each mesh (ideal shapes, and any exported assets given) is rendered in the prompt's colour from
the prior's training cameras, lit and on random backgrounds, at 64 px and area-downsampled to
the prior's 32 px, as its training images were. For noise levels t across the range, with the
same noise for every mesh:
  - classifier: mean over t of ||e(x_t, "") - eps||^2 - ||e(x_t, y) - eps||^2, a proxy of the
    implicit classifier log p(y | x) whose gradient is CSD's (Eq. 7): higher = more "y";
  - negative: the same proxy for the negative prompt (the default one), which CSD moves away from;
  - csd: classifier - w2 * negative, the objective whose gradient is Eq. 10's at that w2;
  - denoise: mean ||e(x_t, y) - eps||^2, the conditional denoising loss (lower = likelier under
    p(x | y), up to how hard the image is to denoise at all).
Prints a table, x 1000; --per-level adds the csd column at each noise level (where in t the prior
tells the shapes apart, and which way).

    python bench/bench_prior_shape_scores.py --prompt "a blue cube" out/cube/mesh.glb
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import trimesh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.config import DEFAULT_NEGATIVE_PROMPT, CameraConfig, PriorConfig  # noqa: E402
from judge.geometry import load_closed_mesh  # noqa: E402
from judge.palette import PALETTE  # noqa: E402
from engine.prior.load import load_prior  # noqa: E402
from engine.render.cameras import sample_cameras  # noqa: E402
from engine.render.gbuffer import render_gbuffer  # noqa: E402
from engine.render.shading import sample_backgrounds, sample_lighting, shade  # noqa: E402
from training.bundled_prior.world import normalise_unit_box  # noqa: E402  (how the prior's world sizes meshes)


def ideal_shapes() -> dict[str, trimesh.Trimesh]:
    frustum = trimesh.creation.box((1.0, 1.0, 1.0))
    vertices = frustum.vertices.copy()
    vertices[vertices[:, 2] < 0, :2] *= 0.7
    frustum.vertices = vertices
    return {
        "cube": trimesh.creation.box((1.0, 1.0, 1.0)),
        "cube turned 30 deg": trimesh.creation.box(
            (1.0, 1.0, 1.0), transform=trimesh.transformations.rotation_matrix(np.radians(30.0), [0, 0, 1])),
        "box narrower at the bottom (0.7)": frustum,
        "sphere": trimesh.creation.icosphere(4),
        "cylinder": trimesh.creation.cylinder(0.5, 1.0, sections=64),
    }


def load_asset(path: Path) -> trimesh.Trimesh:
    mesh = load_closed_mesh(path)
    if path.suffix.lower() in (".glb", ".gltf"):  # glTF is Y-up; the engine's unit box is Z-up
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    return mesh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("meshes", nargs="*", type=Path, help="exported assets (GLB / OBJ) to score beside the ideal shapes")
    parser.add_argument("--prompt", default="a blue cube")
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--noise-levels", type=int, default=12)
    parser.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE_PROMPT)
    parser.add_argument("--w2", type=float, default=0.5, help="negative weight of the csd column (the bundled "
                                                                 "preset's stage 1)")
    parser.add_argument("--per-level", action="store_true", help="also print csd at each noise level")
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    prior = load_prior(PriorConfig(model="bundled"), torch.device("cpu"))
    colour = next((word for word in args.prompt.lower().split() if word in PALETTE), "gray")
    embeddings = prior.encode_prompts([args.prompt, "", args.negative_prompt])
    world = CameraConfig(elevation_deg=(-15.0, 55.0), azimuth_deg=(-180.0, 180.0), distance=(2.5, 3.3),
                         fovy_deg=(22.0, 46.0))
    count = args.views
    cameras = sample_cameras(world, count, torch.Generator().manual_seed(0))
    lighting = sample_lighting(cameras, torch.Generator().manual_seed(1))
    backgrounds = sample_backgrounds(count, torch.Generator().manual_seed(2), "cpu")
    levels = torch.linspace(50, 900, args.noise_levels).long()
    noise = torch.randn(len(levels), count, 3, prior.resolution, prior.resolution,
                        generator=torch.Generator().manual_seed(3))
    albedo = torch.tensor(PALETTE[colour], dtype=torch.float32)
    meshes = {**ideal_shapes(), **{str(path): load_asset(path) for path in args.meshes}}

    print(f"prompt {args.prompt!r}, {count} views, {len(levels)} noise levels (x 1000)")
    print(f"| {'shape':40s} | classifier | negative | csd (w2 {args.w2:g}) | denoise |")
    print(f"|{'-' * 42}|------------|----------|{'-' * 15}|---------|")
    per_level: dict[str, list[float]] = {}
    for name, mesh in meshes.items():
        view = render_gbuffer(torch.from_numpy(normalise_unit_box(mesh.vertices)), torch.tensor(mesh.faces),
                              cameras, 2 * prior.resolution, backend="torch")
        image = shade(albedo.expand(count, *view.mask.shape[1:], 3), view.normal, view.mask, lighting, backgrounds)
        x0 = prior.images_to_model_input(torch.nn.functional.avg_pool2d(image.permute(0, 3, 1, 2), 2))
        classifier = negative = denoise = 0.0
        per_level[name] = []
        for level, eps in zip(levels, noise):
            timesteps = level.repeat(count)
            noisy = prior.add_noise(x0, eps, timesteps)
            predicted = prior.predict_noise(torch.cat([noisy] * 3), timesteps.repeat(3),
                                            embeddings.repeat_interleave(count, 0)).float()
            errors = ((predicted - eps.repeat(3, 1, 1, 1)) ** 2).mean(dim=(1, 2, 3)).reshape(3, count)
            level_classifier = float((errors[1] - errors[0]).mean())
            level_negative = float((errors[1] - errors[2]).mean())
            classifier += level_classifier
            negative += level_negative
            per_level[name].append(1000 * (level_classifier - args.w2 * level_negative))
            denoise += float(errors[0].mean())
        classifier, negative, denoise = (1000 * value / len(levels) for value in (classifier, negative, denoise))
        print(f"| {name[-40:]:40s} | {classifier:10.3f} | {negative:8.3f} | {classifier - args.w2 * negative:13.3f} "
              f"| {denoise:7.3f} |", flush=True)
    if args.per_level:
        print(f"\ncsd (w2 {args.w2:g}) at each noise level t of 1000 (x 1000)")
        print(f"| {'shape':40s} | " + " | ".join(f"{int(t):5d}" for t in levels) + " |")
        print(f"|{'-' * 42}|" + "-------|" * len(levels))
        for name, values in per_level.items():
            print(f"| {name[-40:]:40s} | " + " | ".join(f"{v:5.1f}" for v in values) + " |")


if __name__ == "__main__":
    main()
