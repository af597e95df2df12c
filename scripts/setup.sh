#!/usr/bin/env bash
# Creates the engine's environment in .venv/ (Python 3.11+, CPU PyTorch) and installs the
# engine's and the tests' requirements. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-engine.txt -r requirements-server.txt -r requirements-dev.txt
echo "engine environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
# The Khronos glTF validator (an npm package, run with Node.js): the tests check with it that every
# GLB the engine writes is valid. Kept in the ignored .tools/ folder; its test is skipped without node.
GLTF_VALIDATOR_VERSION=2.0.0-dev.3.10
if command -v npm >/dev/null 2>&1; then
  if ! grep -qs "\"version\": \"$GLTF_VALIDATOR_VERSION\"" .tools/node_modules/gltf-validator/package.json; then
    npm install --prefix .tools --save-exact --no-audit --no-fund --silent "gltf-validator@$GLTF_VALIDATOR_VERSION"
  fi
  echo "glTF validator ready: .tools/node_modules/gltf-validator $GLTF_VALIDATOR_VERSION"
else
  echo "npm not found: the glTF validator is not installed (install Node.js and npm, then run this again)" >&2
fi
