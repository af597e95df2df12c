#!/usr/bin/env bash
# The add-on's tests with real Blender (bpy from PyPI, headless): 4.2 LTS and 5.0.1.
# Creates .venv-blender42 and .venv-blender50 if missing, builds nothing by hand (the tests
# run build.py, validate and install the zip with Blender's own CLI), and uses the engine's
# .venv (scripts/setup.sh) for the real-engine tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
BPY42=${BPY42:-4.2.23}
BPY50=${BPY50:-5.0.1}

make_venv() {  # dir, bpy version
  if [ ! -x "$1/bin/python" ] || ! "$1/bin/python" -c "import bpy" >/dev/null 2>&1; then
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q --disable-pip-version-check "bpy==$2" "numpy<2" pytest
  fi
}
make_venv .venv-blender42 "$BPY42"
make_venv .venv-blender50 "$BPY50"

export HF_HUB_OFFLINE=1
# One tiny diffusion prior for both Blender versions (unless the engine ships its bundled one).
if [ -x .venv/bin/python ] && [ -f tests/tiny_models.py ] && [ ! -f engine/prior/bundled/model_index.json ]; then
  export CSD_TEST_PRIOR=${CSD_TEST_PRIOR:-$(mktemp -d)/tiny-prior}
  if [ ! -f "$CSD_TEST_PRIOR/model_index.json" ]; then
    .venv/bin/python -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); \
from tiny_models import make_tiny_pixel_prior; make_tiny_pixel_prior(Path(sys.argv[1]))" "$CSD_TEST_PRIOR"
  fi
fi

# Both Blender versions at once (separate processes, user folders and servers): each mostly waits
# on Blender or on an engine process, so together they take little longer than the longer one.
log42=$(mktemp)
# 4.2 LTS: everything but the multi-job real-engine scenarios (one real texture job instead).
CSD_BLENDER_HEAVY=0 .venv-blender42/bin/python -m pytest tests/blender -q -p no:cacheprovider "$@" >"$log42" 2>&1 &
pid42=$!
# 5.0.1: everything, with texture+undo+edit, generate and cancel through the real engine.
echo "== Blender add-on tests, bpy $BPY50"
status=0
CSD_BLENDER_HEAVY=1 .venv-blender50/bin/python -m pytest tests/blender -q -p no:cacheprovider "$@" || status=$?
status42=0
wait $pid42 || status42=$?
echo "== Blender add-on tests, bpy $BPY42"
cat "$log42"
rm -f "$log42"
[ $status -ne 0 ] && exit $status
exit $status42
