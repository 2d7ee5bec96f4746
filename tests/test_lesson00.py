"""Lesson 00's standard-library server, and the exercise's worked answer, as real processes."""

import http.client
import itertools
import json
import random
import socket

import pytest
import requests
from sklearn.datasets import load_iris

from course.server import start_server


@pytest.fixture(scope="module")
def server():
    with start_server("lessons/00-why-serve/server.py") as running:
        yield running


def iris_rows(features, count=15):
    data = load_iris().data
    rows = []
    for values in data[:: len(data) // count]:
        row = dict(zip(features, map(float, values)))
        keys = list(row)
        random.Random(len(rows)).shuffle(keys)  # clients may send keys in any order
        rows.append({key: row[key] for key in keys})
    return rows


def test_health(server):
    assert requests.get(server.url + "/health").json() == {"status": "ok"}


def test_predictions_match_the_model_whatever_the_key_order(server, model):
    for row in iris_rows(model.features):
        expected = model.estimator.predict_proba([[row[name] for name in model.features]])[0]
        reply = requests.post(server.url + "/predict", json=row).json()
        assert reply["prediction"] == int(expected.argmax())
        assert reply["label"] == model.classes[int(expected.argmax())]
        assert reply["probabilities"] == pytest.approx(expected.tolist(), abs=1e-5)


GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
EXPECTED = "sepal_length, sepal_width, petal_length, petal_width"
RANGE = "expected a number from -1,000,000 to 1,000,000, got"


@pytest.mark.parametrize("body, detail", [
    (b"sepal_length=5.1", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"", "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    (b"\xc0\xaf", "the body is not valid JSON: 'utf-8' codec can't decode byte 0xc0 in position 0: "
                   "invalid start byte"),
    (b"[" * 10_000 + b"]" * 10_000, "the body is not valid JSON: maximum recursion depth exceeded "
                                     "while decoding a JSON array from a unicode string"),
    (b"[5.1, 3.5, 1.4, 0.2]", f"expected a JSON object with {EXPECTED}"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "petal_width"}).encode(),
     f"petal_width: missing; expected {EXPECTED}"),
    (json.dumps({**GOOD, "sepal_width": "wide"}).encode(), "sepal_width: expected a number, got a string"),
    (json.dumps({**GOOD, "petal_length": None}).encode(), "petal_length: expected a number, got null"),
    (json.dumps({**GOOD, "petal_length": True}).encode(), "petal_length: expected a number, got a boolean"),
    (json.dumps({**GOOD, "sepal_length": float("nan")}).encode(), f"sepal_length: {RANGE} nan"),
    (json.dumps({**GOOD, "sepal_length": float("-inf")}).encode(), f"sepal_length: {RANGE} -inf"),
    (json.dumps(GOOD).replace("0.2", "1e400").encode(), f"petal_width: {RANGE} inf"),  # more than a double holds
    # Finite, but the model's scaling overflows on it and it answers NaN: the row was accepted before the limit.
    (json.dumps({**GOOD, "petal_width": 7e307}).encode(), f"petal_width: {RANGE} 7e+307"),
    (json.dumps({**GOOD, "petal_width": 10**4000}).encode(), f"petal_width: {RANGE} {10**4000}"),
    (json.dumps({**GOOD, "sepal_width": 1_000_000.5}).encode(), f"sepal_width: {RANGE} 1000000.5"),
    # A typo must not pass unnoticed; repr() makes any key printable, even a lone surrogate.
    (json.dumps({**GOOD, "colour": "blue"}).encode(), f"'colour': unknown field; expected {EXPECTED}"),
    (json.dumps({**GOOD, "\ud800": 1}).encode(), f"'\\ud800': unknown field; expected {EXPECTED}"),
])
def test_bad_input_gets_a_400_naming_the_mistake_and_the_server_survives(server, body, detail):
    response = requests.post(server.url + "/predict", data=body, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.headers["Content-Type"], response.json()) == (
        400, "application/json", {"detail": detail})
    assert requests.post(server.url + "/predict", json=GOOD).status_code == 200


def test_values_up_to_a_million_are_answered_with_finite_probabilities(server, model):
    """NaN is not JSON: whatever the values within the limit, the reply parses as strict JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} in the reply")

    for corner in itertools.product([-1e6, 1e6], repeat=len(model.features)):
        row = dict(zip(model.features, corner))
        response = requests.post(server.url + "/predict", json=row)
        assert response.status_code == 200
        reply = json.loads(response.text, parse_constant=refuse)
        expected = model.estimator.predict_proba([list(corner)])[0]
        assert reply["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)


@pytest.mark.parametrize("headers, body, status, detail", [
    ({"Transfer-Encoding": "chunked"}, b"2\r\n{}\r\n0\r\n\r\n", 411, "send the body with a Content-Length header"),
    ({"Content-Length": "-1"}, b"{}", 411, "send the body with a Content-Length header"),
    ({"Content-Length": "9" * 5000}, b"{}", 413, "the body is larger than 1048576 bytes"),
    ({"Content-Length": str(1024 * 1024 + 1)}, b"{}", 413, "the body is larger than 1048576 bytes"),
])
def test_a_body_without_a_usable_length_is_refused_before_it_is_read(server, headers, body, status, detail):
    with socket.create_connection((server.host, server.port), timeout=5) as connection:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        connection.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        assert (response.status, json.loads(response.read())) == (status, {"detail": detail})


@pytest.mark.parametrize("method, path", [("GET", "/predict"), ("POST", "/health"), ("GET", "/nope"),
                                          ("PUT", "/predict"), ("DELETE", "/health")])
def test_unknown_routes_are_404(server, method, path):
    response = requests.request(method, server.url + path, json=GOOD)
    assert (response.status_code, response.json()) == (404, {"detail": f"no route {method} {path}"})


def test_exercise_answer_adds_the_model_route(model):
    with start_server("solutions/00-why-serve/server_with_model_route.py") as solution:
        assert requests.get(solution.url + "/model").json() == {
            key: model.metadata[key] for key in ("name", "version", "features", "classes")}
        assert requests.post(solution.url + "/predict", json=GOOD).json()["label"] == "setosa"
