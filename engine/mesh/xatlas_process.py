"""`python -m engine.mesh.xatlas_process RESOLUTION PADDING JITTER`: one xatlas unwrap in its own process.

xatlas is native code that can crash (SIGSEGV) on some inputs, which would take the whole engine
down with no result; run here, a crash only ends this process and the engine reports it
(engine.mesh.uv.unwrap). Reads positions (V, 3) float32 and triangles (F, 3) uint32 as two .npy
arrays on stdin, writes the per-corner UVs (F, 3, 2) float32 as one .npy array on stdout.
JITTER > 0 moves every vertex by Gaussian noise of that standard deviation (seeded) before
unwrapping: the layout is for the mesh as given, only xatlas sees the moved vertices.
A failure xatlas reports itself exits with UNWRAP_FAILED and its message on stderr.
"""

from __future__ import annotations

import io
import signal
import sys

import numpy as np
import xatlas

UNWRAP_FAILED = 2
_JITTER_SEED = 0


def unwrap_corner_uvs(positions: np.ndarray, triangles: np.ndarray, resolution: int, padding: int,
                      jitter: float) -> np.ndarray:
    if jitter > 0:
        noise = np.random.default_rng(_JITTER_SEED).normal(scale=jitter, size=positions.shape)
        positions = (positions + noise).astype(np.float32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(positions, dtype=np.float32), np.ascontiguousarray(triangles, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = resolution
    pack.padding = padding
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:
        raise ValueError(f"it produced {atlas.atlas_count} atlases instead of one")
    _vertex_map, new_triangles, uvs = atlas[0]
    # xatlas keeps face order, so split vertex k of face f still maps to the original corner.
    return np.clip(uvs[new_triangles.astype(np.int64)], 0.0, 1.0).astype(np.float32)


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group; the engine decides what a cancel does and ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resolution, padding, jitter = int(argv[0]), int(argv[1]), float(argv[2])
    stream = io.BytesIO(sys.stdin.buffer.read())
    positions = np.load(stream, allow_pickle=False)
    triangles = np.load(stream, allow_pickle=False)
    try:
        corner_uvs = unwrap_corner_uvs(positions, triangles, resolution, padding, jitter)
    except (RuntimeError, ValueError) as error:
        sys.stderr.write(str(error))
        return UNWRAP_FAILED
    output = io.BytesIO()
    np.save(output, corner_uvs, allow_pickle=False)
    sys.stdout.buffer.write(output.getvalue())
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
