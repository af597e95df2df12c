"""Job folders as zip archives: packed to travel (upload, Ray task, outputs) and unpacked only
after every member has been checked, since an archive may come from anyone (docs/remote.md)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable

from ..errors import EngineError

ARCHIVE_HINT = "Send the job folder the add-on or `engine batch` wrote, zipped with job.json at its root."
COPY_CHUNK = 1 << 20


class ArchiveError(EngineError):
    """An archive that is refused before anything of it is unpacked (HTTP 400)."""

    kind = "bad_archive"
    exit_code = 2


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 1000
    max_unpacked_bytes: int = 4 << 30
    # Deflate rarely exceeds 100:1 even on flat images; bombs reach 1000:1 and more.
    max_ratio: float = 200.0


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    name = info.filename
    if "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise ArchiveError(f"The archive names {name!r}: absolute and Windows-style paths are refused.", ARCHIVE_HINT)
    path = PurePosixPath(name)
    if any(part in ("..", "") for part in path.parts) or not path.parts:
        raise ArchiveError(f"The archive names {name!r}, which leads out of the job folder.", ARCHIVE_HINT)
    # Only the type bits matter: many writers (Python's writestr among them) store permissions
    # without a type, which is a plain file.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveError(f"The archive holds {name!r}, a link or special file; only plain files are accepted.",
                           ARCHIVE_HINT)
    return path


def check_archive(archive: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every member with its path, once the whole list passes the checks; nothing is read yet."""
    members = archive.infolist()
    files = [info for info in members if not info.is_dir()]
    if len(files) > limits.max_files:
        raise ArchiveError(f"The archive holds {len(files)} files; at most {limits.max_files} are accepted.",
                           ARCHIVE_HINT)
    checked, total, seen = [], 0, set()
    for info in members:
        path = _member_path(info)
        key = path.as_posix().rstrip("/").casefold()
        if key in seen:
            raise ArchiveError(f"The archive holds {info.filename!r} twice.", ARCHIVE_HINT)
        seen.add(key)
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{info.filename!r} is encrypted.", ARCHIVE_HINT)
        total += info.file_size
        if info.file_size > limits.max_ratio * max(info.compress_size, 1) and info.file_size > COPY_CHUNK:
            raise ArchiveError(f"{info.filename!r} unpacks to {info.file_size:,} bytes from {info.compress_size:,}: "
                               f"more than {limits.max_ratio:.0f} to 1, refused as a zip bomb.", ARCHIVE_HINT)
        checked.append((info, path))
    if total > limits.max_unpacked_bytes:
        raise ArchiveError(f"The archive unpacks to {total:,} bytes; at most {limits.max_unpacked_bytes:,} are accepted.",
                           ARCHIVE_HINT)
    return checked


def unpack_archive(source: str | Path | BinaryIO, destination: Path, limits: ArchiveLimits = ArchiveLimits()) -> None:
    """Unpack into `destination` (created; must not exist) after check_archive. The sizes the
    archive declares are not trusted: the bytes actually written are counted and capped too."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise ArchiveError(f"The upload is not a readable zip archive ({error}).", ARCHIVE_HINT) from error
    with archive:
        members = check_archive(archive, limits)
        destination.mkdir(parents=True)
        try:
            _write_members(archive, members, destination, limits)
        except ArchiveError:
            # A refused archive leaves nothing, also when a member fails only once it is read.
            shutil.rmtree(destination, ignore_errors=True)
            raise


def _write_members(archive: zipfile.ZipFile, members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                   destination: Path, limits: ArchiveLimits) -> None:
    written = 0
    for info, path in members:
        target = destination.joinpath(*path.parts)
        try:
            # Inside the try: a member may clash with another (a file "a" and a file "a/b").
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as reader, open(target, "xb") as writer:
                while chunk := reader.read(COPY_CHUNK):
                    written += len(chunk)
                    if written > limits.max_unpacked_bytes:
                        raise ArchiveError("The archive unpacks to more bytes than it declares.", ARCHIVE_HINT)
                    writer.write(chunk)
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError) as error:
            raise ArchiveError(f"{info.filename!r} cannot be unpacked ({error}).", ARCHIVE_HINT) from error


def folder_files(folder: Path, skip: Iterable[str] = ()) -> list[tuple[Path, str]]:
    """The plain files below `folder` as (path, archive name), never following a link; names in
    `skip` (first path parts) are left out."""
    skip = set(skip)
    found = []
    for root, dirs, files in os.walk(folder):
        relative_root = Path(root).relative_to(folder)
        dirs[:] = sorted(name for name in dirs if not (Path(root) / name).is_symlink()
                         and (relative_root / name).parts[0] not in skip)
        for name in sorted(files):
            path = Path(root) / name
            relative = relative_root / name
            if relative.parts[0] in skip or path.is_symlink() or not path.is_file():
                continue
            found.append((path, relative.as_posix()))
    return found


def pack_files(files: Iterable[tuple[Path, str]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path, name in files:
            archive.write(path, name)
    return buffer.getvalue()


def pack_folder(folder: Path, skip: Iterable[str] = ()) -> bytes:
    return pack_files(folder_files(folder, skip))
