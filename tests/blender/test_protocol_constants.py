"""The protocol's names and numbers are the same on both sides.

The add-on (csd_blender/exchange/protocol.py) cannot import the engine: it runs in Blender's
Python, the engine in its own environment. So this test asks the engine's Python for its values
and compares them with the add-on's, and has the engine read a job folder the add-on wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT))
from csd_blender.exchange import job_folder, protocol  # noqa: E402

ENGINE_VALUES = r"""
import json, sys
from pathlib import Path
from engine import errors
from engine.config import DEFAULT_NEGATIVE_PROMPT
from engine.job import protocol
from engine.job.outputs import RESULT_FILE

def classes(cls):
    yield cls
    for sub in cls.__subclasses__():
        yield from classes(sub)

spec = protocol.read_job(sys.argv[1])
result = protocol.write_result(spec.output_dir, {"status": "ok"})
print(json.dumps({
    "protocol": protocol.PROTOCOL_VERSION,
    "tasks": list(protocol.TASKS),
    "progress_file": protocol.PROGRESS_LOG,
    "cancel_file": spec.cancel_path.name,
    "output_dir": spec.output_dir.name,
    "mesh_file": spec.mesh.name,
    "result_file": [RESULT_FILE, result.name],
    "exit_kinds": {str(cls.exit_code): cls.kind for cls in classes(errors.EngineError)},
    "default_negative_prompt": DEFAULT_NEGATIVE_PROMPT,
}))
"""


@pytest.fixture(scope="module")
def engine_values(tmp_path_factory):
    engine_python = ROOT / ".venv" / "bin" / "python"
    if not engine_python.exists():
        pytest.skip("no engine venv")
    job_dir = tmp_path_factory.mktemp("job")
    job_folder.write_job(job_dir, "texture", {"prompt": "x"}, mesh=protocol.MESH_FILE)
    (job_dir / protocol.OUTPUT_DIR).mkdir()
    run = subprocess.run([str(engine_python), "-c", ENGINE_VALUES, str(job_dir)], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (job_dir / protocol.OUTPUT_DIR / protocol.RESULT_FILE).is_file()
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_file_names_and_version_match_the_engine(engine_values):
    # The engine read the add-on's job.json (JOB_FILE) and found its mesh and output folder in it.
    assert engine_values["protocol"] == protocol.PROTOCOL
    assert tuple(engine_values["tasks"]) == protocol.TASKS
    assert engine_values["progress_file"] == protocol.PROGRESS_FILE
    assert engine_values["cancel_file"] == protocol.CANCEL_FILE
    assert engine_values["output_dir"] == protocol.OUTPUT_DIR
    assert engine_values["mesh_file"] == protocol.MESH_FILE
    assert engine_values["result_file"] == [protocol.RESULT_FILE] * 2


def test_exit_codes_match_the_engine(engine_values):
    assert {int(code): kind for code, kind in engine_values["exit_kinds"].items()} == protocol.EXIT_KINDS


def test_default_negative_prompt_matches_the_engine(engine_values):
    assert engine_values["default_negative_prompt"] == protocol.DEFAULT_NEGATIVE_PROMPT
