"""Loading a model's tokenizer with an error that names the real cause.

DeepFloyd IF's T5 tokenizer is a sentencepiece model (tokenizer/spiece.model, no tokenizer.json).
transformers converts it with the `sentencepiece` and `protobuf` packages; when either is missing
it falls back to reading the file as a tiktoken vocabulary and reports that `tiktoken` is missing,
which sends users the wrong way. The packages are checked first, so the message names them.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import ModelNotFoundError

# Python modules transformers needs to read a sentencepiece tokenizer, and their pip packages.
SENTENCEPIECE_MODULES = {"sentencepiece": "sentencepiece", "google.protobuf": "protobuf"}


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def is_sentencepiece_tokenizer(folder: Path) -> bool:
    """A slow-only sentencepiece tokenizer: a *.model file and no tokenizer.json to load instead."""
    return any(folder.glob("*.model")) and not (folder / "tokenizer.json").is_file()


def load_tokenizer(folder: Path, subfolder: str, name: str):
    """The tokenizer in `folder`/`subfolder` (AutoTokenizer), or a ModelNotFoundError saying why not."""
    from transformers import AutoTokenizer

    path = folder / subfolder
    if not path.is_dir():
        raise ModelNotFoundError(f"{name} has no {subfolder}/ folder.", "Download the model again.")
    if is_sentencepiece_tokenizer(path):
        missing = [package for module, package in SENTENCEPIECE_MODULES.items() if not importable(module)]
        if missing:
            packages = " ".join(missing)
            raise ModelNotFoundError(
                f"{name}'s tokenizer is a sentencepiece model ({subfolder}/{next(path.glob('*.model')).name}), "
                f"and reading it needs the Python package(s) {packages}, which are not installed.",
                f"Install them into the engine's Python (`python -m pip install {packages}`), or run "
                "`bash scripts/setup.sh` again: requirements-engine.txt lists them.")
    try:
        return AutoTokenizer.from_pretrained(folder, subfolder=subfolder)
    except (OSError, ValueError, ImportError, KeyError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"{name}'s tokenizer ({path}) cannot be loaded: {reason}",
                                 "Download the model again, or check that its tokenizer files are complete.") from exc
