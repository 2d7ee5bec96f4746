#!/usr/bin/env bash
# A virtualenv of its own for an engine that one lesson needs: .cache/NAME-venv, from tools/NAME/requirements.txt.
#
#   tools/engine-venv.sh mlserver    # `make mlserver`: MLServer and tritonclient (lessons 07-09), about a minute once
#   tools/engine-venv.sh ray         # `make ray`: Ray Serve (lesson 09), a few minutes and ~700 MB once
#
# Its own, because each engine pins FastAPI, starlette, protobuf or gRPC to versions the course's .venv does not
# have; two virtualenvs are how two services with different dependencies share a machine. The course helpers
# (course.model: the checked model loading) go in too, as the Makefile installs them in .venv.
set -euo pipefail

NAME="${1:?usage: tools/engine-venv.sh mlserver|ray}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REQUIREMENTS="$REPO/tools/$NAME/requirements.txt"
VENV="$REPO/.cache/$NAME-venv"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Reinstall only when the requirements change (the same trick as the Makefile's .venv/.installed).
if [ "$VENV/.installed" -nt "$REQUIREMENTS" ]; then
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
"$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
"$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E "^($NAME) " || true
touch "$VENV/.installed"
