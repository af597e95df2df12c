"""Issue 25, finding 8: the add-on refuses what the engine should never write, with a clear message.

No Blender needed: these check csd_blender/exchange, where every file and event from the
engine passes through engine_output before it is used.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))
from csd_blender.exchange import engine_output, job_folder, progress, queue, result  # noqa: E402


def _png_header(width: int, height: int) -> bytes:
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))


PNG_1X1 = _png_header(1, 1)


def _job(tmp_path, doc, files=None):
    """A finished job folder whose out/result.json is ``doc`` (a dict, or raw text)."""
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    for name, data in (files or {}).items():
        (out / name).write_bytes(data)
    return tmp_path


def _refused(outcome, *words):
    assert outcome.status == "error" and outcome.kind == "bad_output", outcome
    assert outcome.message.startswith("The engine's output was refused:") and "update both" in outcome.hint
    for word in words:
        assert word in outcome.message, outcome.message


def test_an_output_name_with_nul_is_refused_not_raised(tmp_path):
    job = _job(tmp_path, {"status": "ok", "outputs": {"texture": "texture\x00.png"}}, {"texture.png": PNG_1X1})
    _refused(result.interpret(job, 0), "'texture'", "control characters")


def test_an_output_outside_the_folder_refuses_the_result(tmp_path):
    for bad in ("../job.json", "/etc/passwd", "a\\..\\..\\x", "C:/x", "", 7):
        job = _job(tmp_path, {"status": "ok", "outputs": {"texture": "t.png", "evil": bad}}, {"t.png": PNG_1X1})
        _refused(result.interpret(job, 0), "'evil'")


def test_a_deeply_nested_result_is_refused_not_a_recursion_error(tmp_path):
    _refused(result.interpret(_job(tmp_path, "[" * 200_000 + "]" * 200_000), 0), "result.json", "deep")
    deep = {"status": "ok", "outputs": {}, "settings": {}}
    level = deep["settings"]
    for _ in range(100):  # under Python's recursion limit, over the add-on's
        level["x"] = {}
        level = level["x"]
    _refused(result.interpret(_job(tmp_path, deep), 0), "deep")


def test_a_huge_or_broken_result_is_refused(tmp_path):
    big = json.dumps({"status": "ok", "outputs": {}, "prompt": "x" * (engine_output.MAX_JSON_BYTES + 1)})
    _refused(result.interpret(_job(tmp_path, big), 0), "result.json", "bytes")
    _refused(result.interpret(_job(tmp_path, '{"status": "ok", "outputs": '), 0), "not valid JSON")
    _refused(result.interpret(_job(tmp_path, "[1, 2]"), 0), "not a JSON object")
    _refused(result.interpret(_job(tmp_path, {"status": "ok", "outputs": ["t.png"]}), 0), "outputs")


def test_an_out_folder_that_is_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    _job(elsewhere, {"status": "ok", "outputs": {"texture": "t.png"}}, {"t.png": PNG_1X1})
    job = tmp_path / "job"
    job.mkdir()
    os.symlink(elsewhere / "out", job / "out")
    _refused(result.interpret(job, 0), "link")
    assert result.interpret(job, 130, cancel_requested=True).status == "cancelled"  # a cancel stays a cancel


def test_result_json_or_an_output_that_is_a_link_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG_1X1)
    job = _job(tmp_path / "job", {"status": "ok", "outputs": {"texture": "t.png"}})
    os.symlink(secret, job / "out" / "t.png")
    _refused(result.interpret(job, 0), "link")
    (job / "out" / "t.png").unlink()
    (job / "out" / "sub").mkdir()
    os.symlink(tmp_path, job / "out" / "sub" / "up")
    job2 = _job(job, {"status": "ok", "outputs": {"texture": "sub/up/secret.png"}})
    _refused(result.interpret(job2, 0), "link")
    (job / "out" / "result.json").unlink()
    os.symlink(secret, job / "out" / "result.json")
    _refused(result.interpret(job, 0), "result.json")


def test_images_are_checked_before_blender_loads_them(tmp_path):
    bomb = _job(tmp_path, {"status": "ok", "outputs": {"texture": "t.png"}}, {"t.png": _png_header(100_000, 100_000)})
    _refused(result.interpret(bomb, 0), "100000 x 100000")
    fake = _job(tmp_path, {"status": "ok", "outputs": {"texture": "t.png", "glb": "m.glb"}},
                {"t.png": b"GIF89a not a png", "m.glb": b"glTF" + bytes(8)})
    _refused(result.interpret(fake, 0), "not a PNG")
    good = _job(tmp_path, {"status": "ok", "outputs": {"texture": "t.png", "glb": "m.glb"}}, {"t.png": PNG_1X1})
    assert result.interpret(good, 0).ok
    (tmp_path / "out" / "m.glb").write_bytes(b"<html>")
    _refused(result.interpret(good, 0), "not a GLB")


def test_error_text_from_the_engine_is_cleaned_and_bounded(tmp_path):
    job = _job(tmp_path, {"status": "error", "error": {"kind": ["x"], "message": "bad\x00 thing" + "!" * 10_000,
                                                      "hint": {"a": 1}}})
    outcome = result.interpret(job, 2)
    assert outcome.status == "error" and outcome.kind == "bad_input"  # the exit code's kind, not ['x']
    assert "\x00" not in outcome.message and len(outcome.message) <= engine_output.MAX_TEXT_CHARS
    assert outcome.hint == result.ADVICE["bad_input"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), 1e400, 10 ** 40, "12", True, -3, 2.5])
def test_progress_numbers_that_are_not_step_counts_are_ignored(value):
    state = progress.JobProgress()
    state.apply({"event": "started", "total_steps": 10})
    state.apply({"event": "started", "total_steps": value})
    state.apply({"event": "step", "step": value, "total_steps": value, "loss": value, "eta_s": value,
                 "elapsed_s": value, "time": value})
    assert state.total_steps == 10 and state.step == 0 and state.fraction == 0.0
    assert any("total_steps" in note for note in state.refusals)
    if engine_output.number(value, 0, engine_output.MAX_SECONDS) is None:
        assert state.eta_s is None and state.elapsed_s == 0.0
    assert progress.format_duration(float("inf")) == "--:--" and progress.format_duration(float("nan")) == "--:--"


def test_nan_and_infinity_on_a_progress_line_do_not_break_the_reader(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"event": "started", "total_steps": NaN}\n{"event": "step", "step": 1, "total_steps": 4, '
                    '"loss": NaN, "eta_s": Infinity}\n{"event": "step", "step": 2, "total_steps": 1e999}\n')
    state = progress.JobProgress()
    state.apply_all(progress.JsonlTail(path).read())
    assert (state.step, state.total_steps, state.loss, state.eta_s) == (2, 4, None, None)


def test_preview_paths_outside_the_folder_are_not_kept():
    state = progress.JobProgress()
    state.apply({"event": "preview", "step": 1, "path": "preview/t1.png", "view": "preview/v1.png"})
    assert (state.preview_texture, state.preview_view, state.preview_serial) == ("preview/t1.png", "preview/v1.png", 1)
    for bad in ("../../secret.png", "/etc/passwd", "a\x00.png", "..\\x.png"):
        state.apply({"event": "preview", "step": 2, "path": bad, "view": bad})
    assert (state.preview_texture, state.preview_view, state.preview_serial) == ("preview/t1.png", "preview/v1.png", 1)
    assert state.refusals and all("preview" in note for note in state.refusals)
    assert len(state.refusals) <= progress.MAX_REFUSALS


def test_preview_files_are_resolved_without_links(tmp_path):
    out = tmp_path / "out"
    (out / "preview").mkdir(parents=True)
    (out / "preview" / "t1.png").write_bytes(PNG_1X1)
    assert engine_output.resolve_inside(out, "preview/t1.png") == out / "preview" / "t1.png"
    os.symlink(tmp_path / "elsewhere", out / "preview" / "link.png")
    os.symlink(tmp_path, out / "up")
    for bad in ("preview/link.png", "up/out/preview/t1.png", "../out/preview/t1.png"):
        with pytest.raises(engine_output.UnsafePathError):
            engine_output.resolve_inside(out, bad)
    linked_out = tmp_path / "job" / "out"
    linked_out.parent.mkdir()
    os.symlink(out, linked_out)
    with pytest.raises(engine_output.UnsafePathError, match="link"):
        engine_output.resolve_inside(linked_out, "preview/t1.png")


def test_a_progress_log_that_is_a_link_or_runaway_is_not_read(tmp_path):
    other = tmp_path / "other.jsonl"
    other.write_text('{"event": "started", "total_steps": 5}\n')
    os.symlink(other, tmp_path / "progress.jsonl")
    tail = progress.JsonlTail(tmp_path / "progress.jsonl")
    assert tail.read() == [] and "link" in tail.refusal
    path = tmp_path / "runaway.jsonl"
    path.write_bytes(b'{"event": "stage", "name": "' + b"x" * (engine_output.MAX_EVENT_BYTES * 2))
    tail = progress.JsonlTail(path)
    assert tail.read() == []
    with open(path, "ab") as handle:
        handle.write(b'"}\n{"event": "stage", "name": "baking"}\n')
    assert [event.get("name") for event in tail.read()] == ["baking"]  # the long line is dropped whole


def test_a_job_reports_what_it_ignored(tmp_path):
    job_dir = job_folder.create_job_dir(tmp_path / "jobs", "texture", "x")
    job = queue.Job("texture", "x", job_dir, sys.executable, None)
    job.progress.apply({"event": "preview", "path": "../secret.png"})
    job.finish(False, "Texture 'x' failed.", "Try again.")
    assert job.report.hint.startswith("Try again. The engine also sent progress that was ignored: a preview path")


def test_corner_uvs_are_checked_before_they_are_read(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "corner_uvs.npy"
    np.save(path, np.zeros((2, 3, 2), dtype=np.float32))
    assert engine_output.read_corner_uvs(path, 2).dtype == np.float32
    for bad in (np.zeros((3, 3, 2), np.float32), np.zeros((2, 3, 2), np.int64), np.full((2, 3, 2), np.nan),
                np.array([{"a": 1}], dtype=object)):
        np.save(path, bad, allow_pickle=True)
        with pytest.raises(engine_output.EngineOutputError):
            engine_output.read_corner_uvs(path, 2)


def test_a_link_in_a_stored_result_is_copied_as_a_link(tmp_path, monkeypatch):
    def other_disk(*_args):
        raise OSError("cross-device link")

    monkeypatch.setattr(job_folder.os, "link", other_disk)  # the results folder on another disk: files are copied
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    src = tmp_path / "result"
    src.mkdir()
    (src / "state.pt").write_bytes(b"state")
    os.symlink(secret, src / "mesh.obj")
    dst = job_folder.link_or_copy_tree(src, tmp_path / "job" / "source")
    assert (dst / "state.pt").read_bytes() == b"state" and (dst / "mesh.obj").is_symlink()  # the engine refuses it


def test_a_running_jobs_engine_uvs_are_read_beside_its_live_previews(bpy):
    # Until a run's set is swapped in, its files live in its partial folder, previews and UVs alike.
    from csd_blender.blender.preview import _live_file

    assert _live_file(".partial-12/previews/texture_000002.png", "corner_uvs.npy") == ".partial-12/corner_uvs.npy"
    assert _live_file("previews/texture_000002.png", "corner_uvs.npy") == "corner_uvs.npy"


def test_an_engine_check_report_nested_too_deep_is_no_report():
    from csd_blender.exchange.engine_env import parse_check_output

    assert parse_check_output("CSD-CHECK " + "[" * 100_000 + "]" * 100_000) is None
    assert parse_check_output('CSD-CHECK ["not", "an object"]') is None
    assert parse_check_output('CSD-CHECK {"python": "3.11"}') == {"python": "3.11"}
