#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (unit, integration, e2e).
#   scripts/test.sh           everything: what CI runs
#   scripts/test.sh --fast    the pure tier only (no broker, Redis or workers): about a minute
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
args=()
for arg in "$@"; do
  if [ "$arg" = "--fast" ]; then
    args+=(-m "not integration" tests/unit)
  else
    args+=("$arg")
  fi
done
exec "${STEPSTREAM_VENV:-.venv}/bin/python" -m pytest "${args[@]+"${args[@]}"}"
