#!/usr/bin/env bash
# The project's test command: sets up the engine's environment (and Blender's, for the
# add-on tests) if needed, then runs every test. Needs no GPU and no network beyond PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
# One intra-op thread: the tiny test models gain little from two, and with two threads
# PyTorch slows down many times over whenever anything else competes for the cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Two test processes, each test file whole in one (its module fixtures, e.g. a server, made once):
# on a 2-core machine this halves the suite's wall time; CSD_TEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest tests --ignore=tests/blender -q -n "${CSD_TEST_WORKERS:-2}" --dist loadfile "$@"
if [ -f scripts/test_blender.sh ]; then
  bash scripts/test_blender.sh
fi
