"""Job folders on disk: creating, writing (job.json, mesh.npz, an edit job's source), moving and pruning them."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import unicodedata
from pathlib import Path
from typing import Any

from . import protocol


def slug(text: str, limit: int = 32) -> str:
    """A short, file-system-safe label made from a prompt or object name (keeps letters of any script)."""
    text = unicodedata.normalize("NFKC", text or "").strip().lower()
    text = re.sub(r"[^\w]+", "-", text, flags=re.UNICODE).strip("-_")
    return (text[:limit].rstrip("-_")) or "job"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary name and rename it, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, path)


def create_job_dir(root: Path, task: str, label: str) -> Path:
    """A new, empty, uniquely named job folder under ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{task}-{slug(label)}"
    for index in range(1000):
        candidate = root / (base if index == 0 else f"{base}-{index}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise OSError(f"Could not create a job folder under {root}")


def write_job(job_dir: Path, task: str, settings: dict, *, mesh: str | None = None,
              source: str | None = None, region: str | None = None, keep_texture: str | None = None,
              output: str = protocol.OUTPUT_DIR) -> Path:
    """Write job.json. ``mesh``, ``source``, ``region`` and ``keep_texture`` are paths relative to the job folder."""
    if task not in protocol.TASKS:
        raise ValueError(f"unknown task {task!r}")
    job: dict[str, Any] = {"protocol": protocol.PROTOCOL, "task": task, "output": output, "settings": settings}
    for key, value in (("mesh", mesh), ("source", source), ("region", region), ("keep_texture", keep_texture)):
        if value is not None:
            if Path(value).is_absolute() or ".." in Path(value).parts:
                raise ValueError(f"{key} must be relative to the job folder: {value!r}")
            job[key] = Path(value).as_posix()
    path = Path(job_dir) / protocol.JOB_FILE
    write_json_atomic(path, job)
    return path


def write_mesh_npz(path: Path, positions, triangles, corner_uvs=None, up_axis: str = "Z") -> Path:
    """The protocol's mesh.npz: positions (V,3) float32, triangles (F,3) int32, corner_uvs (F,3,2)."""
    import numpy as np

    positions = np.ascontiguousarray(positions, dtype=np.float32).reshape(-1, 3)
    triangles = np.ascontiguousarray(triangles, dtype=np.int32).reshape(-1, 3)
    arrays = {"positions": positions, "triangles": triangles, "up_axis": np.array(up_axis)}
    if corner_uvs is not None:
        arrays["corner_uvs"] = np.ascontiguousarray(corner_uvs, dtype=np.float32).reshape(-1, 3, 2)
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def link_or_copy_tree(src: Path, dst: Path) -> Path:
    """Copy a folder, hard-linking files where the file system allows (fast, no extra space).

    Edit jobs get their source this way: the engine only reads inside its job folder, so a
    symbolic link would point outside it; a hard link is a real entry inside it. A symbolic link
    in ``src`` is copied as a link, never as the file it names, so the engine sees (and refuses) it.
    """
    src, dst = Path(src), Path(dst)

    def _copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)
        return b

    shutil.copytree(src, dst, copy_function=_copy, symlinks=True)
    return dst


def move_tree(src: Path, dst: Path) -> Path:
    """Move a folder (rename when on the same disk), creating dst's parent."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
    return dst


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def prune_job_dirs(root: Path, keep: int = 10) -> list[Path]:
    """Remove all but the ``keep`` most recent job folders left behind (failed, cancelled, kept)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for path in dirs[keep:]:
        remove_tree(path)
        removed.append(path)
    return removed
