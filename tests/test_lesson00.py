"""Lesson 00's standard-library server, and the exercise's worked answer, as real processes."""

import json
import random

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


@pytest.mark.parametrize("body, detail", [
    (b"sepal_length=5.1", "body is not valid JSON"),
    (b"", "body is not valid JSON"),
    (b"\xff\xfe", "body is not valid JSON"),
    (b"[5.1, 3.5, 1.4, 0.2]", "send a JSON object with the features"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "petal_width"}).encode(), "missing features ['petal_width']"),
    (json.dumps({**GOOD, "sepal_width": "wide"}).encode(), "features ['sepal_width'] must be finite numbers"),
    (json.dumps({**GOOD, "petal_length": None}).encode(), "features ['petal_length'] must be finite numbers"),
    (json.dumps({**GOOD, "petal_length": True}).encode(), "features ['petal_length'] must be finite numbers"),
    (json.dumps({**GOOD, "sepal_length": float("nan")}).encode(), "features ['sepal_length'] must be finite numbers"),
    (json.dumps({**GOOD, "sepal_length": float("inf")}).encode(), "features ['sepal_length'] must be finite numbers"),
])
def test_bad_input_gets_a_400_with_a_message_and_the_server_survives(server, body, detail):
    response = requests.post(server.url + "/predict", data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["detail"].startswith(detail)
    assert requests.post(server.url + "/predict", json=GOOD).status_code == 200


@pytest.mark.parametrize("method, path", [("GET", "/predict"), ("POST", "/health"), ("GET", "/nope")])
def test_unknown_routes_are_404(server, method, path):
    response = requests.request(method, server.url + path, json=GOOD)
    assert response.status_code == 404
    assert path in response.json()["detail"]


def test_exercise_answer_adds_the_model_route(model):
    with start_server("solutions/00-why-serve/server_with_model_route.py") as solution:
        assert requests.get(solution.url + "/model").json() == {
            key: model.metadata[key] for key in ("name", "version", "features", "classes")}
        assert requests.post(solution.url + "/predict", json=GOOD).json()["label"] == "setosa"
