#!/usr/bin/env bash
# MLServer serving models/iris.joblib under the name "iris": the yardstick lesson 08 compares its servers with.
#
#   make mlserver                                             # once: MLServer's own virtualenv
#   PORT=8080 GRPC_PORT=8081 lessons/08-open-inference/mlserver/serve.sh
#
# No Python of ours: iris/model-settings.json names the artifact and MLServer's sklearn runtime, nothing else
# (no hand-written inputs or outputs: the lesson shows what MLServer then says about the model).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${MLSERVER_VENV:-$HERE/../../../.cache/mlserver-venv}"
if [ ! -x "$VENV/bin/mlserver" ]; then
    echo "MLServer is not installed: run make mlserver first" >&2
    exit 1
fi
export MLSERVER_HOST="${HOST:-127.0.0.1}" MLSERVER_HTTP_PORT="${PORT:-8080}" MLSERVER_GRPC_PORT="${GRPC_PORT:-8081}"
exec "$VENV/bin/mlserver" start "$HERE"
