"""A build step: start the image's server once, call it, stop it.

    python lessons/04-docker/start_once.py http lessons/02-fastapi/app.py
    python lessons/04-docker/start_once.py grpc lessons/03-grpc/server.py

Two things come of it:
- A server that cannot start, answer or stop cleanly fails the build, not the first deployment.
- Python leaves bytecode (`__pycache__/*.pyc`) for exactly the modules the server imports. The
  Dockerfile tells pip not to compile anything (`--no-compile`): bytecode for all ~3,000 installed
  modules would be 41 MB, and with none at all every start compiles them again (the notebook
  measures how much slower that starts).
Run it as root, so the bytecode can be written into /opt/venv, which the server's user cannot change.
"""

import json
import sys
import urllib.request

from course.model import read_metadata
from course.server import grpc_ready, http_ready, start_server


def predict_once(url: str) -> None:
    """One real prediction, so the code behind a request is imported (and compiled) too."""
    ranges = read_metadata()["feature_ranges"]
    row = {name: (low + high) / 2 for name, (low, high) in ranges.items()}
    request = urllib.request.Request(url + "/predict/batch", data=json.dumps({"instances": [row]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        print("start_once: a prediction:", response.read().decode())


def main(kind: str, script: str) -> int:
    ready = grpc_ready if kind == "grpc" else http_ready()
    # An empty PYTHONDONTWRITEBYTECODE counts as unset: the server, and only it, writes bytecode.
    server = start_server(script, ready=ready, timeout=60, env={"PYTHONDONTWRITEBYTECODE": ""})
    if kind == "http":
        predict_once(server.url)
    code = server.stop()
    print(f"start_once: {script} answered, then exited with {code} on SIGTERM")
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
