#!/usr/bin/env bash
# Create Ray's own virtualenv (.cache/ray-venv) with the versions pinned next to this script.
# Lesson 09 serves the course model on Ray Serve with it (lessons/09-throughput/ray_app.py).
#
#   make ray      # runs this: a few minutes and ~700 MB the first time, instant afterwards
#
# Its own, because Ray pins its gRPC, protobuf and aiohttp stacks, and is large; two virtualenvs are how two
# services with different dependencies share a machine (tools/mlserver/setup.sh does the same for MLServer).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${RAY_VENV:-$REPO/.cache/ray-venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

# Reinstall only when requirements.txt changes (the same trick as the Makefile's .venv/.installed).
if [ "$VENV/.installed" -nt "$HERE/requirements.txt" ]; then
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
# The course helpers (course.model: the checked model loading), as the Makefile installs them in .venv.
"$VENV/bin/python" -m pip install --quiet --no-deps -e "$REPO"
"$VENV/bin/python" -c "import ray; print('ray', ray.__version__)"
touch "$VENV/.installed"
