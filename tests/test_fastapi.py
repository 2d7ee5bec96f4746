"""Lesson 02: the OpenAPI contract, the def/async def variants and start-up, as real processes; the worked answer
kept in step with the lesson.

The shared contract (predictions, batch, bad input) of lessons/02-fastapi/app.py is in test_contract.py; the worked
answer's server is run and checked by solutions/02-fastapi/notebook.ipynb (nbval).
"""

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import requests
from sklearn.datasets import load_iris

from course import LESSONS, REPO, import_lesson
from course.server import BackgroundServer, ServerFailedToStart, free_port, start_server

FLOWER = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


@pytest.fixture(scope="module")
def server():
    """`uvicorn variants:app` from the lesson's folder: app.py's app, plus the two variant routes of the notebook.

    (test_contract.py runs `uvicorn app:app` from the same folder; the notebook runs `python app.py`.)
    """
    port = free_port()
    with BackgroundServer([sys.executable, "-m", "uvicorn", "variants:app", "--host", "127.0.0.1", "--port", str(port)],
                          port=port, cwd=LESSONS / "02-fastapi") as running:
        yield running


@pytest.fixture(scope="module")
def openapi(server):
    return requests.get(server.url + "/openapi.json").json()


def number(description, example):
    return {"type": "number", "minimum": -1e6, "maximum": 1e6, "title": " ".join(description.split()[:2]).title(),
            "description": description, "examples": [example]}


def ref(name):
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


def test_openapi_documents_predict_with_its_request_and_response_shapes(openapi):
    assert openapi["paths"]["/predict"]["post"] == {
        "summary": "Predict",
        "operationId": "predict_predict_post",
        "requestBody": {"content": ref("Features"), "required": True},
        "responses": {
            "200": {"description": "Successful Response", "content": ref("Prediction")},
            "400": {"description": "The body is empty or not JSON", "content": ref("Error")},
            "413": {"description": "The body is over 1048576 bytes", "content": ref("Error")},
            "415": {"description": "The body is not sent as Content-Type: application/json", "content": ref("Error")},
            "422": {"description": "The JSON is not what the model needs; the sentence names the field",
                    "content": ref("Error")},
        },
    }
    schemas = openapi["components"]["schemas"]
    assert schemas["Features"] == {
        "title": "Features",
        "description": "One flower, measured in centimetres. Every feature is required; key order does not matter.",
        "type": "object",
        "properties": {
            "sepal_length": number("Sepal length in cm", 5.1),
            "sepal_width": number("Sepal width in cm", 3.5),
            "petal_length": number("Petal length in cm", 1.4),
            "petal_width": number("Petal width in cm", 0.2),
        },
        "required": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "additionalProperties": False,
    }
    assert schemas["Prediction"] == {
        "title": "Prediction",
        "type": "object",
        "properties": {
            "prediction": {"type": "integer", "title": "Prediction", "examples": [0],
                           "description": "Index of the most probable class in GET /model's classes"},
            "label": {"type": "string", "title": "Label", "description": "Name of that class", "examples": ["setosa"]},
            "probabilities": {"type": "array", "items": {"type": "number"}, "title": "Probabilities",
                              "description": "One probability per class, in class order; they sum to 1",
                              "examples": [[0.979, 0.021, 0.0]]},
        },
        "required": ["prediction", "label", "probabilities"],
    }
    assert schemas["Error"]["properties"]["detail"]["type"] == "string"


