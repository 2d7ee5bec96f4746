"""Lesson 09's benchmark (course plumbing): batching, workers and Ray Serve against MLServer, on this machine.

    python -m course.bench_throughput              # `make bench`: rounds of 5 s, about 4 minutes
    python -m course.bench_throughput --seconds 2 --rounds 1   # shorter and noisier

Every server is a real process on 127.0.0.1, started here and stopped at the end, and must first give the
in-process model's answer. wrk (course/post.lua) then keeps C single-row requests in flight for a fixed time.
Rounds run the targets in turn, forwards then backwards, so that whatever else the machine does slows all of
them alike; each figure is the median over the rounds. Ray Serve is measured alone at the end: its idle
processes take CPU from whoever runs beside them. The notebook of lesson 09 runs the same functions, briefly.

The targets of issue #15, checked at the end (exit code 1 if missed), against the better of MLServer plain and
MLServer with adaptive batching, all at 64 requests in flight:
  lesson 09, batching, a worker per core (WORKERS=2): >= 3x its requests/s, p99 <= 30 ms, no errors
  lesson 02, no batching, the model run by onnxruntime (ENGINE=onnxruntime): >= 1x its requests/s, p99 <= 50 ms
Lesson 02 with its default engine, scikit-learn, is measured and printed beside it: the same server, another library
running the model.
"""

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from prometheus_client.parser import text_string_to_metric_families

from course import REPO, bench
from course.server import BackgroundServer, free_port, http_ready, start_server

LESSON = REPO / "lessons/09-throughput"
MLSERVER_VENV = REPO / ".cache/mlserver-venv"
RAY_PYTHON = REPO / ".cache/ray-venv/bin/python"
INFER = "/v2/models/iris-classifier/infer"
CONCURRENCY = 64
TARGETS = {"ratio": 3.0, "p99_ms": 30.0, "unbatched_ratio": 1.0, "unbatched_p99_ms": 50.0}


def uvicorn(*options, env=None):
    """`uvicorn server:app ...` from the lesson folder: how a learner picks workers, loop and parser by hand."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "server:app", "--port", str(port), "--no-access-log", *options]
    return BackgroundServer(command, port=port, cwd=LESSON, env=env).start()


def mlserver(folder):
    """MLServer serving `folder` (settings.json + iris-classifier/model-settings.json), as lesson 07's serve.sh."""
    if not (MLSERVER_VENV / "bin/mlserver").exists():
        raise SystemExit("MLServer is not installed: run `make mlserver`")
    port = free_port()
    env = {"MLSERVER_HOST": "127.0.0.1", "MLSERVER_HTTP_PORT": str(port), "MLSERVER_GRPC_PORT": "0"}
    return BackgroundServer([MLSERVER_VENV / "bin/mlserver", "start", folder], port=port, env=env, timeout=90,
                            ready=http_ready("/v2/models/iris-classifier/ready")).start()


def ray_serve(temp_dir):
    """ray_app.py in Ray's own virtualenv; Ray keeps its sockets and logs in temp_dir (default /tmp/ray)."""
    if not RAY_PYTHON.exists():
        raise SystemExit("Ray is not installed: run `make ray`")
    return start_server([RAY_PYTHON, LESSON / "ray_app.py"], ready=http_ready("/health"), timeout=120,
                        env={"RAY_TMPDIR": str(temp_dir)})


# name -> (how to start it, the path to POST to, the body of one row)
SERVERS = {
    "lesson 02, no batching": (lambda: start_server("lessons/02-fastapi/app.py"), "/predict", "rest"),
    "lesson 02, onnxruntime": (lambda: start_server("lessons/02-fastapi/app.py", env={"ENGINE": "onnxruntime"}),
                               "/predict", "rest"),
    "lesson 09, batching": (lambda: start_server(LESSON / "server.py"), "/predict", "rest"),
    "lesson 09, h11": (lambda: uvicorn("--http", "h11"), "/predict", "rest"),
    "lesson 09, 2 workers": (lambda: start_server(LESSON / "server.py", env={"WORKERS": "2"}), "/predict", "rest"),
    "lesson 09, uvicorn --workers 2": (lambda: uvicorn("--workers", "2"), "/predict", "rest"),
    "MLServer": (lambda: mlserver(REPO / "lessons/07-choosing/mlserver"), INFER, "v2"),
    "MLServer, adaptive batching": (lambda: mlserver(LESSON / "mlserver-batching"), INFER, "v2"),
}
ROW = bench.ONE_ROW


