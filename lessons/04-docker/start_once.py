"""A build step: start the image's server once, make one prediction, stop it.

    python lessons/04-docker/start_once.py http lessons/02-fastapi/app.py
    python lessons/04-docker/start_once.py grpc lessons/03-grpc/server.py

Two things come of it:
- A server that cannot start, predict or stop cleanly fails the build, not the first deployment.
- Python leaves bytecode (`__pycache__/*.pyc`) for exactly the modules the server imports. The
  Dockerfile tells pip not to compile anything (`--no-compile`): bytecode for all ~3,000 installed
  modules would be 41 MB, and with none at all every start compiles them again (the notebook
  measures how much slower that starts).
Run it as root, so the bytecode can be written into /opt/venv, which the server's user cannot change.

It needs only the standard library, plus the gRPC libraries the gRPC image installs anyway: the image
carries the model loader (course/model.py) but none of the course's test helpers.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from healthcheck import grpc_ok, http_ok  # the image's own HEALTHCHECK, from this folder

READY_WITHIN = 60  # seconds; generous, as a build machine may be busy and this start reads every library from disk


def free_port() -> int:
    # Not the image's 8000 or 50051: a build may share the machine's network, where those can be taken.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def predict_http(port: int, metadata: dict, row: list[float]) -> str:
    body = json.dumps({"instances": [dict(zip(metadata["features"], row))]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict/batch", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["predictions"][0]["label"]


def predict_grpc(port: int, metadata: dict, row: list[float]) -> str:
    import grpc
    import model_pb2  # the server's generated stubs, from its folder (see main)
    import model_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        return stub.Predict(model_pb2.PredictRequest(features=row), timeout=10).label


def main(kind: str, script: str) -> None:
    ready, predict = {"http": (http_ok, predict_http), "grpc": (grpc_ok, predict_grpc)}[kind]
    sys.path.insert(0, str(Path(script).parent))
    metadata = json.loads(Path(os.environ["MODEL_PATH"]).with_suffix(".json").read_text())
    # One real row: the middle of each feature's training range.
    row = [sum(metadata["feature_ranges"][name]) / 2 for name in metadata["features"]]

    port = free_port()
    # An empty PYTHONDONTWRITEBYTECODE counts as unset: the server, and only it, writes bytecode.
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "PYTHONDONTWRITEBYTECODE": ""}
    server = subprocess.Popen([sys.executable, script], env=env)  # its log goes to the build's output
    try:
        deadline = time.monotonic() + READY_WITHIN
        while not ready(str(port)):  # polled: a fixed sleep is either too short or a waste
            if server.poll() is not None:
                sys.exit(f"start_once: FAILED: {script} exited with {server.returncode} before it was ready")
            if time.monotonic() > deadline:
                sys.exit(f"start_once: FAILED: {script} was not ready within {READY_WITHIN} s")
            time.sleep(0.1)
        label = predict(port, metadata, row)
        if label not in metadata["classes"]:
            sys.exit(f"start_once: FAILED: {script} predicted {label!r}, not one of {metadata['classes']}")
        print(f"start_once: {script} predicted {label!r} for {row}")
    finally:
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends; a no-op if it has already exited
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            code = "nothing: it ignored SIGTERM for 30 s and was killed"
    if code != 0:
        sys.exit(f"start_once: FAILED: {script} exited with {code} on SIGTERM, not 0")
    print(f"start_once: {script} exited with 0 on SIGTERM")


if __name__ == "__main__":
    main(*sys.argv[1:3])
