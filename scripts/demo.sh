#!/usr/bin/env bash
# Installs what is missing, then runs the demo on a private embedded stack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${STEPSTREAM_VENV:-.venv}/bin/stepstream" demo "$@"
