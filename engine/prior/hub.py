"""Models from the Hugging Face Hub: fetch only the files the engine loads, say how much that
is before it starts, report progress as events, stop when the job is cancelled; and tell which
models are on this machine.

A diffusers repository holds much the engine never reads: fp32 copies beside fp16 weights,
.bin, ONNX, Flax and OpenVINO exports, EMA and full single-file checkpoints at its root, a
safety checker. Fetched whole that is tens of GB for SD 1.5 and IF. Here a pipeline's files are
model_index.json plus, for each component the engine loads, its configs, tokenizer files and one
set of weights (the fp16 safetensors variant where there is one); a single-model repository (a
ControlNet, a VAE) gives its config and one set of weights. They land in huggingface_hub's
usual cache, so the offline path and other tools find them there.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import shlex
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import BUNDLED_MODEL, CONTROLNET_CONDITIONS, DEFAULT_LATENT_MODEL
from ..errors import ModelNotFoundError, first_line
from ..job.progress import CancelToken, ProgressReporter, format_bytes
from .families import (BUNDLED_PRIOR_DIR, FAMILY_CONTROLNETS, FAMILY_NAMES, FAMILY_USES, Family,
                       describe_model_folder, read_json)

# Components of a pipeline the engine never loads: fetching them would only cost disk.
NEVER_LOADED = frozenset({"safety_checker", "feature_extractor", "watermarker", "image_encoder"})
PREFERRED_VARIANT = "fp16"
# Weights the loaders read, best first; both come as one file or as shards with an index.
WEIGHT_FORMATS = ("safetensors", "bin")
WEIGHT_STEMS = frozenset({"diffusion_pytorch_model", "model", "pytorch_model"})
# Configs, tokenizer vocabularies and merges, sentencepiece models.
SUPPORT_SUFFIXES = (".json", ".txt", ".model")
_SHARD = re.compile(r"-\d+-of-\d+")
_NAME_WORDS = frozenset({*WEIGHT_FORMATS, "index", "json"})


def weights_kind(name: str) -> tuple[str, str | None] | None:
    """(format, variant) of a weights file or weights index the loaders read, else None.

    diffusion_pytorch_model.fp16.safetensors -> ("safetensors", "fp16"); model-00001-of-00002.safetensors
    -> ("safetensors", None); model.safetensors.index.fp16.json -> ("safetensors", "fp16");
    openvino_model.bin, model.onnx, flax_model.msgpack -> None.
    """
    stem, *words = _SHARD.sub("", name).split(".")
    formats = [word for word in words if word in WEIGHT_FORMATS]
    if stem not in WEIGHT_STEMS or not formats:
        return None
    return formats[0], ".".join(word for word in words if word not in _NAME_WORDS) or None


# Fetch the fp16 copy where a repository has one (half the bytes; the engine runs in fp16 on GPUs);
# load the plain weights where a folder has both (a whole repository fetched by other means).
FETCH_VARIANTS = (PREFERRED_VARIANT, None)
LOAD_VARIANTS = (None, PREFERRED_VARIANT)


def _pick_weights(names: Iterable[str], variants: tuple[str | None, ...]) -> tuple[list[str], set]:
    """The weights files (and index) of one folder in the first format and of the first of `variants`
    it has, and every (format, variant) found there."""
    kinds = {name: kind for name in names if (kind := weights_kind(name)) is not None}
    for weight_format in WEIGHT_FORMATS:
        present = {variant for (fmt, variant) in kinds.values() if fmt == weight_format}
        for variant in variants:
            if variant in present:
                return [name for name, kind in kinds.items() if kind == (weight_format, variant)], set(kinds.values())
    return [], set(kinds.values())


def weights_variant(folder: Path) -> str | None:
    """The `variant` for from_pretrained on `folder`: None for plain weights, "fp16" when the folder
    only has the fp16 copy (what a download fetches)."""
    if not folder.is_dir():
        return None
    chosen, _ = _pick_weights((path.name for path in folder.iterdir()), LOAD_VARIANTS)
    return weights_kind(chosen[0])[1] if chosen else None


def load_weights(model_class, folder: Path, subfolder: str | None = None, dtype=None):
    """`model_class.from_pretrained` on a local folder (or one of its component subfolders), in
    `dtype`, with the weights variant that folder holds."""
    location = {"subfolder": subfolder} if subfolder else {}
    return model_class.from_pretrained(folder, torch_dtype=dtype, variant=weights_variant(folder / (subfolder or "")),
                                       **location)


def components_to_load(index: dict) -> list[str]:
    """The component folders a pipeline's model_index.json lists, but those the engine never loads.

    Which of them a model's family really loads is families.describe_model_folder's answer, which
    needs their configs: this is the set whose configs are read to ask it.
    """
    return sorted(name for name, value in index.items()
                  if not name.startswith("_") and name not in NEVER_LOADED
                  and isinstance(value, list) and len(value) == 2 and all(value))


def select_files(paths: Iterable[str], components: Iterable[str] | None, model: str) -> tuple[list[str], list[str]]:
    """(configs and tokenizer files, weights) of a repository that the engine loads.

    `components`: a pipeline's component folders (model_index.json is then a config too); None
    for a single-model repository (a ControlNet, a VAE), whose files are at its root.
    """
    by_folder: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        folder, _, name = path.rpartition("/")
        by_folder[folder].append(name)
    support, weights = (["model_index.json"], []) if components is not None else ([], [])
    for folder in components if components is not None else [""]:
        names = by_folder.get(folder)
        where = f"{model}/{folder}" if folder else model
        if not names:
            raise ModelNotFoundError(f"{where} is listed in model_index.json but the repository has no such folder.",
                                     "Use a complete diffusers repository of a supported family.")
        prefix = f"{folder}/" if folder else ""
        chosen, found = _pick_weights(names, FETCH_VARIANTS)
        if found and not chosen:
            variants = ", ".join(sorted(f"{variant or 'plain'} {fmt}" for fmt, variant in found))
            raise ModelNotFoundError(f"{where} has no weights the engine can load (only: {variants}).",
                                     "Use a repository with safetensors (or .bin) weights, plain or fp16.")
        # A component folder's configs and tokenizer files; at a repository's root only its config
        # (the rest there is model cards, pictures and other tools' files).
        support += [prefix + name for name in sorted(names)
                    if weights_kind(name) is None and (name.endswith(SUPPORT_SUFFIXES) if folder
                                                       else name == "config.json")]
        weights += [prefix + name for name in sorted(chosen)]
    return support, weights


def _loaded_components(folder: Path, index: dict) -> list[str]:
    """The components the engine loads from the pipeline in `folder`: its family's, once its configs
    are there; until then (a partial download) every component model_index.json lists."""
    try:
        return list(describe_model_folder(folder).components)
    except ModelNotFoundError:
        return components_to_load(index)


def missing_parts(folder: Path) -> list[str]:
    """What the engine would still need from a downloaded model folder ([] when it is complete)."""
    index_path = folder / "model_index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return ["model_index.json (unreadable)"]
        return [name for name in _loaded_components(folder, index) if not _component_complete(folder / name)]
    if (folder / "config.json").is_file():
        return [] if _component_complete(folder) else ["weights"]
    return ["model_index.json or config.json"]


def _component_complete(folder: Path) -> bool:
    """A config and, for a model (it has config.json; tokenizers and schedulers do not), all its weights."""
    if not folder.is_dir() or not any(path.suffix == ".json" for path in folder.iterdir()):
        return False
    if not (folder / "config.json").is_file():
        return True
    chosen, _ = _pick_weights((path.name for path in folder.iterdir()), LOAD_VARIANTS)
    indexes = [name for name in chosen if ".index." in name]
    if not indexes:  # one file, or shards whose index (fetched after them) is missing
        return bool(chosen) and not any(_SHARD.search(name) for name in chosen)
    try:  # sharded: every shard the index names must be there
        shards = set(json.loads((folder / indexes[0]).read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, KeyError, AttributeError, json.JSONDecodeError):
        return False
    return all((folder / shard).is_file() for shard in shards)


def is_hub_id(model: str) -> bool:
    """Whether `model` can name a Hugging Face repository ("owner/name")."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def local_snapshot(model: str, cache_dir: str | None) -> Path | None:
    """The cached folder of a hub model's newest downloaded revision, None when it was never fetched."""
    from huggingface_hub import try_to_load_from_cache

    if not is_hub_id(model):
        return None
    for name in ("model_index.json", "config.json"):
        cached = try_to_load_from_cache(model, name, cache_dir=cache_dir)
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def download_command(model: str, cache_dir: str | None) -> str:
    """The command that fetches only what the engine needs of `model` into the cache it reads."""
    command = f"python -m engine models download {shlex.quote(model)} --allow-download"
    return command + (f" --cache-dir {shlex.quote(str(cache_dir))}" if cache_dir else "")


