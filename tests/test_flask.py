"""Lesson 01: the naive server's bug and gunicorn, as real processes; the worked answer kept in step with the lesson.

The shared contract (predictions, batch, bad input) of lessons/01-flask/app.py is in test_contract.py. The notebooks
(run by nbval) check the rest: the worker that gunicorn replaces, exit codes, and the worked answer's server.
"""

import sys

import pytest
import requests

from course import REPO
from course.server import BackgroundServer, free_port, start_server

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}  # iris row 0


def in_order(row, names):
    return [[row[name] for name in names]]


def test_the_naive_server_answers_the_first_iris_flower_wrongly_and_silently(model):
    """The bug the notebook shows: sorted(keys) feeds the model its features in alphabetical order."""
    with start_server("lessons/01-flask/naive_app.py") as naive:
        response = requests.post(naive.url + "/predict", json=FLOWER)
        incomplete = requests.post(naive.url + "/predict", json={k: FLOWER[k] for k in list(FLOWER)[:3]})
    assert response.status_code == 200
    served = response.json()["prediction"]
    right = int(model.estimator.predict(in_order(FLOWER, model.features))[0])
    alphabetical = int(model.estimator.predict(in_order(FLOWER, sorted(FLOWER)))[0])
    assert sorted(FLOWER) != model.features
    assert served == alphabetical  # what it computes: the model on reordered features
    assert served != right  # ... which is not the model's answer, with status 200
    assert incomplete.status_code == 500  # and a missing feature crashes the handler
    assert incomplete.headers["Content-Type"].startswith("text/html")


def test_gunicorn_serves_the_app(model):
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "lessons/01-flask/gunicorn.conf.py"]  # as the lesson runs it
    with BackgroundServer(command, port=port, env={"DRAIN_SECONDS": "0.2"}) as server:
        assert "Booting worker" in server.log()
        answer = requests.post(server.url + "/predict", json=dict(reversed(FLOWER.items()))).json()
        batch = requests.post(server.url + "/predict/batch", json={"instances": [FLOWER] * 3}).json()["predictions"]
        bad = requests.post(server.url + "/predict", json={**FLOWER, "sepal_width": "3.5"})
    probabilities = model.estimator.predict_proba(in_order(FLOWER, model.features))[0]
    assert answer["prediction"] == int(probabilities.argmax())
    assert answer["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-9)
    # Another batch shape can take another BLAS kernel path: the same answer, to the last few bits.
    for row in batch:
        assert row["prediction"] == answer["prediction"] and row["label"] == answer["label"]
        assert row["probabilities"] == pytest.approx(answer["probabilities"], abs=1e-12)
    assert bad.status_code == 422 and bad.json()["detail"].startswith("sepal_width: ")
    assert server.process.returncode == 0  # SIGTERM: a graceful shutdown


# ---- the exercise's worked answer: solutions/01-flask/notebook.ipynb runs it and checks its answers ----------------

def test_the_worked_answer_is_the_lesson_app_plus_two_lines():
    """So that the answer never drifts from the lesson it answers."""
    def code(path):
        lines = (REPO / path).read_text().splitlines()
        return lines[next(i for i, line in enumerate(lines) if line.startswith("import")):]

    lesson, answer = code("lessons/01-flask/app.py"), code("solutions/01-flask/app.py")
    added = [line for line in answer if line not in lesson]
    assert len(added) == 2 and "Exercise" in added[0]
    assert [line for line in answer if line not in added] == lesson
