"""The smallest honest load test: a few clients in a closed loop against one server, for a few seconds.

    python lessons/07-choosing/closed_loop.py http://127.0.0.1:8000 --clients 4 --seconds 2

Closed loop: each client sends a request, waits for the answer, and sends the next one at once, so the server's
speed sets the pace. It prints requests per second and the median and 99th-percentile latency. The notebook's full
table comes from course/bench.py, which does the same for every server, with wrk, CPU accounting and more rounds.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def one_request(url):
    request = urllib.request.Request(url + "/predict", data=json.dumps(FLOWER).encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
    return time.perf_counter() - started


def closed_loop(url, clients, seconds):
    latencies, lock = [], threading.Lock()
    deadline = time.perf_counter() + seconds

    def client():
        while time.perf_counter() < deadline:  # bounded in time, like every load test of the course
            took = one_request(url)
            with lock:
                latencies.append(took)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    percentiles = statistics.quantiles(latencies, n=100)  # 99 cut points: [49] is the median, [98] the p99
    return {"requests": len(latencies), "per_second": len(latencies) / elapsed,
            "p50_ms": percentiles[49] * 1000, "p99_ms": percentiles[98] * 1000}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2)
    args = parser.parse_args()
    result = closed_loop(args.url, args.clients, args.seconds)
    print(f"{result['requests']} requests in {args.seconds:g} s from {args.clients} clients: "
          f"{result['per_second']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
