"""The server's checks on what comes from the network, without a server or Ray: zip archives
(engine/server/archives.py), the admission of a job folder (engine/server/admission.py) and the
job store's acceptance of an upload (engine/server/store.py). A refused upload leaves nothing."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from engine.errors import BadInputError, JobFileError
from engine.server.admission import ModelPolicy, admit_job
from engine.server.archives import ArchiveError, ArchiveLimits, pack_folder, unpack_archive
from engine.server.store import JobNotFound, JobStore

CUBE = Path(__file__).resolve().parent.parent / "examples" / "cube.obj"


def texture_job(**settings) -> bytes:
    return json.dumps({"protocol": 1, "task": "texture", "mesh": "cube.obj",
                       "settings": {"prompt": "a cube", "steps": 10, **settings}}).encode()


def make_zip(members: dict[str, bytes], mode: int | None = None, special: str | None = None) -> bytes:
    """members written as Python writes them (permissions only, no file type); `special` is one
    more member carrying the full Unix `mode` (a link, a device...)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if special is not None:
            info = zipfile.ZipInfo(special)
            info.create_system = 3
            info.external_attr = mode << 16
            archive.writestr(info, b"/etc/passwd")
    return buffer.getvalue()


def encrypted_flag(archive: bytes) -> bytes:
    """The archive with its first member marked encrypted (general purpose bit 0), in both headers."""
    data = bytearray(archive)
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.find(signature)
        data[at + flag_offset] |= 0x01
    return bytes(data)


def corrupted(archive: bytes, member_data: bytes) -> bytes:
    """The archive with a byte of a stored member's data changed (its CRC no longer matches)."""
    at = archive.find(member_data)
    return archive[:at] + bytes([archive[at] ^ 0xFF]) + archive[at + 1:]


def stored_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


GOOD = {"job.json": texture_job(), "cube.obj": CUBE.read_bytes()}
SMALL = ArchiveLimits(max_files=5, max_unpacked_bytes=1 << 16)

OUT_OF_FOLDER, WINDOWS = "leads out of", "absolute and Windows-style"
LINK, UNREADABLE = "link or special", "not a readable"
# case: (archive, what the message says)
REFUSED = {
    "dot-dot": (make_zip({**GOOD, "../escape.txt": b"x"}), OUT_OF_FOLDER),
    "dot-dot inside": (make_zip({**GOOD, "a/../../escape.txt": b"x"}), OUT_OF_FOLDER),
    "dot-dot at the end": (make_zip({**GOOD, "a/..": b"x"}), OUT_OF_FOLDER),
    "absolute": (make_zip({**GOOD, "/tmp/escape.txt": b"x"}), WINDOWS),
    "drive letter": (make_zip({**GOOD, "C:/escape.txt": b"x"}), WINDOWS),
    "backslash": (make_zip({**GOOD, "a\\..\\..\\escape.txt": b"x"}), WINDOWS),
    "symlink": (make_zip(GOOD, stat.S_IFLNK | 0o777, "link"), LINK),
    "symlink named as an input": (make_zip({"job.json": texture_job()}, stat.S_IFLNK | 0o777, "cube.obj"), LINK),
    "fifo": (make_zip(GOOD, stat.S_IFIFO | 0o644, "pipe"), LINK),
    "device": (make_zip(GOOD, stat.S_IFCHR | 0o644, "null"), LINK),
    "zip bomb": (make_zip({**GOOD, "bomb.bin": bytes(8 << 20)}), "zip bomb"),
    "too many files": (make_zip({**GOOD, **{f"f/{i}.txt": b"" for i in range(4)}}), "6 files; at most 5"),
    "too large unpacked": (make_zip({**GOOD, "big.bin": os.urandom(1 << 16)}), "at most 65,536 are accepted"),
    "the same name twice": (make_zip({**GOOD, "CUBE.OBJ": b"v 0 0 0"}), "twice"),
    "a file where a folder goes": (make_zip({**GOOD, "cube.obj/inner.txt": b"x"}), "cannot be unpacked"),
    "encrypted": (encrypted_flag(make_zip(GOOD)), "encrypted"),
    "corrupted member": (corrupted(stored_zip({"job.json": texture_job(), "cube.obj": b"v 0 0 0\n" * 50}),
                                   b"v 0 0 0\n" * 50), "cannot be unpacked"),
    "not a zip": (b"this is not a zip archive", UNREADABLE),
    "empty body": (b"", UNREADABLE),
    "truncated": (make_zip(GOOD)[:100], UNREADABLE),
}