def test_openapi_documents_the_batch_endpoint(openapi):
    operation = openapi["paths"]["/predict/batch"]["post"]
    assert operation["requestBody"] == {"content": ref("BatchRequest"), "required": True}
    assert operation["responses"]["200"]["content"] == ref("BatchPrediction")
    schemas = openapi["components"]["schemas"]
    assert schemas["BatchRequest"]["properties"]["instances"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/Features"}, "minItems": 1, "maxItems": 1000,
        "title": "Instances", "description": "1 to 1000 flowers"}
    assert schemas["BatchRequest"]["additionalProperties"] is False
    assert schemas["BatchPrediction"]["properties"]["predictions"]["items"] == {"$ref": "#/components/schemas/Prediction"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_work_offline_every_file_comes_from_the_server(server, page):
    response = requests.get(server.url + page)
    assert response.status_code == 200
    # Every script, style sheet, icon and the contract itself, as the page references them.
    referenced = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
    assert any(url.endswith(".js") for url in referenced) and "/openapi.json" in referenced, referenced
    for url in referenced:
        assert url.startswith("/"), f"{page} loads {url} from another host: blank without a network"
        assert requests.get(server.url + url).status_code == 200, url


def test_predict_from_the_folder_started_server(server, model):
    answer = requests.post(server.url + "/predict", json=FLOWER).json()
    probabilities = model.estimator.predict_proba([[FLOWER[name] for name in model.features]])[0]
    assert answer == {"prediction": int(probabilities.argmax()), "label": model.classes[int(probabilities.argmax())],
                      "probabilities": pytest.approx(probabilities.tolist(), abs=1e-9)}


def test_the_variants_answer_like_the_lesson_endpoints(server, model):
    """/variants/predict is /predict as a def; /variants/predict/batch is /predict/batch as an async def."""
    data = load_iris().data
    rows = [dict(zip(model.features, x.tolist())) for x in data]
    expected = model.estimator.predict_proba(data)
    for path in ("/predict", "/variants/predict"):
        answers = [requests.post(server.url + path, json=row).json() for row in rows[::10]]
        assert [a["prediction"] for a in answers] == [int(p.argmax()) for p in expected[::10]]
        for answer, probabilities in zip(answers, expected[::10]):
            assert answer["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-9)
    for path in ("/predict/batch", "/variants/predict/batch"):
        batch = requests.post(server.url + path, json={"instances": rows}).json()["predictions"]
        assert [p["prediction"] for p in batch] == expected.argmax(axis=1).tolist()
    bad = requests.post(server.url + "/variants/predict", json={**FLOWER, "sepal_width": "3.5"})
    assert bad.status_code == 422  # same models, same validation


def test_a_missing_model_stops_the_server_at_start_up():
    with pytest.raises(ServerFailedToStart) as error:
        start_server("lessons/02-fastapi/app.py", env={"MODEL_PATH": "models/missing.joblib"})
    assert "Model file models/missing.joblib does not exist" in str(error.value)
    assert "Application startup failed" in str(error.value)


def test_a_model_with_other_features_is_refused_at_start_up(tmp_path, model, monkeypatch):
    """The lifespan checks that Features declares exactly the model's features, or the server would mislabel them."""
    shutil.copy(model.path, tmp_path / "other.joblib")
    (tmp_path / "other.json").write_text(json.dumps({**model.metadata, "features": ["a", "b", "c", "d"]}))
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "other.joblib"))
    lesson = import_lesson("02-fastapi/app.py")  # its lifespan reads MODEL_PATH when it starts, not at import

    async def start_up():
        async with lesson.lifespan(lesson.app):
            pass

    with pytest.raises(RuntimeError, match=r"the model expects \['a', 'b', 'c', 'd'\], but Features declares"):
        asyncio.run(start_up())


# ---- the exercise's worked answer: solutions/02-fastapi/notebook.ipynb runs it and checks its answers -------------

def test_the_worked_answer_is_the_lesson_app_plus_gt_0():
    def code(path):
        lines = (REPO / path).read_text().splitlines()
        return lines[next(i for i, line in enumerate(lines) if line.startswith("import")):]

    lesson, answer = code("lessons/02-fastapi/app.py"), code("solutions/02-fastapi/app.py")
    normalised = [line.replace("Field(gt=0,", "Field(ge=-LIMIT,") for line in answer if "# Exercise" not in line]
    assert normalised == lesson
    assert sum("Field(gt=0," in line for line in answer) == 4


# ---- ENGINE: which library runs the model -------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(psutil.Process, "memory_maps"), reason="psutil lists loaded libraries on Linux/Windows")
@pytest.mark.parametrize("engine", ["sklearn", "onnxruntime"])
def test_engine_decides_which_library_runs_the_model(engine):
    """The same answer either way (test_contract.py holds both to the model), so look inside: onnxruntime's library is
    loaded by the server process only when ENGINE asks for it."""
    server = start_server("lessons/02-fastapi/app.py", env={"ENGINE": engine})
    try:
        assert requests.post(server.url + "/predict", json=FLOWER).json()["label"] == "setosa"
        libraries = {Path(m.path).name for m in psutil.Process(server.pid).memory_maps()}
    finally:
        server.stop()
    assert any(name.startswith("onnxruntime_pybind11_state") for name in libraries) == (engine == "onnxruntime")


def test_an_unknown_engine_stops_the_server_at_start_up():
    with pytest.raises(ServerFailedToStart) as error:
        start_server("lessons/02-fastapi/app.py", env={"ENGINE": "tensorflow"})
    assert "ENGINE='tensorflow': expected sklearn (the default) or onnxruntime" in str(error.value)


@pytest.fixture(scope="module")
def onnxruntime_predict_proba(model):
    return import_lesson("02-fastapi/app.py").onnxruntime_predict_proba(model)


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=4, max_size=4), min_size=1, max_size=20))
def test_onnxruntime_gives_scikit_learns_probabilities_for_any_flower_the_api_accepts(onnxruntime_predict_proba,
                                                                                       model, rows):
    """Every row Features lets through (finite, within +-LIMIT), in batches of 1 to 20: float64 on both sides."""
    assert onnxruntime_predict_proba(rows) == pytest.approx(model.estimator.predict_proba(rows), abs=1e-9)


def test_onnxruntime_engine_without_onnxruntime_installed_stops_at_start_up_and_says_so(tmp_path):
    """Lesson 04's image installs the default engine's libraries only: there, ENGINE=onnxruntime must fail loudly at
    start-up, not on the first request. An `onnxruntime` package that cannot be imported stands in for a missing one."""
    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'onnxruntime\'")')
    with pytest.raises(ServerFailedToStart) as error:
        start_server("lessons/02-fastapi/app.py", env={"ENGINE": "onnxruntime", "PYTHONPATH": str(tmp_path)})
    assert "No module named 'onnxruntime'" in str(error.value) and "Application startup failed" in str(error.value)
