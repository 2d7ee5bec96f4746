"""A build step: start the image's server once, call it, stop it.

    python lessons/04-docker/start_once.py http lessons/02-fastapi/app.py
    python lessons/04-docker/start_once.py grpc lessons/03-grpc/server.py

Two things come of it:
- A server that cannot start, answer or stop cleanly fails the build, not the first deployment.
- Python leaves bytecode (`__pycache__/*.pyc`) for exactly the modules the server imports. The
  Dockerfile tells pip not to compile anything (`--no-compile`): bytecode for all ~3,000 installed
  modules is 41 MB, for the ~1,000 this server imports 27 MB, and with none at all every start
  compiles them again (5 s instead of under 2 s). The lesson's notebook measures all three.
Run it as root, so the bytecode can be written into /opt/venv, which the server's user cannot change.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from healthcheck import grpc_ok, http_ok  # this folder is on sys.path: it holds this script

from course.model import read_metadata


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def predict_once(port: int) -> None:
    """One real prediction, so the code behind a request is imported (and compiled) too."""
    ranges = read_metadata()["feature_ranges"]
    row = {name: (low + high) / 2 for name, (low, high) in ranges.items()}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict/batch", method="POST",
                                     data=json.dumps({"instances": [row]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        print("start_once: a prediction:", response.read().decode())


def main(kind: str, server: str) -> int:
    port = free_port()
    # An empty PYTHONDONTWRITEBYTECODE counts as unset: this one process writes bytecode.
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", PYTHONDONTWRITEBYTECODE="")
    process = subprocess.Popen([sys.executable, server], env=env)
    ready = {"http": http_ok, "grpc": grpc_ok}[kind]
    deadline = time.monotonic() + 60
    while not ready(str(port)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            print(f"start_once: {server} did not answer its health check", file=sys.stderr)
            return 1
        time.sleep(0.1)
    if kind == "http":
        predict_once(port)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    print(f"start_once: {server} answered, then exited with {code} on SIGTERM")
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
