"""Lesson 09: the dynamic batching server, proven correct against real processes on 127.0.0.1.

Batching bugs that production servers shipped (MLServer #514, #903, #1306, #2065; BentoML #3307, #3859), each a test:
callers receiving another caller's rows, a failed batch leaving callers hanging, bad input poisoning a batch, clients
that hang up breaking the batcher, and requests lost when the server stops. Every answer is compared with the
in-process model (atol 1e-6); the batch-size and queue-wait histograms of /metrics show what the batcher did.
"""

import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from test_attacks_rest import NAMED, SEED, attacks, check_answer
from test_contract import BAD_INPUT, send

from course import import_lesson
from course.bench_throughput import post_together, verdict
from course.server import start_server

SERVER = "lessons/09-throughput/server.py"
CALLERS = 64


def metric(server, sample):
    """One sample of /metrics, e.g. metric(server, "batch_size_rows_count")."""
    text = requests.get(server.url + "/metrics", timeout=5).text
    return next(s.value for family in text_string_to_metric_families(text) for s in family.samples
                if s.name == sample and not s.labels)


def flowers(model, count, seed=0):
    """`count` different flowers: iris rows, then random ones inside the training ranges."""
    rows = load_iris().data.tolist()
    ranges = np.array([model.metadata["feature_ranges"][name] for name in model.features])
    random = np.random.default_rng(seed).uniform(ranges[:, 0], ranges[:, 1], size=(max(0, count - len(rows)), 4))
    return (rows + random.tolist())[:count]


def post_all(url, rows, model):
    return post_together(url, rows, model.features)  # each row from its own thread, lined up on a barrier


def assert_answers(answers, rows, estimator, classes):
    expected = estimator.predict_proba(rows)
    for (status, answer), probabilities in zip(answers, expected):
        assert status == 200, answer
        assert np.allclose(answer["probabilities"], probabilities, rtol=0, atol=1e-6)
        assert (answer["prediction"], answer["label"]) == (probabilities.argmax(), classes[probabilities.argmax()])


@pytest.fixture(scope="module")
def server():
    # 20 ms of waiting: the callers of a test land in a few batches, not one each.
    with start_server(SERVER, env={"MAX_WAIT_MS": "20", "MAX_BATCH_SIZE": "64"}) as server:
        yield server


def test_concurrent_callers_each_get_their_own_answer(server, model):
    batches_before, rows_before = metric(server, "batch_size_rows_count"), metric(server, "batch_size_rows_sum")
    for attempt in range(3):
        rows = flowers(model, CALLERS, seed=attempt)
        assert_answers(post_all(server.url, rows, model), rows, model.estimator, model.classes)
    batches = metric(server, "batch_size_rows_count") - batches_before
    assert metric(server, "batch_size_rows_sum") - rows_before == 3 * CALLERS  # every row went through a batch once
    assert batches < 3 * CALLERS / 4, f"{batches} model calls for {3 * CALLERS} rows: the requests were not batched"


def test_a_lone_request_waits_at_most_max_wait_ms(server, model):
    # The cost of batching at low load: a request alone waits MAX_WAIT_MS for company, then goes as a batch of one.
    waited_before = metric(server, "batch_queue_wait_seconds_sum")
    count_before = metric(server, "batch_queue_wait_seconds_count")
    ones_before = metric(server, "batch_size_rows_count")
    for row in flowers(model, 5):
        requests.post(server.url + "/predict", json=dict(zip(model.features, row)), timeout=5).raise_for_status()
    waited = (metric(server, "batch_queue_wait_seconds_sum") - waited_before) / 5
    assert metric(server, "batch_queue_wait_seconds_count") - count_before == 5
    assert metric(server, "batch_size_rows_count") - ones_before == 5  # five batches of one row
    assert 0.018 <= waited <= 0.5, f"a lone request waited {waited * 1000:.1f} ms; MAX_WAIT_MS is 20"


@pytest.fixture(scope="module")
def lesson02():
    with start_server("lessons/02-fastapi/app.py") as server:
        yield server


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_gets_lesson_02s_answer_and_never_enters_a_batch(case, server, lesson02):
    _, path, body, content_type, status, _ = case
    rows_before = metric(server, "batch_size_rows_sum")
    answer, expected = (send(s.url, path, body, content_type) for s in (server, lesson02))
    assert (answer.status_code, answer.json()) == (expected.status_code, expected.json())
    assert answer.status_code == status
    assert metric(server, "batch_size_rows_sum") == rows_before


@pytest.mark.parametrize("attack", NAMED.values(), ids=NAMED.keys())
def test_a_named_attack_gets_the_contracts_answer(attack, server, model):
    check_answer("02-fastapi", server, attack, model)  # lesson 02's contract, which this server keeps


