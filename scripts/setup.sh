#!/usr/bin/env bash
# Creates .venv (if missing) and installs stepstream with its torch and dev extras.
# The CPU build of torch is pinned first so no CUDA packages are pulled in.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${STEPSTREAM_VENV:-.venv}"
# System parts some tests need: Debian's redis-server (the ACL line is checked on it; the
# multi-node tests run it in network namespaces) and chromium (the dashboard's browser
# tests; Playwright never downloads a browser here). Installed where we can (root with
# apt-get); elsewhere those tests skip and name this line.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not installed: ${missing[*]} (their tests skip): sudo apt-get install -y ${missing[*]}" >&2
  fi
fi
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