def check(name, server):
    """The in-process model's answer, or no measurement: a fast wrong answer is worth nothing."""
    path, kind = SERVERS.get(name, (None, "/predict", "rest"))[1:]
    read = bench.read_v2 if kind == "v2" else bench.read_rest
    bench.check(bench.Target(name, "http", path, 1, body(kind), read), server)


def body(kind):
    return bench.v2([ROW]) if kind == "v2" else bench.rest([ROW])


def load(server, path="/predict", kind="rest", seconds=2, concurrency=CONCURRENCY):
    """wrk against one server: requests/s, p50, p99, errors, and the CPU the server and wrk used (% of a core)."""
    with tempfile.TemporaryDirectory() as folder:
        body_file = Path(folder) / "body.json"
        body_file.write_bytes(body(kind))
        server_before, client_before = bench.server_cpu_seconds(server), bench.children_cpu_seconds()
        result = bench.with_wrk(server.url + path, body_file, seconds, concurrency)
        server_cpu = bench.server_cpu_seconds(server) - server_before
        client_cpu = bench.children_cpu_seconds() - client_before
    return {**result, "concurrency": concurrency, "requests_per_s": result["requests"] / result["seconds"],
            "server_cpu_percent": 100 * server_cpu / result["seconds"],
            "client_cpu_percent": 100 * client_cpu / result["seconds"]}


def post_together(url, rows, features, timeout=10):
    """Each row POSTed to /predict from its own thread and connection, all at once: [(status, JSON answer)]."""
    start_line = threading.Barrier(len(rows))

    def call(row):
        with requests.Session() as session:
            session.get(url + "/health", timeout=timeout)  # connected first, so that the requests leave together
            start_line.wait()
            response = session.post(url + "/predict", json=dict(zip(features, row)), timeout=timeout)
            return response.status_code, response.json()

    with ThreadPoolExecutor(len(rows)) as pool:
        return list(pool.map(call, rows))


def histogram(server, name):
    """A histogram of the server's /metrics as {upper bound: count}, cumulative as Prometheus keeps it."""
    text = bench.send_once(bench.Target(name, "http", "/metrics", 1, None, None), server).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == name]
    return {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}


def start_all(names):
    with ThreadPoolExecutor(len(names)) as pool:
        futures = {name: pool.submit(SERVERS[name][0]) for name in names}
        return {name: future.result() for name, future in futures.items()}


def stop(server, timeout=30):
    """SIGTERM to the main process only, as the kubelet sends it: ray_app.py then stops Ray's processes itself
    (signalled all at once, they would not get the chance), uvicorn --workers its workers. Whatever is still running
    after `timeout` is killed, Ray's actors too (each runs in a process group of its own, out of stop()'s reach)."""
    family = psutil.Process(server.pid).children(recursive=True) if server.process.poll() is None else []
    server.signal(signal.SIGTERM)
    try:
        server.process.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    exit_code = server.stop()
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return exit_code


def stop_all(servers):
    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        return list(pool.map(stop, servers.values()))


def rounds_of(servers, seconds, rounds, concurrency=CONCURRENCY, log=print):
    """{name: [one result per round]}, the targets in turn, forwards then backwards."""
    names, results = list(servers), {name: [] for name in servers}
    for number in range(rounds):
        for name in names if number % 2 == 0 else names[::-1]:
            path, kind = SERVERS[name][1:] if name in SERVERS else ("/predict", "rest")
            results[name].append(load(servers[name], path, kind, seconds, concurrency))
        log(f"round {number + 1} of {rounds} done")
    return results