def not_on_this_machine(model: str, cache_dir: str | None, detail: str) -> ModelNotFoundError:
    from huggingface_hub import is_offline_mode

    fetch = f"fetch only the files the engine needs with `{download_command(model, cache_dir)}`"
    fetch = f"Unset HF_HUB_OFFLINE, then {fetch}" if is_offline_mode() else "F" + fetch[1:]
    return ModelNotFoundError(
        f"Model {model!r} is not on this machine ({detail}).",
        f"{fetch} (or run the job with --allow-download; in Blender, allow online access), or pass --model with "
        "a local diffusers folder, or --model bundled for the small offline prior.")


@dataclass(frozen=True)
class DownloadPlan:
    model: str
    sizes: dict[str, int]  # every file the engine loads -> bytes
    missing: tuple[str, ...]  # those not yet on this machine, in download order

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    @property
    def fetch_bytes(self) -> int:
        return sum(self.sizes[name] for name in self.missing)


@dataclass(frozen=True)
class DownloadListener:
    """Where a download reports: the running job's (or the CLI's) progress and cancel."""

    reporter: ProgressReporter
    cancel: CancelToken


_LISTENER: contextvars.ContextVar[DownloadListener | None] = contextvars.ContextVar("download_listener", default=None)


@contextlib.contextmanager
def report_downloads_to(reporter: ProgressReporter, cancel: CancelToken) -> Iterator[None]:
    """Downloads started inside (by load_prior, deep in a pipeline) report to `reporter` and stop on `cancel`."""
    token = _LISTENER.set(DownloadListener(reporter, cancel))
    try:
        yield
    finally:
        _LISTENER.reset(token)


