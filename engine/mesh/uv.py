"""UV layouts: keep the user's when they are usable, otherwise make one with xatlas.

xatlas runs in a child process (engine.mesh.xatlas_process): it is native code that crashes on
some meshes (SIGSEGV on regular icospheres of 81,920 triangles and more), and a crash there must
not take the job down unseen. A crashed unwrap is tried once more with the vertices moved by
1e-4 of the mesh's size, which avoids that crash; a cancel ends the child at once.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import BadInputError, EngineError
from ..job.progress import CancelToken
from .types import TriangleMesh
from .xatlas_process import UNWRAP_FAILED

log = logging.getLogger(__name__)

# xatlas takes about a minute per few hundred thousand triangles on a laptop CPU.
SLOW_UNWRAP_TRIANGLES = 300_000
# Gutter between islands, in texels of the target texture: enough that bilinear filtering and
# the first mip levels never mix two islands (seam padding fills the gutter anyway).
_GUTTER_TEXELS_PER_1K = 4
_MIN_GUTTER_TEXELS = 2
# UVs this far outside [0, 1] are still treated as inside (float noise from exporters).
_UV_RANGE_TOLERANCE = 1e-4
# A layout whose UV triangles together cover less than this area is collapsed (e.g. all zeros).
_MIN_TOTAL_UV_AREA = 1e-8
# xatlas 0.0.11 crashes in its pack step (pack::Atlas::addCharts, a chart's bounding box) on perfectly
# regular meshes; moving each vertex by this fraction of the bounding-box diagonal breaks the
# regularity, and the layout fits the unmoved mesh as well. 1e-5 absolute is too little.
CRASH_RETRY_JITTER = 1e-4
# How often a waiting unwrap looks at the cancel file.
_CANCEL_POLL_S = 0.1
_UNWRAP_HINT = ("Simplify the mesh (e.g. Blender's Decimate modifier), or unwrap it in Blender "
                "(UV > Smart UV Project) and run again without --reunwrap.")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

WarningSink = Callable[[str], None]


def unwrap(mesh: TriangleMesh, resolution_hint: int = 1024, cancel: CancelToken | None = None,
           on_warning: WarningSink | None = None) -> TriangleMesh:
    """A new UV layout for `mesh`, packed for a square texture of about `resolution_hint` texels.

    Positions and triangles are returned unchanged (same vertices, same order); xatlas' seam
    splits are expressed as per-corner UVs, which is what the engine and Blender store.
    A slow unwrap and a retry after a crash are reported through `on_warning` (default: this
    module's logger); `cancel` is checked while xatlas works.
    """
    warn = on_warning or log.warning
    if mesh.num_triangles > SLOW_UNWRAP_TRIANGLES:
        warn(f"Unwrapping {mesh.num_triangles:,} triangles can take several minutes; "
             "unwrap in Blender first (UV > Smart UV Project) to skip this.")
    gutter = max(_MIN_GUTTER_TEXELS, math.ceil(_GUTTER_TEXELS_PER_1K * resolution_hint / 1024))
    extent = np.ptp(np.asarray(mesh.positions, dtype=np.float64), axis=0)
    jitters = (0.0, CRASH_RETRY_JITTER * float(np.linalg.norm(extent)))
    for attempt, jitter in enumerate(jitters):
        returncode, output, message = _run_xatlas_process(mesh, int(resolution_hint), gutter, jitter, cancel)
        if returncode == 0:
            corner_uvs = np.load(io.BytesIO(output), allow_pickle=False)
            if corner_uvs.shape != (mesh.num_triangles, 3, 2):
                raise EngineError(f"The unwrap returned UVs of shape {corner_uvs.shape} for "
                                  f"{mesh.num_triangles} triangles.", "This is a bug in the engine; please report it.")
            return TriangleMesh(mesh.positions, mesh.triangles, corner_uvs)
        if returncode == UNWRAP_FAILED:
            raise BadInputError(f"Automatic UV unwrapping failed: {message or 'xatlas gave no reason'}.", _UNWRAP_HINT)
        if attempt + 1 < len(jitters):
            warn(f"The UV unwrapper (xatlas) crashed on this mesh ({_describe_exit(returncode)}); "
                 "trying again with the vertices moved slightly for the unwrap only.")
    raise BadInputError(f"Automatic UV unwrapping crashed on this mesh of {mesh.num_triangles:,} triangles "
                        f"(xatlas {_describe_exit(returncode)}), also with the vertices moved slightly.", _UNWRAP_HINT)


def _run_xatlas_process(mesh: TriangleMesh, resolution: int, padding: int, jitter: float,
                        cancel: CancelToken | None) -> tuple[int, bytes, str]:
    """Unwrap in engine.mesh.xatlas_process: (its exit code, its stdout, its stderr)."""
    payload = io.BytesIO()
    np.save(payload, np.ascontiguousarray(mesh.positions, dtype=np.float32), allow_pickle=False)
    np.save(payload, np.ascontiguousarray(mesh.triangles, dtype=np.uint32), allow_pickle=False)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_PACKAGE_ROOT), env.get("PYTHONPATH"))))
    command = [sys.executable, "-m", f"{__package__}.xatlas_process", str(resolution), str(padding), repr(jitter)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=env)
    streams: list[bytes] = []
    # communicate() in a thread: this (main) thread stays free to take a signal and to poll the cancel file.
    exchange = threading.Thread(target=lambda: streams.extend(process.communicate(payload.getvalue())), daemon=True)
    exchange.start()
    try:
        while exchange.is_alive():
            if cancel is not None:
                cancel.check()
            exchange.join(_CANCEL_POLL_S)
    finally:
        # A cancel (a signal raises Cancelled here) or any other exit ends the unwrap at once.
        if process.poll() is None:
            process.kill()
        exchange.join()
    output, errors = streams
    return process.returncode, output, errors.decode("utf-8", "replace").strip()


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"ended by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"ended by signal {-returncode}"
    return f"exit code {returncode}"


def ensure_uvs(mesh: TriangleMesh, reunwrap: bool = False, resolution_hint: int = 1024,
               on_warning: WarningSink | None = None, cancel: CancelToken | None = None) -> tuple[TriangleMesh, bool]:
    """The mesh with a usable UV layout, and whether a new one was made.

    The user's UVs are kept unless `reunwrap` is set or they cannot hold one texture: missing,
    NaN/infinite, outside [0, 1] (UDIM tiles or repeating UVs), or collapsed to zero area.
    Every reason to re-unwrap, and a slow unwrap, is reported through `on_warning`
    (default: this module's logger) before the work starts.
    """
    warn = on_warning or log.warning
    if not reunwrap:
        problem = uv_problem(mesh.corner_uvs)
        if problem is None:
            return mesh, False
        if mesh.corner_uvs is not None:
            warn(f"The mesh's UVs are not usable ({problem}); making a new UV layout.")
    return unwrap(mesh, resolution_hint, cancel, warn), True


def uv_problem(corner_uvs: np.ndarray | None) -> str | None:
    """Why these per-corner UVs cannot hold a single texture, or None if they can."""
    if corner_uvs is None:
        return "the mesh has no UVs"
    uvs = np.asarray(corner_uvs, dtype=np.float64)
    finite = np.isfinite(uvs)
    if not finite.all():
        return f"{int((~finite.all(axis=(1, 2))).sum()):,} triangles have NaN or infinite UVs"
    if uvs.min() < -_UV_RANGE_TOLERANCE or uvs.max() > 1.0 + _UV_RANGE_TOLERANCE:
        return (f"UVs span [{uvs.min():.2f}, {uvs.max():.2f}], outside 0..1 "
                "(UDIM tiles or repeating textures are not supported)")
    edge_a, edge_b = uvs[:, 1] - uvs[:, 0], uvs[:, 2] - uvs[:, 0]
    total_area = 0.5 * np.abs(edge_a[:, 0] * edge_b[:, 1] - edge_a[:, 1] * edge_b[:, 0]).sum()
    if total_area < _MIN_TOTAL_UV_AREA:
        return "all UV triangles have zero area"
    return None
