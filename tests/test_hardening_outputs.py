"""Issue 25, finding 5 and part of 7: an output folder holds one run's whole set, a second run on it
is refused, a killed run's leftovers go away, edit refuses an unfinished source, and each run starts
a fresh progress log without a stale cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.errors import BadInputError, OutputError
from engine.job.outputs import OutputFolder, require_ok_result
from engine.job.progress import PROCESS_START, CancelToken, ProgressReporter
from engine.job.runner import run_pipeline
from engine.files import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent


def run(out: Path, pipeline, reporter=None, cancel=None) -> int:
    return run_pipeline("texture", {}, out, "cpu", pipeline, reporter or ProgressReporter(to_stdout=False),
                        cancel or CancelToken())


def writes(files: dict[str, str], fail: Exception | None = None):
    def pipeline(context):
        for name, text in files.items():
            atomic_write_text(context.output_dir / name, text)
            context.outputs[name.split(".")[0]] = name
        if fail is not None:
            raise fail
        return {}
    return pipeline


def listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir() if p.is_file()}


def test_a_failed_run_replaces_the_set_as_a_unit(tmp_path):
    out = tmp_path / "out"
    assert run(out, writes({"mesh.obj": "old", "texture.png": "old"})) == 0
    code = run(out, writes({"texture.png": "new"}, BadInputError("no good", "fix it")))
    assert code == 2
    files = listing(out)
    assert set(files) == {"texture.png", "result.json"} and files["texture.png"] == "new"
    result = json.loads(files["result.json"])
    assert result["status"] == "error" and result["outputs"] == {"texture": "texture.png"}
    assert {p.name for p in tmp_path.iterdir()} == {"out", ".out.lock"}  # no partial or retired folder left


def test_readers_see_the_old_set_while_a_run_writes(tmp_path):
    out = tmp_path / "out"
    run(out, writes({"mesh.obj": "old"}))
    seen = {}

    def pipeline(context):
        atomic_write_text(context.output_dir / "mesh.obj", "new")
        seen.update(listing(out))
        return {"mesh": "mesh.obj"}

    assert run(out, pipeline) == 0
    assert seen["mesh.obj"] == "old" and json.loads(seen["result.json"])["status"] == "ok"
    assert listing(out)["mesh.obj"] == "new"


def test_a_second_run_on_a_locked_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    run(out, writes({"mesh.obj": "old"}))
    holder = OutputFolder(out)
    holder.open()
    try:
        reporter = ProgressReporter(jsonl_path=tmp_path / "progress.jsonl", to_stdout=False)
        code = run(out, writes({"mesh.obj": "intruder"}), reporter)
    finally:
        holder.close()
    assert code == OutputError.exit_code
    assert listing(out)["mesh.obj"] == "old"
    events = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert "Another engine run is writing" in events[-2]["message"] and events[-1]["result"] is None


def test_a_folder_of_other_files_is_not_replaced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    assert run(tmp_path, writes({"mesh.obj": "x"})) == OutputError.exit_code
    assert (tmp_path / "mine.txt").read_text() == "keep"


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from engine.files import atomic_write_text
    from engine.job.progress import CancelToken, ProgressReporter
    from engine.job.runner import run_pipeline

    def pipeline(context):
        atomic_write_text(context.output_dir / "texture.png", "new")
        (context.output_dir / "mesh.obj.tmp-999999").write_text("half")
        print("written", flush=True)
        time.sleep(60)

    run_pipeline("texture", {}, Path(sys.argv[1]), "cpu", pipeline, ProgressReporter(to_stdout=False), CancelToken())
""")


def test_sigkill_leaves_the_old_set_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "out"
    run(out, writes({"mesh.obj": "old", "texture.png": "old"}))
    (out / "stray.png.tmp-999999").write_text("from a killed run")
    child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "written"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
    files = listing(out)
    assert files["mesh.obj"] == "old" and files["texture.png"] == "old"
    assert json.loads(files["result.json"])["status"] == "ok"
    assert run(out, writes({"mesh.obj": "new"})) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mesh.obj", "result.json"]


def test_a_swap_cut_short_is_completed(tmp_path):
    out = tmp_path / "out"
    run(out, writes({"mesh.obj": "old"}))
    incoming = tmp_path / ".out.next-999999"
    incoming.mkdir()
    (incoming / "mesh.obj").write_text("new")
    (incoming / "result.json").write_text('{"status": "ok"}')
    out.rename(tmp_path / ".out.old-999999")  # killed between the two renames
    folder = OutputFolder(out)
    folder.open()
    folder.close()
    assert listing(out)["mesh.obj"] == "new" and sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]


def test_resume_continues_the_checkpoint_of_a_cancelled_attempt(tmp_path):
    out = tmp_path / "out"
    assert run(out, writes({"stage1.pt": "step 40"}, BadInputError("stopped", ""))) == 2

    def resumed(context):
        context.carry_over("stage1.pt")
        seen = (context.output_dir / "stage1.pt").read_text()
        raise BadInputError(f"saw {seen}", "")

    assert run(out, resumed) == 2
    assert listing(out)["stage1.pt"] == "step 40"  # a resumed run that fails keeps the checkpoint
    assert "saw step 40" in json.loads(listing(out)["result.json"])["error"]["message"]


@pytest.mark.parametrize("result,message", [
    (None, "has no result.json"),
    ('{"status": "cancelled"}', "'cancelled'"),
    ("[1", "nothing readable"),
])
def test_edit_sources_must_be_finished_results(tmp_path, result, message):
    if result is not None:
        (tmp_path / "result.json").write_text(result)
    with pytest.raises(BadInputError, match=message):
        require_ok_result(tmp_path, "The edit source")


def test_each_run_starts_a_fresh_progress_log(tmp_path):
    log = tmp_path / "progress.jsonl"
    for _ in range(2):
        run(tmp_path / "out", writes({"a.txt": "a"}), ProgressReporter(jsonl_path=log, to_stdout=False))
    events = [json.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events.count("started") == 1 and events[-1] == "finished"


def test_a_stale_cancel_file_does_not_cancel_the_next_run(tmp_path):
    cancel_file = tmp_path / "cancel"
    cancel_file.write_text("")
    os.utime(cancel_file, (PROCESS_START - 60, PROCESS_START - 60))
    token = CancelToken(cancel_file)

    def pipeline(context):
        context.cancel.check()  # the stale file is ignored ...
        time.sleep(0.01)
        cancel_file.write_text("again")  # ... one written during the run cancels it
        context.cancel.check()
        return {}

    assert run(tmp_path / "out", pipeline, cancel=token) == 130
    assert json.loads((tmp_path / "out" / "result.json").read_text())["status"] == "cancelled"


def test_resume_finds_the_settings_a_killed_run_left_in_its_partial_folder(tmp_path):
    # SIGKILL leaves a first run's generate_config.json in `.partial-<pid>/`, never published.
    from engine.config import load_saved_config

    out = tmp_path / "out"
    killed = out / ".partial-99999"
    killed.mkdir(parents=True)
    (killed / "generate_config.json").write_text(json.dumps({"prompt": "a killed run's prompt"}))
    assert load_saved_config(out).prompt == "a killed run's prompt"