def test_an_archive_as_python_and_the_add_on_write_it_is_unpacked(tmp_path):
    # writestr stores permissions without a file type; ZipFile.write stores the file's full mode.
    folder = tmp_path / "source"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "cube.obj").write_bytes(CUBE.read_bytes())
    with zipfile.ZipFile(tmp_path / "job.zip", "w") as archive:
        archive.writestr("job.json", texture_job())
        archive.write(folder / "sub", "sub")
        archive.write(folder / "sub" / "cube.obj", "sub/cube.obj")
    unpack_archive(tmp_path / "job.zip", tmp_path / "out", SMALL)
    assert (tmp_path / "out" / "job.json").read_bytes() == texture_job()
    assert (tmp_path / "out" / "sub" / "cube.obj").read_bytes() == CUBE.read_bytes()


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_archives_write_nothing(case, tmp_path):
    archive, reason = REFUSED[case]
    destination = tmp_path / "job"
    with pytest.raises(ArchiveError) as refused:
        unpack_archive(io.BytesIO(archive), destination, SMALL)
    assert refused.value.kind == "bad_archive" and reason in refused.value.message and refused.value.hint
    assert not destination.exists()
    assert os.listdir(tmp_path) == []


def test_limits_as_documented():
    limits = ArchiveLimits()
    assert (limits.max_files, limits.max_unpacked_bytes, limits.max_ratio) == (1000, 4 << 30, 200.0)
    with pytest.raises(ArchiveError, match="1001 files"):
        unpack_archive(io.BytesIO(make_zip({f"{i}.txt": b"" for i in range(1001)})), Path("/nonexistent/x"))


def test_small_members_may_compress_well(tmp_path):
    # A few kB of one repeated byte compress beyond 200:1 yet are no bomb: only members over 1 MiB count.
    unpack_archive(io.BytesIO(make_zip({**GOOD, "flat.txt": b" " * 200_000})), tmp_path / "job")
    assert (tmp_path / "job" / "flat.txt").stat().st_size == 200_000


def test_packing_leaves_out_links_and_skipped_names(tmp_path):
    folder = tmp_path / "job"
    (folder / "out").mkdir(parents=True)
    (folder / "job.json").write_bytes(texture_job())
    (folder / "out" / "result.json").write_text("{}")
    (folder / "progress.jsonl").write_text("")
    (folder / "link.obj").symlink_to(CUBE)
    (folder / "linked").symlink_to(CUBE.parent, target_is_directory=True)
    names = zipfile.ZipFile(io.BytesIO(pack_folder(folder, skip=("out", "progress.jsonl")))).namelist()
    assert names == ["job.json"]


# ------------------------------------------------------------------------------------------------
# Admission: the engine's own checks, and no server paths
# ------------------------------------------------------------------------------------------------

def job_folder(tmp_path: Path, document: bytes | dict, name: str = "job") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "job.json").write_bytes(document if isinstance(document, bytes) else json.dumps(document).encode())
    (folder / "cube.obj").write_bytes(CUBE.read_bytes())
    return folder


def test_admission_takes_models_the_server_may_use(tmp_path):
    models = tmp_path / "models"
    (models / "my-sd").mkdir(parents=True)
    policy = ModelPolicy(models)
    for model in ("bundled", "stable-diffusion-v1-5/stable-diffusion-v1-5", str(models / "my-sd")):
        folder = job_folder(tmp_path, texture_job(prior={"model": model}), name=f"job-{len(os.listdir(tmp_path))}")
        assert admit_job(folder, policy) == "texture"


@pytest.mark.parametrize("prior", [
    {"model": "/etc"},
    {"model": "../models/my-sd"},
    {"model": "~/models"},
    {"model": "MODELS/../../etc"},
    {"model": "bundled", "cache_dir": "/root/.cache/huggingface"},
    {"model": "bundled", "controlnet_models": {"depth": "/etc"}},
])
def test_admission_refuses_server_paths(prior, tmp_path):
    models = tmp_path / "models"
    (models / "my-sd").mkdir(parents=True)
    folder = job_folder(tmp_path, texture_job(prior={**prior, "model": prior["model"].replace("MODELS", str(models))}))
    with pytest.raises(BadInputError) as refused:
        admit_job(folder, ModelPolicy(models))
    assert "settings.prior." in refused.value.message and refused.value.hint


def test_admission_checks_every_stage_of_a_generate_job(tmp_path):
    document = {"protocol": 1, "task": "generate",
                "settings": {"prompt": "a chair", "stage2": {"prior": {"model": str(tmp_path)}}}}
    with pytest.raises(BadInputError, match=r"settings\.stage2\.prior\.model"):
        admit_job(job_folder(tmp_path, document), ModelPolicy())


