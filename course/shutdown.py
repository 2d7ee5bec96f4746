"""Measure what a planned stop (SIGTERM) does to a busy server's requests, seen from a load balancer.

    from course.shutdown import measure, start, table
    server = start("FastAPI (02)", drain_seconds=0.5)  # DRAIN_SECONDS=0.5 python lessons/02-fastapi/app.py
    print(table({"FastAPI (02)": measure(server, "rest")}))

64 clients send predictions in a loop: a new connection per request (REST), or calls on one channel (gRPC).
A poller asks the readiness check every 50 ms (GET /health is 200; grpc.health.v1 says SERVING) and, as a
load balancer would, the clients send nothing new once it has seen "not ready". After 0.5 s of this, the
server gets SIGTERM. A request is *lost* if it was sent and did not come back as the in-process model's
answer; one refused before it was sent is not lost: a load balancer or client sends it elsewhere.
"""

from __future__ import annotations

import functools
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy

from course import import_lesson
from course.model import load_model
from course.server import BackgroundServer, free_port, grpc_ready, http_ready

CLIENTS = 64
POLL_EVERY = 0.05
LOAD_SECONDS = 0.5
REQUEST_TIMEOUT = 2  # so a client thread outlives a dead server by 2 s at most
EXIT_TIMEOUT = 6     # after SIGTERM; then SIGKILL, and the exit code says so
TOLERANCE = {"rest": 1e-6, "grpc": 1e-5}  # JSON carries float64, protobuf float32
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 5.1, 1.8]]

# What follows `python` on the command line, and the protocol: the production servers, then one that is not.
SERVERS = {
    "gunicorn + Flask (01)": (["-m", "gunicorn", "-c", "lessons/01-flask/gunicorn.conf.py"], "rest"),
    "FastAPI (02)": (["lessons/02-fastapi/app.py"], "rest"),
    "FastAPI + metrics (06)": (["lessons/06-monitoring/app.py"], "rest"),
    "gRPC (03)": (["lessons/03-grpc/server.py"], "grpc"),
    "gRPC + metrics (06)": (["lessons/06-monitoring/grpc_server.py"], "grpc"),
    "Flask dev server (01)": (["lessons/01-flask/app.py"], "rest"),
    # gunicorn.conf.py with its drain switched off: what gunicorn's own SIGTERM does to the requests waiting
    "gunicorn, no drain (01)": (["-m", "gunicorn", "-c", "lessons/01-flask/gunicorn.conf.py"], "rest", {"DRAIN_SECONDS": "0"}),
}
PRODUCTION = [name for name in SERVERS if "dev server" not in name and "no drain" not in name]


class NotSent(Exception):
    """The request never left: the connection was refused, or gRPC could not connect."""


class BadReply(Exception):
    """An answer came back, but not 200 / OK with the model's prediction."""


@dataclass
class Stop:
    sent: int = 0
    answered: int = 0  # with the model's answer
    lost: int = 0      # sent, then an error, a timeout or a wrong answer
    refused: int = 0   # before being sent
    exit_code: int | None = None
    seconds_to_exit: float | None = None  # None: it had to be killed
    not_ready_after: float | None = None  # seconds from SIGTERM until the poller saw "not ready"
    reasons: Counter = field(default_factory=Counter)  # why requests were lost


def start(name: str, drain_seconds: float = 0.5) -> BackgroundServer:
    """Start one of SERVERS with DRAIN_SECONDS set, and wait until it is ready."""
    command, protocol, *settings = SERVERS[name]
    env = {"DRAIN_SECONDS": str(drain_seconds), "METRICS_PORT": str(free_port()),  # only lesson 06's gRPC reads it
           **(settings[0] if settings else {})}
    return BackgroundServer([sys.executable, *command], env=env,
                            ready=grpc_ready if protocol == "grpc" else http_ready()).start()


def rest_client(server: BackgroundServer):
    features = _model().features

    def predict(flower):
        connection = http.client.HTTPConnection(server.host, server.port, timeout=REQUEST_TIMEOUT)
        try:
            try:
                connection.connect()
            except OSError as error:
                raise NotSent from error
            connection.request("POST", "/predict", json.dumps(dict(zip(features, flower))),
                               {"Content-Type": "application/json", "Connection": "close"})
            response = connection.getresponse()
            if response.status != 200:
                raise BadReply(f"HTTP {response.status}")
            reply = json.loads(response.read())
        finally:
            connection.close()
        return reply["prediction"], reply["probabilities"]
    return predict, http_ready(), lambda: None


