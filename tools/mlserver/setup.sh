#!/usr/bin/env bash
# Create MLServer's own virtualenv (.cache/mlserver-venv) with the versions pinned next to this script.
# Lessons 07 and 08 serve the course model with it (their mlserver/ folders hold its settings).
#
#   make mlserver      # runs this: about a minute the first time, instant afterwards
#
# Its own, because MLServer pins FastAPI, starlette and protobuf to versions the course's .venv
# does not have; two virtualenvs are how two services with different dependencies share a machine.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${MLSERVER_VENV:-$REPO/.cache/mlserver-venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Reinstall only when requirements.txt changes (the same trick as the Makefile's .venv/.installed).
if [ "$VENV/.installed" -nt "$HERE/requirements.txt" ]; then
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
"$VENV/bin/mlserver" --version
touch "$VENV/.installed"