@pytest.mark.parametrize("document, error", [
    (b"{\"protocol\": 1, \"task\":", JobFileError),
    (b"[1, 2]", JobFileError),
    ({"protocol": 2, "task": "texture", "mesh": "cube.obj", "settings": {"prompt": "x"}}, JobFileError),
    ({"protocol": 1, "task": "paint", "settings": {}}, JobFileError),
    ({"protocol": 1, "task": "texture", "mesh": "../cube.obj", "settings": {"prompt": "x"}}, JobFileError),
    ({"protocol": 1, "task": "texture", "mesh": "cube.obj", "settings": {"prompt": "x", "steps": -1}}, BadInputError),
    ({"protocol": 1, "task": "texture", "mesh": "cube.obj", "settings": {"prompt": "x", "colour": 1}}, BadInputError),
])
def test_admission_refuses_what_the_engine_refuses(document, error, tmp_path):
    with pytest.raises(error):
        admit_job(job_folder(tmp_path, document), ModelPolicy())


# ------------------------------------------------------------------------------------------------
# The store's side: an accepted job is on disk, a refused one nowhere
# ------------------------------------------------------------------------------------------------

def test_the_store_keeps_an_accepted_job_and_nothing_of_a_refused_one(tmp_path):
    store = JobStore(tmp_path / "jobs")
    record = store.accept(io.BytesIO(make_zip(GOOD)), label="a label\x07 " + "x" * 300)
    assert (record.status, record.task, record.attempt, record.events) == ("queued", "texture", 0, 1)
    assert len(record.label) == 200 and "\x07" not in record.label
    assert (tmp_path / "jobs" / record.id / "job" / "cube.obj").read_bytes() == CUBE.read_bytes()
    assert store.events_after(record.id, 0) == [(1, '{"event":"queued","position":1}')]

    refused = [make_zip({**GOOD, "job.json": b"{"}), REFUSED["symlink"][0], REFUSED["corrupted member"][0],
               make_zip({**GOOD, "job.json": texture_job(prior={"model": str(tmp_path)})})]
    for upload in refused:
        with pytest.raises((ArchiveError, JobFileError, BadInputError)):
            store.accept(io.BytesIO(upload))
    assert sorted(os.listdir(tmp_path / "jobs")) == sorted([".uploads", record.id])

    # A store opened again on the same folder (a restarted server) finds the job as it was.
    again = JobStore(tmp_path / "jobs")
    assert [job.id for job in again.list()] == [record.id] and again.get(record.id) == store.get(record.id)


def test_previews_are_served_only_from_the_jobs_preview_folder(tmp_path):
    store = JobStore(tmp_path / "jobs")
    job_id = store.accept(io.BytesIO(make_zip(GOOD))).id
    store.save_preview(job_id, ".partial-12/previews/view_000010.png", b"\x89PNG...")
    for ignored in ("../record.json", "/etc/passwd.png", "previews/view.txt", "a/../../b.png"):
        store.save_preview(job_id, ignored, b"x")
    assert store.preview_file(job_id, ".partial-12/previews/view_000010.png").read_bytes() == b"\x89PNG..."
    files = [path.relative_to(tmp_path / "jobs" / job_id / "previews").as_posix()
             for path in (tmp_path / "jobs" / job_id / "previews").rglob("*") if path.is_file()]
    assert files == [".partial-12/previews/view_000010.png"]
    for path in ("../record.json", "../job/job.json", ".partial-12/previews/missing.png"):
        with pytest.raises(JobNotFound):
            store.preview_file(job_id, path)


def test_a_model_shaped_like_a_hub_id_inside_the_upload_is_refused(tmp_path):
    """"owner/name" that exists as a folder of the job would load the job's own files as a model."""
    job = tmp_path / "job"
    (job / "owner" / "name").mkdir(parents=True)
    (job / "owner" / "name" / "model_index.json").write_text("{}")
    (job / "mesh.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    (job / "job.json").write_text(json.dumps({"protocol": 1, "task": "texture", "mesh": "mesh.obj",
                                              "settings": {"prompt": "a cube", "prior": {"model": "owner/name"}}}))
    with pytest.raises(BadInputError, match="its own upload"):
        admit_job(job, ModelPolicy())
    (job / "owner" / "name" / "model_index.json").unlink()
    (job / "owner" / "name").rmdir()
    assert admit_job(job, ModelPolicy()) == "texture"