@contextlib.contextmanager
def _hub_errors(model: str) -> Iterator[None]:
    """huggingface_hub's failures as messages saying what to do."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        yield
    except GatedRepoError as exc:
        raise ModelNotFoundError(f"{model} is gated: its files need an accepted licence and a login.",
                                 f"Accept the licence at https://huggingface.co/{model} and log in with "
                                 "`hf auth login`, then try again.") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"There is no model {model!r} on the Hugging Face Hub (or it is private).",
                                 "Check the id; for a private model log in with `hf auth login`.") from exc
    except (httpx2.HTTPError, OSError) as exc:
        raise ModelNotFoundError(f"Could not download {model}: {first_line(exc)}.",
                                 "Check the internet connection and the free disk space, then try again; "
                                 "finished files are kept.") from exc


def plan_download(model: str, cache_dir: str | None) -> DownloadPlan:
    """List the repository (one request) and pick what to fetch. A pipeline's configs and tokenizer
    files (a few kB) are fetched first: its family, which they tell, decides which components the
    engine loads, and an unsupported model is refused before any weights are fetched."""
    from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache

    with _hub_errors(model):
        info = HfApi().model_info(model, files_metadata=True)
        sizes = {sibling.rfilename: int(sibling.size or 0) for sibling in info.siblings or []}
        if "model_index.json" in sizes:
            index_path = Path(hf_hub_download(model, "model_index.json", cache_dir=cache_dir))
            configs, _ = select_files(sizes, components_to_load(read_json(index_path, model)), model)
            for name in configs:
                if not isinstance(try_to_load_from_cache(model, name, cache_dir=cache_dir), str):
                    hf_hub_download(model, name, cache_dir=cache_dir)
            components = describe_model_folder(index_path.parent, model).components
        elif "config.json" in sizes:
            components = None
        else:
            raise ModelNotFoundError(f"{model} is not a diffusers model (no model_index.json or config.json).",
                                     "Use a diffusers-format repository of a supported family, or a local folder.")
    support, weights = select_files(sizes, components, model)
    missing = tuple(name for name in support + weights
                    if not isinstance(try_to_load_from_cache(model, name, cache_dir=cache_dir), str))
    return DownloadPlan(model, {name: sizes[name] for name in support + weights}, missing)


class _FileProgress:
    """huggingface_hub's progress bars for one file, read as bytes done; nothing is drawn.

    A plain HTTP download makes one bar; a Xet download makes two (bytes received, bytes
    written), so the file's progress is the furthest of its bars, never their sum.
    """

    def __init__(self, on_bytes):
        self.on_bytes = on_bytes
        self.counts: dict[int, int] = {}

    def bar_class(self) -> type:
        from tqdm import tqdm

        progress = self

        class SilentBar(tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "disable": True})

            def update(self, n=1):
                self.n += n or 0
                progress.counts[id(self)] = self.n
                progress.on_bytes(max(progress.counts.values()))

        return SilentBar


def download(plan: DownloadPlan, cache_dir: str | None, listener: DownloadListener) -> None:
    """Fetch the plan's missing files one by one, reporting progress; a cancel stops between and
    within files (a signal at once, the cancel file at the next chunk read on this thread).
    An interrupted file is resumed by the next download."""
    from huggingface_hub import hf_hub_download

    reporter, cancel = listener.reporter, listener.cancel
    reporter.download_plan(plan.model, len(plan.sizes), plan.total_bytes, len(plan.missing), plan.fetch_bytes)
    done = 0
    for name in plan.missing:
        cancel.check()
        size = plan.sizes[name]

        def on_bytes(file_done: int, name=name, size=size, done=done) -> None:
            if threading.current_thread() is threading.main_thread():
                cancel.check()
            file_done = min(file_done, size)
            reporter.download(plan.model, name, file_done, size, done + file_done, plan.fetch_bytes)

        reporter.download(plan.model, name, 0, size, done, plan.fetch_bytes, force=True)
        with _hub_errors(plan.model):
            hf_hub_download(plan.model, name, cache_dir=cache_dir, tqdm_class=_FileProgress(on_bytes).bar_class())
        done += size
        reporter.download(plan.model, name, size, size, done, plan.fetch_bytes, force=True)


def hub_model_folder(model: str, cache_dir: str | None, allow_download: bool) -> Path:
    """The local folder of hub model `model`, fetching what is missing when downloads are allowed."""
    from huggingface_hub import is_offline_mode

    if not is_hub_id(model):
        raise ModelNotFoundError(f"{model!r} is neither a folder on this machine nor a Hugging Face id (owner/name).",
                                 "Check the spelling, or pass a local diffusers folder, or --model bundled.")
    folder = local_snapshot(model, cache_dir)
    missing = missing_parts(folder) if folder is not None else None
    if missing == []:
        return folder
    detail = "not in the Hugging Face cache" if folder is None else f"partly downloaded: {', '.join(missing)} missing"
    if is_offline_mode() or not allow_download:
        raise not_on_this_machine(model, cache_dir, detail + ("; HF_HUB_OFFLINE is set" if is_offline_mode()
                                                             else "; downloads are off"))
    listener = _LISTENER.get() or DownloadListener(ProgressReporter(), CancelToken())
    download(plan_download(model, cache_dir), cache_dir, listener)
    folder = local_snapshot(model, cache_dir)
    missing = missing_parts(folder) if folder is not None else ["every file"]
    if missing:
        raise ModelNotFoundError(f"{model} was downloaded but {', '.join(missing)} is still missing.",
                                 "The repository may have changed during the download: run it again.")
    return folder


# Each family's reference checkpoints (the README's support table): `models list` always shows them.
REFERENCE_MODELS = {
    DEFAULT_LATENT_MODEL: Family.SD1,
    "stabilityai/stable-diffusion-2-1-base": Family.SD2,
    "stabilityai/stable-diffusion-2-1": Family.SD2,  # 768-v
    "stabilityai/stable-diffusion-xl-base-1.0": Family.SDXL,
    "DeepFloyd/IF-I-XL-v1.0": Family.IF_STAGE_I,
    "DeepFloyd/IF-I-L-v1.0": Family.IF_STAGE_I,
    "DeepFloyd/IF-I-M-v1.0": Family.IF_STAGE_I,
}
SDXL_FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"  # sdxl.FP16_FIX_VAE, named here without importing PyTorch


def known_models() -> dict[str, str]:
    """Hub id -> what the engine uses it for, for every family's reference checkpoints and ControlNets."""
    known = {model: f"{FAMILY_NAMES[family]}: {', '.join(FAMILY_USES[family])}"
             for model, family in REFERENCE_MODELS.items()}
    for family, controlnets in FAMILY_CONTROLNETS.items():
        for condition in CONTROLNET_CONDITIONS:
            if controlnets is not None and controlnets.for_condition(condition):
                known[controlnets.for_condition(condition)] = f"{condition} ControlNet for {FAMILY_NAMES[family]}"
    known[SDXL_FP16_FIX_VAE] = "SDXL's VAE made safe in fp16 (used when present)"
    return known


