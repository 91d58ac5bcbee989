#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (unit, integration, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${STEPSTREAM_VENV:-.venv}/bin/python" -m pytest "$@"
