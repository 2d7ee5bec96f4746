"""Lesson 07's benchmark (course plumbing): measure the ways of serving the iris model, on this machine, in one run.

    python -m course.bench --quick     # about 20 s: what the notebook runs
    python -m course.bench             # `make bench`: 5 rounds of 3 s, MLServer as a yardstick (~4 min)

Every server is a real process on 127.0.0.1, started here and stopped at the end. Each target must
first give the in-process model's answer (a fast wrong answer is worth nothing); then a load generator
in its own process keeps CONCURRENCY requests in flight for a fixed time: wrk for HTTP if installed
(post.lua makes it POST), else loadgen.py, which is Python; loadgen.py for gRPC (wrk speaks HTTP/1.1 only).
Rounds run the targets in turn, forwards then backwards, so that whatever else the machine does slows
all of them alike. The result is one row per target, the median over the rounds, as a CSV, a table and a plot.
"""

import argparse
import csv
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
from sklearn.datasets import load_iris

from course import REPO, import_lesson
from course.model import load_model
from course.server import BackgroundServer, free_port, grpc_ready, http_ready, start_server

HERE = Path(__file__).resolve().parent
model_pb2 = import_lesson("03-grpc/model_pb2.py")  # generated from protos/model.proto

MODEL = load_model()
BATCH = 100        # rows per request in the batch measurements
CONCURRENCY = 4    # requests in flight at any time
RESULTS = REPO / ".cache/bench"  # git ignores .cache/
MLSERVER = REPO / ".cache/mlserver-venv/bin/mlserver"
IRIS = load_iris().data
ONE_ROW = IRIS[0].tolist()                                        # [5.1, 3.5, 1.4, 0.2]
BATCH_ROWS = [IRIS[i * len(IRIS) // BATCH].tolist() for i in range(BATCH)]  # all three kinds of iris


# ---- What each server is sent, and how to read its answer (probabilities, one list per row) ----

def flower(row):
    return dict(zip(MODEL.features, row))


def rest(rows):  # lessons 01 and 02: POST /predict takes one flower, /predict/batch {"instances": [...]}
    return json.dumps(flower(rows[0]) if len(rows) == 1 else {"instances": [flower(r) for r in rows]}).encode()


def read_rest(answer):
    answer = json.loads(answer)
    return [p["probabilities"] for p in answer.get("predictions", [answer])]


def v2(rows):  # the Open Inference (V2) protocol MLServer speaks: one flat tensor with its shape
    tensor = {"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64", "data": sum(rows, [])}
    return json.dumps({"inputs": [tensor]}).encode()


def read_v2(answer):
    """The probabilities output: MLServer's only one (predict_proba), or lesson 08's `probabilities` beside the rest."""
    outputs = json.loads(answer)["outputs"]
    data = next((o for o in outputs if o["name"] == "probabilities"), outputs[0])["data"]
    return [data[i:i + 3] for i in range(0, len(data), 3)]


def protobuf(rows):  # lesson 03: PredictRequest, or PredictBatchRequest holding many of them
    if len(rows) == 1:
        return model_pb2.PredictRequest(features=rows[0]).SerializeToString()
    return model_pb2.PredictBatchRequest(
        instances=[model_pb2.PredictRequest(features=r) for r in rows]).SerializeToString()


def read_reply(answer):
    return [list(model_pb2.PredictReply.FromString(answer).probabilities)]


def read_batch_reply(answer):
    return [list(reply.probabilities) for reply in model_pb2.PredictBatchReply.FromString(answer).predictions]


@dataclass
class Target:
    name: str      # what the table calls it
    server: str    # who answers: a key of SERVERS ("" for the model in this process)
    call: str      # URL path, or gRPC method
    rows: int      # rows per request
    body: bytes
    read: object   # answer bytes -> probabilities per row

    @property
    def protocol(self):
        return {"": "in-process", "grpc": "gRPC"}.get(self.server, "HTTP/1.1 JSON")


def targets(mlserver=False):
    one, many = [ONE_ROW], BATCH_ROWS
    mine = [Target("model in-process", "", "predict_proba", 1, b"", None),
            Target("model in-process", "", "predict_proba", BATCH, b"", None)]
    for name, server in [("Flask dev server", "flask"), ("Flask + gunicorn", "gunicorn")]:
        mine += [Target(name, server, "/predict", 1, rest(one), read_rest),
                 Target(name, server, "/predict/batch", BATCH, rest(many), read_rest)]
    # variants.py serves app.py's /predict (async def) and /predict/batch (def), and each written the
    # other way round: one process, so both styles are measured under the same conditions.
    mine.append(Target("FastAPI async def", "fastapi", "/predict", 1, rest(one), read_rest))
    if mlserver:  # right after FastAPI's single rows, so that the two are measured back to back
        infer = "/v2/models/iris-classifier/infer"
        # Lesson 08's V2 REST server, the same JSON body, next to MLServer's single rows (the issue: at least as fast).
        mine += [Target("Lesson 08 V2 REST", "lesson08", "/v2/models/iris/infer", 1, v2(one), read_v2),
                 Target("MLServer (V2)", "mlserver", infer, 1, v2(one), read_v2),
                 Target("MLServer (V2)", "mlserver", infer, BATCH, v2(many), read_v2)]
    mine += [Target("FastAPI async def", "fastapi", "/variants/predict/batch", BATCH, rest(many), read_rest),
             Target("FastAPI def", "fastapi", "/variants/predict", 1, rest(one), read_rest),
             Target("FastAPI def", "fastapi", "/predict/batch", BATCH, rest(many), read_rest),
             Target("gRPC", "grpc", "Predict", 1, protobuf(one), read_reply),
             Target("gRPC", "grpc", "PredictBatch", BATCH, protobuf(many), read_batch_reply)]
    return mine


# ---- The servers: the lessons' own files, started the way their lessons start them ----

def start_gunicorn():
    port = free_port()  # gunicorn takes its address on the command line
    return BackgroundServer([sys.executable, "-m", "gunicorn", "--chdir", "lessons/01-flask", "-b", f"127.0.0.1:{port}",
                             "--workers", "2", "--preload", "--no-control-socket", "app:app"], port=port).start()


def start_mlserver():
    if not MLSERVER.exists():
        raise SystemExit("MLServer is not installed: run `make mlserver` (about a minute, once)")
    return BackgroundServer(["bash", "lessons/07-choosing/mlserver/serve.sh"], timeout=90,
                            ready=http_ready("/v2/models/iris-classifier/ready")).start()


SERVERS = {
    "flask": lambda: start_server("lessons/01-flask/app.py"),  # Werkzeug: one process, a thread per request
    "gunicorn": start_gunicorn,                                 # two worker processes, one request at a time each
    "fastapi": lambda: start_server("lessons/02-fastapi/variants.py"),  # uvicorn: one process, one event loop
    # grpcio: one process, a pool of 10 threads. No drain on stop: nobody is calling any more.
    "grpc": lambda: start_server("lessons/03-grpc/server.py", ready=grpc_ready, env={"DRAIN_SECONDS": "0"}),
    "mlserver": start_mlserver,                                 # uvicorn + uvloop, one process (parallel_workers 0)
    "lesson08": lambda: start_server("lessons/08-open-inference/rest_server.py", ready=http_ready("/v2/health/ready")),
}
PROCESSES = {"": 1, "flask": 1, "gunicorn": 2, "fastapi": 1, "grpc": 1, "mlserver": 1, "lesson08": 1}


def send_once(target, server):
    """One request, the bytes of the answer."""
    if target.server == "grpc":
        with grpc.insecure_channel(server.address) as channel:
            call = channel.unary_unary(f"/ModelService/{target.call}")  # bytes in, bytes out
            return call(target.body, timeout=10)
    request = urllib.request.Request(server.url + target.call, target.body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


def check(target, server):
    """The target must answer like the in-process model, or measuring it is pointless. Returns the answer's size."""
    rows = [ONE_ROW] if target.rows == 1 else BATCH_ROWS
    expected = MODEL.estimator.predict_proba(rows)
    answer = send_once(target, server)
    got = target.read(answer)
    # gRPC features are float32: the model sees slightly different numbers, hence the tolerance.
    if len(got) != len(rows) or any(abs(a - b) > 1e-5 for g, e in zip(got, expected) for a, b in zip(g, e)):
        raise AssertionError(f"{target.name} {target.call} does not give the model's answer: {got[:2]}...")
    return len(answer)


# ---- Measuring ----

def server_cpu_seconds(server):
    """CPU time (user + system) used so far by a server's processes: the one started and every process it
    started (gunicorn's workers, MLServer behind its script). psutil reads it on Linux, macOS and WSL alike."""
    if server is None:
        return None
    try:
        main = psutil.Process(server.pid)
        processes = [main, *main.children(recursive=True)]
    except psutil.NoSuchProcess:
        return None
    seconds = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue  # a process that just ended
        seconds += times.user + times.system
    return seconds


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # processes we started and waited for
    return usage.ru_utime + usage.ru_stime


def in_process(target, seconds):
    """The ceiling: predict_proba called directly, one call after another, nothing else."""
    rows = [ONE_ROW] if target.rows == 1 else BATCH_ROWS
    latencies = []
    cpu, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        MODEL.estimator.predict_proba(rows)
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": len(latencies), "errors": 0, "seconds": elapsed, "p50_ms": cuts[49] * 1000,
            "p99_ms": cuts[98] * 1000, "server_cpu": time.process_time() - cpu, "client_cpu": None}


def with_wrk(url, body_file, seconds, concurrency):
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                          "-s", str(HERE / "post.lua"), url, "--", str(body_file)],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    values = {key: int(value) for key, value in (part.split("=") for part in line.split()[1:])}
    return {"requests": values["requests"], "errors": values["errors"], "seconds": values["duration_us"] / 1e6,
            "p50_ms": values["p50_us"] / 1000, "p99_ms": values["p99_us"] / 1000}


def with_loadgen(protocol, address, call, body_file, seconds, concurrency):
    out = subprocess.run([sys.executable, str(HERE / "loadgen.py"), protocol, address, call, str(body_file),
                          "--concurrency", str(concurrency), "--seconds", str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    return json.loads(out)


def measure(target, server, seconds, concurrency, http_loadgen, workdir):
    if not target.server:
        # A quarter of the time is plenty: with no network and no other process involved, it hardly varies.
        return {**in_process(target, seconds / 4), "load_generator": "none", "concurrency": 1}
    body_file = workdir / f"{target.server}-{target.call.strip('/').replace('/', '-')}.body"
    body_file.write_bytes(target.body)
    cpu_server, cpu_client = server_cpu_seconds(server), children_cpu_seconds()
    if target.server == "grpc":
        tool = "loadgen.py"
        result = with_loadgen("grpc", server.address, target.call, body_file, seconds, concurrency)
    elif http_loadgen == "wrk":
        tool = "wrk"
        result = with_wrk(server.url + target.call, body_file, seconds, concurrency)
    else:
        tool = "loadgen.py"
        result = with_loadgen("http", server.address, target.call, body_file, seconds, concurrency)
    after = server_cpu_seconds(server)
    result["server_cpu"] = None if after is None else after - cpu_server
    result["client_cpu"] = children_cpu_seconds() - cpu_client
    return {**result, "load_generator": tool, "concurrency": concurrency}


@dataclass
class Results:
    rows: list          # one dict per target: the medians over the rounds (what the CSV holds)
    rounds: list        # every single measurement, with its round number
    http_loadgen: str   # "wrk" or "loadgen.py"
    csv: Path


def run(quick=True, seconds=None, rounds=None, mlserver=False, concurrency=CONCURRENCY, loadgen="auto",
        only=None, csv_path=None, log=print):
    """Measure every target (or `only` those named, e.g. [("FastAPI async def", 1)]); write the CSV."""
    seconds = seconds or (1 if quick else 3)
    rounds = rounds or (1 if quick else 5)
    http_loadgen = "wrk" if loadgen == "wrk" or (loadgen == "auto" and shutil.which("wrk")) else "loadgen.py"
    log(f"HTTP load generator: {'wrk' if http_loadgen == 'wrk' else 'loadgen.py (Python: wrk is not installed)'}; "
        f"gRPC load generator: loadgen.py (Python). {concurrency} requests in flight, "
        f"{rounds} round(s) of {max(1, round(seconds)) if http_loadgen == 'wrk' else seconds} s per target")
    chosen = [t for t in targets(mlserver) if only is None or (t.name, t.rows) in only]
    names = sorted({t.server for t in chosen if t.server})
    servers, answer_bytes = {}, {}
    measurements = []
    with ThreadPoolExecutor(max(1, len(names))) as pool, tempfile.TemporaryDirectory() as workdir:
        try:
            futures = {name: pool.submit(SERVERS[name]) for name in names}  # start them all at once
            for name, future in futures.items():
                servers[name] = future.result()
            for target in chosen:
                if target.server:
                    for _ in range(3):  # check it, and warm it up
                        answer_bytes[target.name, target.rows] = check(target, servers[target.server])
            for round_number in range(rounds):
                for target in chosen if round_number % 2 == 0 else chosen[::-1]:
                    result = measure(target, servers.get(target.server), seconds, concurrency,
                                     http_loadgen, Path(workdir))
                    measurements.append({"target": target.name, "call": target.call, "protocol": target.protocol,
                                         "rows_per_request": target.rows, "processes": PROCESSES[target.server],
                                         "request_bytes": len(target.body) or None,
                                         "response_bytes": answer_bytes.get((target.name, target.rows)),
                                         "round": round_number + 1, **result})
        finally:
            list(pool.map(lambda server: server.stop(), servers.values()))
    summary = summarise(measurements)
    csv_path = Path(csv_path or RESULTS / ("quick.csv" if quick else "bench.csv"))
    write_csv(summary, csv_path)
    return Results(summary, measurements, http_loadgen, csv_path)


def summarise(measurements):
    groups = {}
    for m in measurements:
        groups.setdefault((m["target"], m["call"], m["rows_per_request"]), []).append(m)
    rows = []
    for (target, call, rows_per_request), ms in groups.items():
        def median(key):
            values = [m[key] for m in ms if m[key] is not None]
            return statistics.median(values) if values else None
        requests = sum(m["requests"] for m in ms)
        rate = statistics.median(m["requests"] / m["seconds"] for m in ms)
        server_cpu = [m["server_cpu"] for m in ms if m["server_cpu"] is not None]
        client_cpu = [m["client_cpu"] for m in ms if m["client_cpu"] is not None]
        seconds = sum(m["seconds"] for m in ms)
        rows.append({
            "target": target, "call": call, "protocol": ms[0]["protocol"], "processes": ms[0]["processes"],
            "rows_per_request": rows_per_request, "request_bytes": ms[0]["request_bytes"],
            "response_bytes": ms[0]["response_bytes"], "concurrency": ms[0]["concurrency"],
            "load_generator": ms[0]["load_generator"], "rounds": len(ms), "requests": requests,
            "errors": sum(m["errors"] for m in ms), "requests_per_s": rate, "rows_per_s": rate * rows_per_request,
            "p50_ms": median("p50_ms"), "p99_ms": median("p99_ms"),
            # CPU per request is steadier than requests/s: it hardly depends on who else wanted the CPU.
            "server_cpu_ms_per_request": sum(server_cpu) / requests * 1000 if server_cpu else None,
            "client_cpu_percent": sum(client_cpu) / seconds * 100 if client_cpu else None,
        })
    return rows


def write_csv(rows, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()} for row in rows)


def find(rows, target, rows_per_request=1):
    return next(r for r in rows if r["target"] == target and r["rows_per_request"] == rows_per_request)


# ---- Showing the results ----

def table(rows):
    head = ("target", "call", "procs", "rows", "req/s", "rows/s", "p50 ms", "p99 ms", "server CPU", "client CPU",
            "errors")
    units = ("", "", "", "", "", "", "", "", "ms/req", "% of core", "")
    widths = (17, 32, 5, 4, 6, 8, 6, 6, 10, 10, 6)
    lines = [" ".join(f"{text:{'<' if i < 2 else '>'}{w}}" for i, (text, w) in enumerate(zip(line, widths)))
             for line in (head, units)]
    for r in rows:
        cpu, client = r["server_cpu_ms_per_request"], r["client_cpu_percent"]
        cells = (r["target"], r["call"], r["processes"], r["rows_per_request"], f"{r['requests_per_s']:,.0f}",
                 f"{r['rows_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                 "" if cpu is None else f"{cpu:.2f}", "" if client is None else f"{client:.0f}", r["errors"])
        lines.append(" ".join(f"{c:{'<' if i < 2 else '>'}{w}}" for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def plot(rows, path=None):
    import matplotlib
    if path:
        matplotlib.use("Agg")  # a file, no window
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    for ax, size, colour in [(left, 1, "tab:blue"), (left, BATCH, "tab:orange")]:
        chosen = [r for r in rows if r["rows_per_request"] == size]
        bars = ax.barh([f"{r['target']} ×{size}" for r in chosen], [r["rows_per_s"] for r in chosen], color=colour,
                       label=f"{size} row{'s' if size > 1 else ''} per request")
        ax.bar_label(bars, fmt="{:,.0f}", padding=3, fontsize=8)
    left.set_xscale("log")
    left.set_xlim(right=left.get_xlim()[1] * 4)  # room for the labels
    left.set_xlabel("rows per second (log scale; more is better)")
    left.invert_yaxis()
    left.legend(loc="upper right")
    singles = [r for r in rows if r["rows_per_request"] == 1]
    labels = [r["target"] for r in singles]
    p99 = right.barh(labels, [r["p99_ms"] for r in singles], color="tab:red", alpha=0.35, label="p99")
    right.barh(labels, [r["p50_ms"] for r in singles], color="tab:red", label="p50")
    right.bar_label(p99, fmt="{:.1f}", padding=3, fontsize=8)
    right.set_xlim(right=max(r["p99_ms"] for r in singles) * 1.15)  # room for the labels
    right.set_xlabel("latency of one single-row request, ms (less is better)")
    right.invert_yaxis()
    right.legend(loc="lower right")
    fig.suptitle(f"Same model, same machine, {rows[-1]['concurrency']} requests in flight")
    fig.tight_layout()
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig


def mlserver_verdict(measurements, mine="FastAPI async def"):
    """`mine`'s single-row requests/s over MLServer's, per round (measured back to back), and the median."""
    def rate(target, round_number):
        m = next(m for m in measurements if m["target"] == target and m["rows_per_request"] == 1
                 and m["round"] == round_number)
        return m["requests"] / m["seconds"]
    ratios = [rate(mine, r) / rate("MLServer (V2)", r)
              for r in sorted({m["round"] for m in measurements})]
    return statistics.median(ratios), ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description="Measure every lesson server on this machine.")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s per target, no MLServer (the notebook)")
    parser.add_argument("--seconds", type=float, help="seconds per target and round (default: 1 quick, 3 otherwise)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 1 quick, 5 otherwise)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight")
    parser.add_argument("--no-mlserver", dest="mlserver", action="store_false", default=None,
                        help="leave out the MLServer yardstick")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                        help="HTTP load generator (auto: wrk if installed)")
    parser.add_argument("--csv", type=Path, help="where to write the results (default: .cache/bench/)")
    args = parser.parse_args(argv)
    mlserver = (not args.quick) if args.mlserver is None else args.mlserver

    results = run(quick=args.quick, seconds=args.seconds, rounds=args.rounds, mlserver=mlserver,
                  concurrency=args.concurrency, loadgen=args.loadgen, csv_path=args.csv)
    print(table(results.rows))
    picture = results.csv.with_suffix(".png")
    plot(results.rows, picture)
    print(f"\nwrote {results.csv.relative_to(REPO) if results.csv.is_relative_to(REPO) else results.csv} "
          f"and {picture.name} beside it. Absolute numbers depend on this machine and on what else it was doing.")
    if not mlserver:
        return 0
    ratio, ratios = mlserver_verdict(results.rounds)
    print(f"\nFastAPI async def / MLServer, single rows, requests/s per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f}")
    if ratio < 1:
        print("FAIL: the FastAPI lesson server is slower than MLServer on this machine")
        return 1
    print("OK: the FastAPI lesson server is at least as fast as MLServer")
    ratio, ratios = mlserver_verdict(results.rounds, "Lesson 08 V2 REST")
    print(f"\nLesson 08 V2 REST / MLServer, single rows, the same V2 JSON body, requests/s per round: "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; median {ratio:.2f}")
    if ratio < 1:
        print("FAIL: the lesson 08 V2 REST server is slower than MLServer on this machine")
        return 1
    print("OK: the lesson 08 V2 REST server is at least as fast as MLServer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