@seed(SEED)
@settings(max_examples=150, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(attack=attacks())
def test_random_attacks_get_the_contracts_answer(server, model, attack):
    check_answer("02-fastapi", server, attack, model)


def test_a_failing_model_call_fails_its_batch_with_a_message_and_the_next_batch_works(tmp_path, model):
    fragile = import_lesson("09-throughput/fragile_model.py")
    path = fragile.write_fragile_model(tmp_path)
    estimator = joblib.load(path)
    # Half a second of waiting: the five requests below, sent together, surely share one batch.
    with start_server(SERVER, env={"MODEL_PATH": str(path), "MAX_WAIT_MS": "500"}) as server:
        good = flowers(model, 4)
        answers = post_all(server.url, good + [[-1.0, 3.0, 1.0, 0.5]], model)  # a negative length: NaN, ValueError
        assert [status for status, _ in answers] == [500] * 5  # everyone in the batch, answered; nobody hangs
        assert all(answer == {"detail": "the model failed on this request's batch of 5; the server log has the error"}
                   for _, answer in answers)
        assert_answers(post_all(server.url, good, model), good, estimator, model.classes)  # the next batch works
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
    assert server.log().count("Traceback") == 1  # the failure is logged once, for the batch


def test_clients_that_hang_up_do_not_break_the_batcher(server, model):
    body = json.dumps(dict(zip(model.features, [5.1, 3.5, 1.4, 0.2]))).encode()
    request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"

    def hang_up(number):
        with socket.create_connection((server.host, server.port), timeout=5) as connection:
            if number % 2:  # a whole request, then gone before the answer (its row is queued by then, or soon)
                connection.sendall(request % len(body) + body)
            else:  # half a request, then gone
                connection.sendall(request % len(body) + body[:10])

    rows = flowers(model, 32)
    with ThreadPoolExecutor(16) as pool:
        hung_up = [pool.submit(hang_up, number) for number in range(32)]
        answers = post_all(server.url, rows, model)
        [future.result() for future in hung_up]
    assert_answers(answers, rows, model.estimator, model.classes)
    time.sleep(0.1)  # the hung-up requests' batches, done
    assert_answers(post_all(server.url, rows[:8], model), rows[:8], model.estimator, model.classes)
    assert "Traceback" not in server.log()


def test_sigterm_answers_every_queued_request_then_exits_0(model):
    # A second of waiting and no drain pause: the requests are still in the queue when uvicorn starts to stop.
    server = start_server(SERVER, env={"MAX_WAIT_MS": "1000", "DRAIN_SECONDS": "0"})
    try:
        rows = flowers(model, 32)
        with ThreadPoolExecutor(1) as pool:
            answers = pool.submit(post_all, server.url, rows, model)
            time.sleep(0.4)
            server.signal(signal.SIGTERM)
            assert_answers(answers.result(), rows, model.estimator, model.classes)  # 0 lost
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_the_worked_answer_fails_only_the_request_that_broke_its_batch(tmp_path, model):
    path = import_lesson("09-throughput/fragile_model.py").write_fragile_model(tmp_path)
    env = {"MODEL_PATH": str(path), "MAX_WAIT_MS": "500"}
    with start_server("solutions/09-throughput/server.py", env=env) as server:
        good = flowers(model, 4)
        answers = post_all(server.url, good + [[-1.0, 3.0, 1.0, 0.5]], model)
        assert_answers(answers[:4], good, joblib.load(path), model.classes)  # the innocent rows: answered
        detail = "the model failed on this request's batch of 1; the server log has the error"
        assert answers[4] == (500, {"detail": detail})  # only the row that breaks the model
        assert metric(server, "batch_size_rows_count") == 1  # one batch of five, retried row by row


def test_workers_answer_without_waiting_for_delayed_acks_and_stop_cleanly(model):
    # `uvicorn --workers` leaves Nagle's algorithm on (uvicorn #3149): each keep-alive answer waits ~40 ms for the
    # client's delayed ACK. WORKERS=2 makes its socket with IPPROTO_TCP, so answers go out at once.
    server = start_server(SERVER, env={"WORKERS": "2", "MAX_WAIT_MS": "1"})
    try:
        rows = flowers(model, 40)
        with requests.Session() as session:  # one kept-alive connection, one request after the other
            latencies, answers = [], []
            for row in rows:
                started = time.perf_counter()
                response = session.post(server.url + "/predict", json=dict(zip(model.features, row)), timeout=5)
                latencies.append(time.perf_counter() - started)
                answers.append((response.status_code, response.json()))
        assert_answers(answers, rows, model.estimator, model.classes)
        median = sorted(latencies)[len(latencies) // 2]
        assert median < 0.02, f"median {median * 1000:.0f} ms per kept-alive request: Nagle's algorithm is on"
        server.signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
    finally:
        server.stop()


def test_the_verdict_judges_lesson_02_with_onnxruntime_and_prints_its_default_engine_beside():
    def row(target, requests_per_s, p99_ms):
        return {"target": target, "concurrency": 64, "requests_per_s": requests_per_s, "p99_ms": p99_ms, "errors": 0}

    rows = [row("MLServer", 1000, 800), row("MLServer, adaptive batching", 1700, 130),
            row("lesson 09, 2 workers", 7000, 15), row("lesson 09, batching", 4900, 17),
            row("lesson 02, onnxruntime", 4000, 18), row("lesson 02, no batching", 1600, 80)]
    lines, met = verdict(rows)
    assert met and "lesson 02 with scikit-learn, its default engine / MLServer, adaptive batching: 0.94x" in lines[2]
    rows[4] = row("lesson 02, onnxruntime", 1650, 18)
    lines, met = verdict(rows)
    assert not met and "MISS lesson 02, onnxruntime / MLServer, adaptive batching: 0.97x (target >= 1.0x)" in lines
