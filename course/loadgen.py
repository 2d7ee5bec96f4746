"""A small closed-loop load generator, run by bench.py as its own process.

    python course/loadgen.py http 127.0.0.1:8000 /predict body.json --concurrency 4 --seconds 2
    python course/loadgen.py grpc 127.0.0.1:50051 Predict request.bin --concurrency 4 --seconds 2

prints one JSON line: {"requests": ..., "errors": ..., "seconds": ..., "p50_ms": ..., "p99_ms": ...}

Closed loop: `concurrency` threads each send a request, wait for its answer, and send the next one
at once. Its own process, so that it does not share a GIL with the server, or with the notebook.
It is used for gRPC (no wrk for HTTP/2), and for HTTP only when wrk is not installed. It is much
slower than wrk: Python builds, sends and parses every request, and that costs CPU time the server
then does not get. bench.py reports how much CPU each load generator used.
"""

import argparse
import http.client
import json
import statistics
import threading
import time
from pathlib import Path


def http_caller(address, path, body):
    """One keep-alive connection per thread; reconnects when the server closes it (gunicorn's sync workers do)."""
    host, port = address.rsplit(":", 1)

    def make_call():
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Content-Type": "application/json"}

        def call():
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            response.read()
            if response.will_close:
                connection.close()  # the next request() opens a new connection
            return response.status == 200
        return call
    return make_call


def grpc_caller(address, method, body):
    """All threads share one channel: gRPC multiplexes their calls over one HTTP/2 connection."""
    import grpc

    from course import import_lesson
    model_pb2 = import_lesson("03-grpc/model_pb2.py")
    model_pb2_grpc = import_lesson("03-grpc/model_pb2_grpc.py")

    channel = grpc.insecure_channel(address)
    stub = model_pb2_grpc.ModelServiceStub(channel)
    rpc = getattr(stub, method)
    request_type = model_pb2.PredictRequest if method == "Predict" else model_pb2.PredictBatchRequest
    request = request_type.FromString(body)

    def make_call():
        def call():
            try:
                rpc(request, timeout=10)
                return True
            except grpc.RpcError:
                return False
        return call
    return make_call


def closed_loop(make_call, concurrency, seconds):
    latencies, errors = [], [0]  # list.append is atomic under the GIL: no lock needed
    start_line = threading.Barrier(concurrency + 1)

    def worker():
        call = make_call()
        call()  # warm-up: connect before the clock starts
        start_line.wait()
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            ok = call()
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors[0] += 1

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    deadline = float("inf")
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    deadline = started + seconds
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {"requests": len(latencies), "errors": errors[0], "seconds": elapsed,
            "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("protocol", choices=["http", "grpc"])
    parser.add_argument("address", help="host:port")
    parser.add_argument("target", help="URL path (http) or method name: Predict, PredictBatch (grpc)")
    parser.add_argument("body", type=Path, help="file holding the request body (JSON, or a serialized protobuf)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args(argv)
    caller = http_caller if args.protocol == "http" else grpc_caller
    make_call = caller(args.address, args.target, args.body.read_bytes())
    print(json.dumps(closed_loop(make_call, args.concurrency, args.seconds)))


if __name__ == "__main__":
    main()
