#!/usr/bin/env python3
"""Build the installable Blender extension: dist/csd_blender-<version>.zip.

The zip holds the add-on (csd_blender/) with the repository's blender_manifest.toml at the zip's
root, as Blender expects,
the engine's source vendored at engine_src/engine/ (the add-on starts
``python -m engine run JOB`` with PYTHONPATH pointing there), and requirements-engine.txt
for the preferences' "Set up engine" button.

    python build.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON = ROOT / "csd_blender"
ENGINE = ROOT / "engine"
MANIFEST = ROOT / "blender_manifest.toml"
REQUIREMENTS = ROOT / "requirements-engine.txt"
SKIP_DIRS = {"__pycache__", ".pytest_cache", "tests"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(base: Path):
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix not in SKIP_SUFFIXES:
            yield path, rel


def manifest() -> dict:
    with open(MANIFEST, "rb") as handle:
        return tomllib.load(handle)


def build(out_dir: Path) -> Path:
    meta = manifest()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{meta['id']}-{meta['version']}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(MANIFEST, MANIFEST.name)
        for path, rel in _files(ADDON):
            if rel.parts[0] == "engine_src":
                continue  # vendored below from the real engine, never a stale copy
            archive.write(path, rel.as_posix())
        if not (ENGINE / "__init__.py").is_file():
            sys.exit(f"build.py: the engine's source is missing at {ENGINE}")
        for path, rel in _files(ENGINE):
            archive.write(path, f"engine_src/engine/{rel.as_posix()}")
        if REQUIREMENTS.is_file():
            archive.write(REQUIREMENTS, "requirements-engine.txt")
    tmp.replace(target)
    return target


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    args = parser.parse_args(argv)
    target = build(args.out)
    with zipfile.ZipFile(target) as archive:
        count = len(archive.namelist())
    print(f"{target} ({count} files, {target.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