@dataclass(frozen=True)
class LocalModel:
    """One line of `models list`."""

    model: str
    use: str  # what the engine uses it for
    local: bool  # some of it is on this machine
    complete: bool  # everything the engine loads is there
    size_bytes: int  # on disk
    path: str | None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"model": self.model, "use": self.use, "local": self.local, "complete": self.complete,
                "size_bytes": self.size_bytes, "size": format_bytes(self.size_bytes), "path": self.path,
                "missing": list(self.missing)}


def size_on_disk(folder: Path) -> int:
    """Bytes of the files in `folder`, each blob once (cache snapshots are links into blobs/)."""
    seen: set[str] = set()
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            target = os.path.realpath(os.path.join(root, name))
            if target not in seen and os.path.isfile(target):
                seen.add(target)
                total += os.path.getsize(target)
    return total


def describe_use(folder: Path) -> str:
    """What the engine can do with the pipeline in `folder`, from its configs."""
    try:
        description = describe_model_folder(folder)
    except ModelNotFoundError as exc:
        return f"not usable: {exc.message}"
    return f"{description.label}: {', '.join(description.uses)}"


def describe_local(model: str, use: str | None, cache_dir: str | None) -> LocalModel:
    """`model` (hub id, folder or "bundled") as found on this machine; `use` None: told from its configs."""
    path = Path(model).expanduser()
    if model == BUNDLED_MODEL:
        folder = BUNDLED_PRIOR_DIR
    else:
        folder = path if path.is_dir() else local_snapshot(model, cache_dir)
    if folder is None:
        return LocalModel(model, use or "unknown (not on this machine)", False, False, 0, None)
    missing = tuple(missing_parts(folder))
    if use is None:
        use = describe_use(folder) if (folder / "model_index.json").is_file() else "one model (a ControlNet, a VAE)"
    return LocalModel(model, use, True, not missing, size_on_disk(folder), str(folder), missing)


def cached_pipelines(cache_dir: str | None) -> list[str]:
    """Ids of the diffusers pipelines (they have model_index.json) in the Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        repos = scan_cache_dir(cache_dir).repos
    except CacheNotFound:
        return []
    return sorted(repo.repo_id for repo in repos if repo.repo_type == "model"
                  and (folder := local_snapshot(repo.repo_id, cache_dir)) is not None
                  and (folder / "model_index.json").is_file())


def list_models(extra: Iterable[str], cache_dir: str | None) -> list[LocalModel]:
    """Every family's reference checkpoints and ControlNets, then `extra` models (hub ids or
    folders), then the other pipelines in the Hugging Face cache."""
    known = known_models()
    entries = [describe_local(model, use, cache_dir) for model, use in known.items()]
    others = [model for model in dict.fromkeys(extra) if model not in known]
    others += [model for model in cached_pipelines(cache_dir) if model not in known and model not in others]
    return entries + [describe_local(model, None, cache_dir) for model in others]