def grpc_client(server: BackgroundServer):
    import grpc
    model_pb2 = import_lesson("03-grpc/model_pb2.py")
    model_pb2_grpc = import_lesson("03-grpc/model_pb2_grpc.py")

    channel = grpc.insecure_channel(server.address)  # one channel for every call, as a real client keeps
    stub = model_pb2_grpc.ModelServiceStub(channel)

    def predict(flower):
        try:
            reply = stub.Predict(model_pb2.PredictRequest(features=flower), timeout=REQUEST_TIMEOUT)
        except grpc.RpcError as error:
            # UNAVAILABLE means "could not connect" (never sent) or "cut off mid-call": the details tell which.
            if error.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
                raise NotSent from error
            raise BadReply(error.code().name) from error
        return reply.class_index, reply.probabilities
    return predict, grpc_ready, channel.close


def measure(server: BackgroundServer, protocol: str) -> Stop:
    """Load `server` from CLIENTS threads, SIGTERM it after LOAD_SECONDS, count what became of each request."""
    predict, ready, close = (grpc_client if protocol == "grpc" else rest_client)(server)
    expected = _model().estimator.predict_proba(FLOWERS)
    result, lock = Stop(), threading.Lock()
    not_ready, finished = threading.Event(), threading.Event()
    signalled_at = float("inf")

    def poll():
        while not finished.is_set():
            try:
                is_ready = ready(server)
            except Exception:  # any answer but "ready" is "not ready"
                is_ready = False
            if not is_ready:
                result.not_ready_after = time.monotonic() - signalled_at  # negative: before SIGTERM
                return not_ready.set()
            finished.wait(POLL_EVERY)

    def client(number):
        flower, want = FLOWERS[number % len(FLOWERS)], expected[number % len(FLOWERS)]
        while not (not_ready.is_set() or finished.is_set()):  # nothing new for a server that is not ready
            try:
                prediction, probabilities = predict(flower)
                if prediction != want.argmax() or len(probabilities) != len(want) or not numpy.allclose(
                        probabilities, want, rtol=0, atol=TOLERANCE[protocol]):
                    raise BadReply("wrong answer")
                reason = None
            except NotSent:
                with lock:
                    result.refused += 1
                time.sleep(0.01)  # a client that retries backs off; no busy loop against a closed port
                continue
            except Exception as error:  # reset, timeout, bad status: lost
                reason = str(error) if isinstance(error, BadReply) else type(error).__name__
            with lock:
                result.sent += 1
                if reason:
                    result.lost += 1
                    result.reasons[reason] += 1
                else:
                    result.answered += 1

    threads = [threading.Thread(target=poll)] + [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(LOAD_SECONDS)
    signalled_at = time.monotonic()
    server.signal(signal.SIGTERM)  # what `docker stop` and the kubelet send
    try:
        result.exit_code = server.process.wait(EXIT_TIMEOUT)
        result.seconds_to_exit = time.monotonic() - signalled_at
    except subprocess.TimeoutExpired:
        result.exit_code = server.stop(grace=0)  # SIGKILL
    finished.set()
    deadline = time.monotonic() + REQUEST_TIMEOUT + 1
    for thread in threads:
        thread.join(max(0, deadline - time.monotonic()))
    server.stop()
    close()
    return result


def measure_all(names: list[str], drain_seconds: float = 0.5) -> dict[str, Stop]:
    """Start the servers side by side (starting is the slow part), then measure them one at a time."""
    with ThreadPoolExecutor(len(names)) as pool:
        starting = {name: pool.submit(start, name, drain_seconds) for name in names}
    try:
        return {name: measure(future.result(), SERVERS[name][1]) for name, future in starting.items()}
    finally:
        for future in starting.values():
            if future.exception() is None:
                future.result().stop()


def table(results: dict[str, Stop]) -> str:
    lines = [f"{'server':23}  {'sent':>5}  {'answered':>8}  {'lost':>5}  {'refused before send':>19}  {'exit code':>9}"
             f"  {'exited after':>12}"]
    for name, r in results.items():
        exited = "killed" if r.seconds_to_exit is None else f"{r.seconds_to_exit:.1f} s"
        lines.append(f"{name:23}  {r.sent:5}  {r.answered:8}  {r.lost:5}  {r.refused:19}  {r.exit_code!s:>9}"
                     f"  {exited:>12}")
    return "\n".join(lines)


@functools.cache
def _model():
    return load_model()