def median_row(name, results):
    med = {key: statistics.median(r[key] for r in results) for key in
           ("requests_per_s", "p50_ms", "p99_ms", "server_cpu_percent", "client_cpu_percent")}
    return {"target": name, **med, "requests": sum(r["requests"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "concurrency": results[0]["concurrency"], "rounds": len(results)}


def table(rows):
    head = f"{'target':<30} {'c':>3} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>10} {'wrk CPU':>8} errors"
    lines = [head, f"{'':<30} {'':>3} {'':>7} {'':>7} {'':>7} {'% of core':>10} {'% core':>8}"]
    for r in rows:
        lines.append(f"{r['target']:<30} {r['concurrency']:>3} {r['requests_per_s']:>7,.0f} {r['p50_ms']:>7.1f} "
                     f"{r['p99_ms']:>7.1f} {r['server_cpu_percent']:>10.0f} {r['client_cpu_percent']:>8.0f} "
                     f"{r['errors']:>6}")
    return "\n".join(lines)


def verdict(rows):
    """The issue's targets, computed from the rows; returns (lines to print, all met).

    The batching server is held to them as the lesson deploys it on this machine: a worker per core (WORKERS=2).
    MLServer serves HTTP from one process whatever its settings (parallel_workers adds inference processes only),
    so its best configuration here is the better of plain and adaptive batching. The single-process ratio is printed
    too: it is what batching alone buys."""
    by = {r["target"]: r for r in rows if r["concurrency"] == CONCURRENCY}
    best = max(("MLServer", "MLServer, adaptive batching"), key=lambda n: by[n]["requests_per_s"])
    yardstick = by[best]["requests_per_s"]
    batched, one = by["lesson 09, 2 workers"], by["lesson 09, batching"]
    onnx, sklearn = by["lesson 02, onnxruntime"], by["lesson 02, no batching"]
    checks = [
        (f"lesson 09, 2 workers / {best}: {batched['requests_per_s'] / yardstick:.2f}x "
         f"(target >= {TARGETS['ratio']:.1f}x)", batched["requests_per_s"] >= TARGETS["ratio"] * yardstick),
        (f"lesson 09, 2 workers p99: {batched['p99_ms']:.1f} ms (target <= {TARGETS['p99_ms']:.0f} ms), "
         f"errors: {batched['errors']} (target 0)", batched["p99_ms"] <= TARGETS["p99_ms"] and not batched["errors"]),
        (f"lesson 02, onnxruntime / {best}: {onnx['requests_per_s'] / yardstick:.2f}x (target >= "
         f"{TARGETS['unbatched_ratio']:.1f}x)", onnx["requests_per_s"] >= TARGETS["unbatched_ratio"] * yardstick),
        (f"lesson 02, onnxruntime p99: {onnx['p99_ms']:.1f} ms (target <= {TARGETS['unbatched_p99_ms']:.0f} ms)",
         onnx["p99_ms"] <= TARGETS["unbatched_p99_ms"]),
    ]
    lines = [f"yardstick: {best}, the better MLServer ({yardstick:,.0f} req/s)",
             f"     lesson 09 in one process / {best}: {one['requests_per_s'] / yardstick:.2f}x, "
             f"p99 {one['p99_ms']:.1f} ms (batching alone; not a target)",
             f"     lesson 02 with scikit-learn, its default engine / {best}: "
             f"{sklearn['requests_per_s'] / yardstick:.2f}x, p99 {sklearn['p99_ms']:.1f} ms (not a target)"]
    lines += [f"{'OK  ' if ok else 'MISS'} {text}" for text, ok in checks]
    return lines, all(ok for _, ok in checks)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Lesson 09: batching, workers and Ray Serve against MLServer.")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per target and round (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="leave Ray Serve out")
    args = parser.parse_args(argv)
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: install wrk (Debian/Ubuntu: apt-get install wrk; "
                         "macOS: brew install wrk)")
    print(f"{os.cpu_count()} cores; wrk, one thread, single-row requests; {args.rounds} round(s) of "
          f"{args.seconds:g} s per target. Absolute numbers depend on this machine and on what else it was doing.")

    servers = start_all(["lesson 02, no batching", "lesson 09, batching"])
    try:
        for name, server in servers.items():
            check(name, server)
        # Unbatched against batched, from one request in flight to 64: where batching costs, and where it pays.
        rows = []
        for concurrency in (1, 8):
            results = rounds_of(servers, args.seconds, args.rounds, concurrency, log=lambda _: None)
            rows += [median_row(name, rs) for name, rs in results.items()]
        servers.update(start_all(["lesson 02, onnxruntime", "lesson 09, h11", "lesson 09, 2 workers",
                                  "lesson 09, uvicorn --workers 2", "MLServer", "MLServer, adaptive batching"]))
        for name, server in servers.items():
            check(name, server)
        results = rounds_of(servers, args.seconds, args.rounds)
    finally:
        stop_all(servers)
    rows += [median_row(name, rs) for name, rs in results.items()]
    if args.ray and not RAY_PYTHON.exists():
        print("Ray Serve: left out, Ray is not installed (make ray)")
    elif args.ray:
        with tempfile.TemporaryDirectory(prefix="ray-", dir=REPO / ".cache") as temp_dir:
            ray = ray_serve(temp_dir)
            try:
                check("Ray Serve", ray)
                rows.append(median_row("Ray Serve", [load(ray, seconds=args.seconds) for _ in range(args.rounds)]))
            finally:
                stop(ray)
    print(table(rows))
    lines, met = verdict(rows)
    print("\n" + "\n".join(lines))
    print("OK: every target is met on this machine" if met else "FAIL: a target was missed on this machine (MISS)")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
