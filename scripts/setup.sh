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
