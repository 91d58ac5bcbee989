#!/usr/bin/env bash
# Creates .venv (if missing) and installs stepstream with its torch and dev extras.
# The CPU build of torch is pinned first so no CUDA packages are pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STEPSTREAM_VENV:-.venv}"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.stepstream-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing dependencies into $VENV (first run takes a few minutes)" >&2
  # shellcheck disable=SC2086
  "${PIP[@]}" install torch==2.13.0 ${STEPSTREAM_TORCH_PIP_ARGS:-}
  "${PIP[@]}" install -e '.[torch,dev]'
  touch "$stamp"
fi
