#!/usr/bin/env bash
# The Python that tests/export.rs checks `kiln export`'s models with: a venv at
# target/pyenv (target/ is not tracked) with onnx, onnxruntime and numpy from PyPI
# (tests/onnx/requirements.txt). Idempotent, and quick when the venv already imports them:
# then pip is not run at all.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyenv
python="$venv/bin/python"
imports='import onnx, onnxruntime, numpy'
if [ -x "$python" ] && "$python" -c "$imports" 2>/dev/null; then
  exit 0
fi
echo "onnx-venv: creating $venv with onnx, onnxruntime and numpy" >&2
# Debian's python3 keeps venv (and its pip) in a package of its own.
if ! python3 -m venv "$venv"; then
  apt-get update -qq && apt-get install -y -qq python3-venv
  python3 -m venv "$venv"
fi
"$python" -m pip install --quiet --disable-pip-version-check -r tests/onnx/requirements.txt
"$python" -c "$imports"
