"""Names and numbers of the job folder protocol, version 1 (docs/job-protocol.md).

The engine defines the same values on its side (engine/job/protocol.py, engine/errors.py,
engine/config.py); the add-on cannot import the engine (another Python), so
tests/blender/test_protocol_constants.py checks the two sides equal.
"""

from __future__ import annotations

PROTOCOL = 1

JOB_FILE = "job.json"
MESH_FILE = "mesh.npz"
PROGRESS_FILE = "progress.jsonl"
CANCEL_FILE = "cancel"
OUTPUT_DIR = "out"
RESULT_FILE = "result.json"
LOG_FILE = "engine.log"

TASKS = ("texture", "generate", "edit")

# The settings' negative prompt when the artist leaves it as it is.
DEFAULT_NEGATIVE_PROMPT = "oversaturated color, ugly, tiling, low quality, noisy"

# Exit codes and their kinds, as the engine documents them.
EXIT_ENGINE_ERROR = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL_NOT_FOUND = 3
EXIT_DEVICE = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_OUTPUT = 6
EXIT_JOB_FILE = 7
EXIT_CANCELLED = 130

EXIT_KINDS = {
    EXIT_ENGINE_ERROR: "engine_error",
    EXIT_BAD_INPUT: "bad_input",
    EXIT_MODEL_NOT_FOUND: "model_not_found",
    EXIT_DEVICE: "device",
    EXIT_OUT_OF_MEMORY: "out_of_memory",
    EXIT_OUTPUT: "output",
    EXIT_JOB_FILE: "job_file",
    EXIT_CANCELLED: "cancelled",
}
