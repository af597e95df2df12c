"""The output-folder transaction: a reader of an output folder sees one run's whole set of files.

A run never writes into the set that readers see. It locks the folder, writes its files into a
fresh hidden folder inside it (`.partial-<pid>`, so the paths of live previews stay inside the
output folder), and at its end swaps that folder in place of the old set with renames. Every
run that got the lock publishes its set this way, ok, error or cancelled alike: result.json
always describes the files beside it. The lock (`.<name>.lock` beside the folder, an OS lock,
so a killed run's lock goes with it) refuses a second run on the same folder. Whatever a killed
run left (its partial folder, a swap it did not finish, `*.tmp-<pid>` files) is cleaned up or
completed by the next run that takes the lock.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO

from ..errors import BadInputError, OutputError
from ..files import ensure_output_dir
from .paths import open_inside

RESULT_FILE = "result.json"
PARTIAL_PREFIX = ".partial-"
MAX_RESULT_BYTES = 1 << 20  # a result.json is a few kB; only its status is read
OUTPUT_HINT = "Choose another output folder, or fix its permissions and free space."


class OutputFolder:
    """One run's hold on an output folder: `open()` (lock, clean up, fresh partial folder to write
    into), `publish()` (swap the partial folder in), `close()` (drop what was not published, unlock)."""

    def __init__(self, path: str | Path):
        self.path = Path(os.path.abspath(path))
        self.partial = self.path / f"{PARTIAL_PREFIX}{os.getpid()}"
        self._lock: IO[bytes] | None = None

    @property
    def is_open(self) -> bool:
        return self._lock is not None

    def _sibling(self, kind: str, pid: int | str = "") -> Path:
        return self.path.parent / f".{self.path.name}.{kind}{pid}"

    def open(self) -> Path:
        """Lock the folder and return the empty partial folder this run writes into."""
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise OutputError(f"Cannot write to the output folder {self.path}: it is a "
                              f"{'link' if self.path.is_symlink() else 'file'}, not a folder.", OUTPUT_HINT)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _lock_file(self._sibling("lock"))
            if self._lock is None:
                raise OutputError(f"Another engine run is writing the output folder {self.path}.",
                                  "Wait for it to finish or cancel it, or choose another output folder.")
        except OSError as error:
            raise OutputError(f"Cannot write to the output folder {self.path}: {error.strerror or error}.",
                              OUTPUT_HINT) from error
        try:
            self._finish_interrupted_swap()
            ensure_output_dir(self.path)
            self._refuse_foreign_files()
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir()
        except OSError as error:
            self.close()
            raise OutputError(f"Cannot write to the output folder {self.path}: {error.strerror or error}.",
                              OUTPUT_HINT) from error
        except BaseException:
            self.close()
            raise
        return self.partial

    def holds_finished_set(self) -> bool:
        """Whether the published set is a finished run's (its result.json says ok)."""
        try:
            require_ok_result(self.path, "The output folder")
        except BadInputError:
            return False
        return True

    def carry_over(self, names: tuple[str, ...]) -> None:
        """Start the partial folder with these files of the previous attempt (a resumed run reads
        and continues them, and a resumed run that fails still publishes them): from the newest
        partial folder a killed run left, else from the published set. Hard links where possible."""
        for source in attempts(self.path, exclude=self.partial):
            found = [name for name in names if (source / name).is_file() and not (source / name).is_symlink()]
            if found:
                for name in found:
                    _link_or_copy(source / name, self.partial / name)
                return

    def publish(self) -> None:
        """Swap the partial folder in as the output folder: `.<name>.next-<pid>` then two renames.
        Between them the folder is absent for an instant; a crash there is completed by the next run."""
        pid = os.getpid()
        incoming, retired = self._sibling("next-", pid), self._sibling("old-", pid)
        os.rename(self.partial, incoming)
        self._remove_stale_partials()  # before the old set retires, so none travels with it
        os.rename(self.path, retired)
        os.rename(incoming, self.path)
        shutil.rmtree(retired, ignore_errors=True)

    def close(self) -> None:
        """Remove an unpublished partial folder and release the lock."""
        if self._lock is None:
            return
        shutil.rmtree(self.partial, ignore_errors=True)
        self._lock.close()  # closing the file releases the OS lock
        self._lock = None

    def _finish_interrupted_swap(self) -> None:
        """A run killed in `publish()` left `.next-` (its whole new set) and/or `.old-` (the set it
        replaced): the new set wins when it got out of the folder, else the old set stays."""
        for incoming in self.path.parent.glob(f".{self.path.name}.next-*"):
            if self.path.exists():
                shutil.rmtree(incoming, ignore_errors=True)
            else:
                os.rename(incoming, self.path)
        for retired in self.path.parent.glob(f".{self.path.name}.old-*"):
            if self.path.exists():
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(retired, self.path)

    def _refuse_foreign_files(self) -> None:
        """The swap replaces the whole folder, so it must be empty or an earlier run's output."""
        entries = [entry for entry in self.path.iterdir()
                   if not entry.name.startswith(PARTIAL_PREFIX) and not _is_temporary(entry)]
        if entries and not (self.path / RESULT_FILE).is_file():
            raise OutputError(f"The output folder {self.path} holds files that no engine run wrote "
                              f"(no {RESULT_FILE}), e.g. {entries[0].name}; a run replaces the whole folder.",
                              "Choose a new or empty output folder.")
        for entry in self.path.iterdir():
            if _is_temporary(entry):
                entry.unlink(missing_ok=True)

    def _stale_partials(self) -> list[Path]:
        return [entry for entry in self.path.glob(f"{PARTIAL_PREFIX}*") if entry != self.partial and entry.is_dir()]

    def _remove_stale_partials(self) -> None:
        for folder in self._stale_partials():
            shutil.rmtree(folder, ignore_errors=True)


