#!/usr/bin/env bash
# Serve models/iris.joblib with MLServer, a production model server, over the V2 inference protocol.
#
#   make mlserver                # once: MLServer's own virtualenv
#   PORT=8080 lessons/07-choosing/mlserver/serve.sh
#   curl -s 127.0.0.1:8080/v2/models/iris-classifier/infer -H 'content-type: application/json' \
#        -d '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}'
#
# No Python of ours: iris-classifier/model-settings.json names the artifact and the runtime
# (mlserver_sklearn), settings.json the server. Ready when GET /v2/health/ready answers 200.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
VENV="${MLSERVER_VENV:-$REPO/.cache/mlserver-venv}"
if [ ! -x "$VENV/bin/mlserver" ]; then
    echo "MLServer is not installed: run make mlserver first" >&2
    exit 1
fi

# The course's conventions (HOST, PORT) mapped onto MLServer's environment variables. Its gRPC
# endpoint is not used here: port 0 lets the system pick a free one, so it never clashes.
export MLSERVER_HOST="${HOST:-127.0.0.1}"
export MLSERVER_HTTP_PORT="${PORT:-8080}"
export MLSERVER_GRPC_PORT="${MLSERVER_GRPC_PORT:-0}"
exec "$VENV/bin/mlserver" start "$HERE"
