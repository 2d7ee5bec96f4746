"""Start a lesson server as a real process, wait until it is ready, and always stop it.

    from course.server import start_server
    server = start_server("lessons/00-why-serve/server.py")   # picks a free port
    requests.post(server.url + "/predict", json=row)
    server.stop()

or, where one block holds the whole use (tests):

    with start_server("lessons/01-flask/app.py") as server:
        ...

The server learns its port from the `PORT` environment variable (and `HOST`, `MODEL_PATH`),
exactly as it would in a container. Readiness is polled, never guessed with a sleep; if the
process dies while starting, the error carries its own log.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

from course import REPO

_running: set["BackgroundServer"] = set()


class ServerFailedToStart(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_ready(path: str = "/health") -> Callable[["BackgroundServer"], bool]:
    def ready(server: "BackgroundServer") -> bool:
        try:
            with urllib.request.urlopen(server.url + path, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
    return ready


def grpc_ready(server: "BackgroundServer") -> bool:
    """Ready when the standard gRPC health service answers SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


class BackgroundServer:
    def __init__(self, command: Sequence[str], *, port: int | None = None, env: dict | None = None,
                 ready: Callable[["BackgroundServer"], bool] | None = None, timeout: float = 30,
                 cwd: Path | str = REPO, host: str = "127.0.0.1"):
        self.command = [str(part) for part in command]
        self.host = host
        self.port = port or free_port(host)
        self.env = {**os.environ, "HOST": host, "PORT": str(self.port), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.ready = ready or http_ready()
        self.timeout = timeout
        self.cwd = Path(cwd)
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False)
        self._final_log: str | None = None  # kept in memory once the server has stopped; the file is deleted

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return Path(self._log.name).read_text(errors="replace")

    def start(self) -> "BackgroundServer":
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            # Own process group, so stop() also reaches workers (gunicorn) the server forks.
            start_new_session=(os.name == "posix"),
        )
        _running.add(self)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._forget()
                raise ServerFailedToStart(
                    f"{' '.join(self.command)} exited with code {self.process.returncode} "
                    f"before it was ready. Its log:\n{self.log()}")
            if self.ready(self):
                return self
            time.sleep(0.05)
        self.stop()
        raise ServerFailedToStart(
            f"{' '.join(self.command)} was not ready on port {self.port} after {self.timeout} s. "
            f"Its log:\n{self.log()}")

    def signal(self, sig: int = signal.SIGTERM) -> None:
        """Send `sig` to the server's main process only, as `docker stop` and the kubelet do (gunicorn's master
        then tells its workers itself)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)

    def _signal_group(self, sig: int) -> None:
        if self.process and self.process.poll() is None:
            if os.name == "posix":
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM the whole process group, give it `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait()
        self._forget()
        return self.process.returncode

    def _forget(self) -> None:
        _running.discard(self)
        self._log.close()
        if self._final_log is None:
            self._final_log = self.log()
            Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> "BackgroundServer":
        return self if self.process else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if not self.process or self.process.poll() is not None else f"pid {self.pid}"
        return f"<server {Path(self.command[-1]).name} on {self.url} ({state})>"


def start_server(script: str | Path | Sequence[str], **options) -> BackgroundServer:
    """Start a lesson script (a path relative to the repo, run with this Python) or any command."""
    if isinstance(script, (str, Path)):
        command = [sys.executable, str(REPO / script)]
    else:
        command = list(script)
    return BackgroundServer(command, **options).start()


@atexit.register
def _stop_all() -> None:
    # A notebook kernel that is shut down, or a test run that crashes, leaves no server behind.
    for server in list(_running):
        server.stop(grace=3)