def attempts(path: str | Path, exclude: Path | None = None) -> list[Path]:
    """Where earlier attempts at an output folder left their files, newest first: the partial
    folders of killed runs, then the published set."""
    path = Path(path)
    partials = [entry for entry in path.glob(f"{PARTIAL_PREFIX}*")
                if entry.is_dir() and not entry.is_symlink() and entry != exclude]
    return [*sorted(partials, key=lambda folder: folder.stat().st_mtime, reverse=True), path]


def publish_result_only(path: str | Path, document: dict) -> Path | None:
    """Publish a set that is only result.json (a run refused before it started), unless another
    run holds the folder or it holds a finished run's set, which a refusal never replaces.
    Returns the result's path, or None when it was not written."""
    from .protocol import write_result

    folder = OutputFolder(path)
    try:
        partial = folder.open()
        if folder.holds_finished_set():
            return None
        write_result(partial, document)
        folder.publish()
        return folder.path / RESULT_FILE
    except (OSError, OutputError):
        return None
    finally:
        folder.close()


def require_ok_result(folder: str | Path, what: str) -> None:
    """Refuse an earlier run's output folder as a source unless its result.json says it finished ok."""
    hint = "Pass the output folder of a run that finished (its result.json says \"ok\"), or run that job again."
    handle = open_inside(folder, RESULT_FILE, f"{what}'s {RESULT_FILE}")
    if handle is None:
        raise BadInputError(f"{what} {folder} has no {RESULT_FILE}: no finished run wrote it.", hint)
    try:
        with handle:
            status = json.loads(handle.read(MAX_RESULT_BYTES).decode("utf-8")).get("status")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
        status = None
    if status != "ok":
        raise BadInputError(f"{what} {folder} is not a finished result: its {RESULT_FILE} says "
                            f"{status if isinstance(status, str) else 'nothing readable'!r}, not \"ok\".", hint)


def _is_temporary(entry: Path) -> bool:
    """`name.tmp-<pid>` of engine.files.atomic_write: never part of a set, under the lock always stale."""
    stem, _, pid = entry.name.rpartition(".tmp-")
    return bool(stem) and pid.isdigit() and entry.is_file()


def _lock_file(path: Path) -> IO[bytes] | None:
    """The lock file opened and locked, or None when another process holds it."""
    handle = open(path, "a+b")
    try:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
