"""The serving contract, checked the same way against every server: lesson 01 (Flask), lesson 02 (FastAPI)
and, for predictions, lesson 03 (gRPC). Each server runs as a real process on a free loopback port.

Expected answers come from the in-process model (conftest's `model` fixture), never from a constant.
The bad-input table is the one lessons 01 and 02 teach: both REST servers must answer each mistake with
the same status code, a JSON `detail` naming the field, and keep serving afterwards.
"""

import json
import random
import shutil
import sys

import numpy as np
import pytest
import requests
from sklearn.datasets import load_iris

from course import LESSONS, import_lesson
from course.server import BackgroundServer, free_port, grpc_ready, start_server

REST = ["flask", "fastapi"]
SCRIPTS = {"flask": "lessons/01-flask/app.py", "grpc": "lessons/03-grpc/server.py"}
GRPC_READY = (LESSONS / "03-grpc" / "server.py").exists() and (LESSONS / "03-grpc" / "model_pb2_grpc.py").exists()
# Lesson 02 again, with the model run by onnxruntime (ENGINE=onnxruntime): the same answers, to the same tolerance.
ALL = REST + ["fastapi-onnxruntime", pytest.param("grpc", marks=pytest.mark.skipif(not GRPC_READY, reason="needs lessons/03-grpc"))]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]  # checked against the model below
MAX_BODY = 1024 * 1024
CONTRACT_VERSION = "1.0.0+contract-test"


def shuffled(row, seed):
    keys = list(row)
    random.Random(seed).shuffle(keys)
    return {key: row[key] for key in keys}


def make_rows(model):
    """24 iris flowers and a few synthetic ones (range corners, integers, negatives, big values), keys shuffled."""
    data = load_iris().data
    rows = [dict(zip(model.features, map(float, x))) for x in data[::6]]
    ranges = model.metadata["feature_ranges"]
    rows += [
        {name: ranges[name][0] for name in model.features},
        {name: ranges[name][1] for name in model.features},
        {name: (ranges[name][0] + ranges[name][1]) / 2 for name in model.features},
        dict(zip(model.features, [6, 3, 5, 2])),  # JSON integers are numbers too
        dict(zip(model.features, [-1.5, 0.0, 12.25, 3.75])),
        dict(zip(model.features, [999_999.0, -999_999.0, 0.5, 1e-9])),
    ]
    return [shuffled(row, seed) for seed, row in enumerate(rows)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory, model):
    """A copy of the model whose metadata says CONTRACT_VERSION: /model showing it proves MODEL_PATH is used."""
    folder = tmp_path_factory.mktemp("model")
    shutil.copy(model.path, folder / model.path.name)
    metadata = {**model.metadata, "version": CONTRACT_VERSION}
    (folder / model.path.with_suffix(".json").name).write_text(json.dumps(metadata))
    return folder / model.path.name


@pytest.fixture(scope="module")
def servers(model_path):
    """servers(kind) starts that server the first time it is asked for, and every one stops at module end."""
    started = {}

    def get(kind):
        if kind not in started:
            env = {"MODEL_PATH": str(model_path), "ENGINE": "onnxruntime" if kind.endswith("onnxruntime") else "sklearn"}
            if kind.startswith("fastapi"):  # `uvicorn app:app` from the lesson's folder, as its docstring says
                port = free_port()
                command = [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", str(port)]
                started[kind] = BackgroundServer(command, port=port, env=env, cwd=LESSONS / "02-fastapi").start()
            else:  # `python lessons/NN-x/server.py`, which reads PORT and HOST from the environment
                ready = {"ready": grpc_ready} if kind == "grpc" else {}
                started[kind] = start_server(SCRIPTS[kind], env=env, **ready)
        return started[kind]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(scope="module")
def rows(model):
    assert model.features == FEATURES
    rows = make_rows(model)
    # A row on a decision boundary could flip class on float32 rounding: none of these may be close to one.
    for probabilities in model.estimator.predict_proba([[r[n] for n in model.features] for r in rows]):
        top, second = sorted(probabilities)[-2:][::-1]
        assert top - second > 1e-3
    return rows


class RestClient:
    def __init__(self, url):
        self.url = url
        self.session = requests.Session()

    def predict(self, row):
        response = self.session.post(self.url + "/predict", json=row)
        assert response.status_code == 200, response.text
        return response.json()

    def predict_batch(self, rows):
        response = self.session.post(self.url + "/predict/batch", json={"instances": rows})
        assert response.status_code == 200, response.text
        assert list(response.json()) == ["predictions"]
        return response.json()["predictions"]


class GrpcClient:
    """The same questions over gRPC: features as a list in metadata order, float32 on the wire."""

    def __init__(self, address, features):
        import grpc
        model_pb2 = import_lesson("03-grpc/model_pb2.py")
        model_pb2_grpc = import_lesson("03-grpc/model_pb2_grpc.py")
        self.pb = model_pb2
        self.features = features
        self.stub = model_pb2_grpc.ModelServiceStub(grpc.insecure_channel(address))

    def as_dict(self, reply):
        return {"prediction": reply.class_index, "label": reply.label, "probabilities": list(reply.probabilities)}

    def request(self, row):
        return self.pb.PredictRequest(features=[row[name] for name in self.features])

    def predict(self, row):
        return self.as_dict(self.stub.Predict(self.request(row), timeout=5))

    def predict_batch(self, rows):
        request = self.pb.PredictBatchRequest(instances=[self.request(row) for row in rows])
        return [self.as_dict(reply) for reply in self.stub.PredictBatch(request, timeout=5).predictions]


def client_for(kind, servers, model):
    server = servers(kind)
    return GrpcClient(server.address, model.features) if kind == "grpc" else RestClient(server.url)


def expected(model, rows, kind):
    values = np.array([[row[name] for name in model.features] for row in rows], dtype=np.float64)
    if kind == "grpc":  # the wire carries float32: ask the model about the values the server receives
        values = values.astype(np.float32).astype(np.float64)
    return model.estimator.predict_proba(values)


def assert_matches_model(answer, probabilities, model, kind):
    best = int(probabilities.argmax())
    assert answer["prediction"] == best and type(answer["prediction"]) is int
    assert answer["label"] == model.classes[best]
    assert len(answer["probabilities"]) == len(model.classes)
    # The server is another process, answering one row where `expected` computed them all at once: another batch
    # shape, and on another machine another OpenBLAS kernel. Measured with the Haswell, SkylakeX and Prescott kernels
    # (forced in a shell, never in the tests) on 20,000 rows up to 1e6: at most 5e-14 apart, so 1e-9 never flakes and still catches any real error.
    # gRPC carries float32: 1e-5.
    tolerance = 1e-5 if kind == "grpc" else 1e-9
    assert answer["probabilities"] == pytest.approx(probabilities.tolist(), abs=tolerance)
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("kind", ALL)
def test_each_row_gets_the_models_answer(kind, servers, model, rows):
    client = client_for(kind, servers, model)
    for row, probabilities in zip(rows, expected(model, rows, kind)):
        assert_matches_model(client.predict(row), probabilities, model, kind)


@pytest.mark.parametrize("kind", ALL)
def test_a_batch_answers_like_single_requests(kind, servers, model, rows):
    client = client_for(kind, servers, model)
    batch = client.predict_batch(rows)
    assert len(batch) == len(rows)
    for answer, single, probabilities in zip(batch, [client.predict(row) for row in rows], expected(model, rows, kind)):
        assert_matches_model(answer, probabilities, model, kind)
        assert (answer["prediction"], answer["label"]) == (single["prediction"], single["label"])
        assert answer["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


@pytest.mark.parametrize("kind", ALL)
def test_a_batch_of_1000_is_accepted(kind, servers, model, rows):
    client = client_for(kind, servers, model)
    instances = (rows * 100)[:1000]
    batch = client.predict_batch(instances)
    assert [a["prediction"] for a in batch] == [int(p.argmax()) for p in expected(model, instances, kind)]


@pytest.mark.parametrize("kind", ["flask", "fastapi", "fastapi-onnxruntime"])
def test_health_and_model_metadata_come_from_model_path(kind, servers, model):
    url = servers(kind).url
    response = requests.get(url + "/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    info = requests.get(url + "/model").json()
    assert info["version"] == CONTRACT_VERSION  # the copy MODEL_PATH points at, not the repo's model
    assert info["name"] == model.metadata["name"]
    assert info["features"] == model.features  # in the model's order
    assert info["classes"] == model.classes


def test_both_rest_servers_describe_the_model_alike(servers):
    assert requests.get(servers("flask").url + "/model").json() == requests.get(servers("fastapi").url + "/model").json()


# ---- Bad input: (id, path, body, Content-Type, status, text the detail must contain) ------------------------------

ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
GOOD = json.dumps(ROW)
JSON_TYPE = "application/json"


def with_width(text):
    """GOOD with sepal_width replaced by any JSON text, e.g. NaN, which json.dumps cannot write."""
    return GOOD.replace("3.5", text)


def huge_chunks():
    """A body over 1 MiB sent chunked, without Content-Length: only counting the bytes can refuse it."""
    for _ in range(20):
        yield b" " * 65536
    yield GOOD.encode()


BAD_INPUT = [
    ("not-json", "/predict", "{sepal_length: 5.1}", JSON_TYPE, 400, None),
    ("truncated-json", "/predict", GOOD[:-1], JSON_TYPE, 400, None),
    ("not-utf8", "/predict", b'{"sepal_length": "\xff\xfe"}', JSON_TYPE, 400, None),
    ("empty-body", "/predict", "", JSON_TYPE, 400, None),
    ("text-plain", "/predict", GOOD, "text/plain", 415, None),
    ("form-encoded", "/predict", "sepal_length=5.1", "application/x-www-form-urlencoded", 415, None),
    ("no-content-type", "/predict", GOOD, None, 415, None),
    ("over-1mb", "/predict", GOOD + " " * MAX_BODY, JSON_TYPE, 413, None),
    ("over-1mb-chunked", "/predict", huge_chunks, JSON_TYPE, 413, None),
    ("batch-over-1mb", "/predict/batch", json.dumps({"instances": [ROW] * 1000}) + " " * MAX_BODY, JSON_TYPE, 413, None),
    ("body-array", "/predict", "[5.1, 3.5, 1.4, 0.2]", JSON_TYPE, 422, "body"),
    ("body-null", "/predict", "null", JSON_TYPE, 422, "body"),
    ("body-number", "/predict", "5.1", JSON_TYPE, 422, "body"),
    ("body-string", "/predict", '"5.1, 3.5, 1.4, 0.2"', JSON_TYPE, 422, "body"),
    ("missing-feature", "/predict", json.dumps({k: v for k, v in ROW.items() if k != "petal_width"}), JSON_TYPE, 422, "petal_width"),
    ("empty-object", "/predict", "{}", JSON_TYPE, 422, "sepal_length"),
    ("unknown-feature", "/predict", json.dumps({**ROW, "colour": 1.0}), JSON_TYPE, 422, "colour"),
    ("misspelt-feature", "/predict", json.dumps({**{k: v for k, v in ROW.items() if k != "petal_width"}, "petal_widht": 0.2}), JSON_TYPE, 422, "petal_wid"),
    ("string-number", "/predict", with_width('"3.5"'), JSON_TYPE, 422, "sepal_width"),
    ("string-word", "/predict", with_width('"wide"'), JSON_TYPE, 422, "sepal_width"),
    ("boolean-true", "/predict", with_width("true"), JSON_TYPE, 422, "sepal_width"),
    ("boolean-false", "/predict", with_width("false"), JSON_TYPE, 422, "sepal_width"),
    ("null-value", "/predict", with_width("null"), JSON_TYPE, 422, "sepal_width"),
    ("array-value", "/predict", with_width("[3.5]"), JSON_TYPE, 422, "sepal_width"),
    ("object-value", "/predict", with_width('{"cm": 3.5}'), JSON_TYPE, 422, "sepal_width"),
    ("nan", "/predict", with_width("NaN"), JSON_TYPE, 422, "sepal_width"),
    ("infinity", "/predict", with_width("Infinity"), JSON_TYPE, 422, "sepal_width"),
    ("minus-infinity", "/predict", with_width("-Infinity"), JSON_TYPE, 422, "sepal_width"),
    ("overflowing-float", "/predict", with_width("1e400"), JSON_TYPE, 422, "sepal_width"),
    ("too-large", "/predict", with_width("1e308"), JSON_TYPE, 422, "sepal_width"),
    ("too-small", "/predict", with_width("-1000001"), JSON_TYPE, 422, "sepal_width"),
    ("huge-integer", "/predict", with_width("1" + "0" * 400), JSON_TYPE, 422, "sepal_width"),
    ("batch-empty", "/predict/batch", '{"instances": []}', JSON_TYPE, 422, "instances"),
    ("batch-over-1000", "/predict/batch", json.dumps({"instances": [ROW] * 1001}), JSON_TYPE, 422, "instances"),
    ("batch-instances-object", "/predict/batch", json.dumps({"instances": ROW}), JSON_TYPE, 422, "instances"),
    ("batch-instances-null", "/predict/batch", '{"instances": null}', JSON_TYPE, 422, "instances"),
    ("batch-instances-missing", "/predict/batch", json.dumps({"rows": [ROW]}), JSON_TYPE, 422, "instances"),
    ("batch-extra-field", "/predict/batch", json.dumps({"instances": [ROW], "model": "v2"}), JSON_TYPE, 422, "model"),
    ("batch-body-array", "/predict/batch", json.dumps([ROW]), JSON_TYPE, 422, "body"),
    ("batch-item-number", "/predict/batch", json.dumps({"instances": [ROW, 5]}), JSON_TYPE, 422, "instances"),
    ("batch-bad-value", "/predict/batch", json.dumps({"instances": [ROW, {**ROW, "petal_width": "wide"}]}), JSON_TYPE, 422, "petal_width"),
    ("batch-nan", "/predict/batch", '{"instances": [' + GOOD + ", " + with_width("NaN") + "]}", JSON_TYPE, 422, "sepal_width"),
    ("batch-empty-body", "/predict/batch", "", JSON_TYPE, 400, None),
    ("batch-text-plain", "/predict/batch", json.dumps({"instances": [ROW]}), "text/plain", 415, None),
]


def send(url, path, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    data = body() if callable(body) else (body.encode() if isinstance(body, str) else body)
    return requests.post(url + path, data=data, headers=headers, timeout=30)


@pytest.mark.parametrize("case", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
@pytest.mark.parametrize("kind", REST)
def test_bad_input_gets_a_4xx_naming_the_field_and_the_server_stays_up(kind, case, servers, model):
    # The expected status is the table's, for both servers: so they answer every mistake alike.
    _, path, body, content_type, status, field = case
    url = servers(kind).url
    response = send(url, path, body, content_type)
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    detail = response.json()["detail"]
    assert detail, "an error must say what is wrong"
    if field:
        assert field in json.dumps(detail), detail
    # The next, normal request still gets the model's answer: a bad request costs nobody else anything.
    answer = requests.post(url + "/predict", json=ROW)
    assert answer.status_code == 200
    assert answer.json()["prediction"] == int(model.estimator.predict([list(ROW.values())])[0])


@pytest.mark.parametrize("kind", REST)
def test_422s_point_at_the_flower_in_a_batch(kind, servers):
    body = json.dumps({"instances": [ROW, ROW, {**ROW, "petal_length": None}]})
    response = send(servers(kind).url, "/predict/batch", body, JSON_TYPE)
    assert (response.status_code, response.json()) == (422, {"detail": "instances[2].petal_length: expected a number, got null"})


FIELD_ERRORS = [  # the sentence both servers write for a mistake, exactly: the same as gRPC's for the same values
    ("/predict", {k: v for k, v in ROW.items() if k != "petal_width"},
     "petal_width: missing; expected sepal_length, sepal_width, petal_length, petal_width"),
    ("/predict", {**ROW, "colour": 1}, "colour: unknown field; expected sepal_length, sepal_width, petal_length, petal_width"),
    ("/predict", {**ROW, "sepal_width": "3.5"}, "sepal_width: expected a number, got a string"),
    ("/predict", {**ROW, "sepal_width": 1e7}, "sepal_width: expected a number from -1,000,000 to 1,000,000, got 10000000.0"),
    ("/predict", [5.1, 3.5, 1.4, 0.2], "body: expected an object, got an array"),
    ("/predict/batch", {"instances": []}, "instances: expected 1 to 1000 items, got 0"),
    ("/predict/batch", {"instances": ROW}, "instances: expected an array, got an object"),
    ("/predict/batch", {"instances": [ROW], "model": "v2"}, "model: unknown field; expected instances"),
    ("/predict/batch", {"instances": [ROW, 5]}, "instances[1]: expected an object, got a number"),
]


@pytest.mark.parametrize("kind", REST)
@pytest.mark.parametrize("path, body, sentence", FIELD_ERRORS, ids=[case[2].split(":")[0] for case in FIELD_ERRORS])
def test_a_field_error_is_one_sentence_naming_the_field(kind, servers, path, body, sentence):
    response = send(servers(kind).url, path, json.dumps(body), JSON_TYPE)
    assert (response.status_code, response.json()) == (422, {"detail": sentence})


@pytest.mark.parametrize("case", [c for c in BAD_INPUT if c[4] != 400], ids=[c[0] for c in BAD_INPUT if c[4] != 400])
def test_flask_and_fastapi_answer_each_mistake_with_the_same_body(case, servers):
    # Lesson 02 promises lesson 01's contract: the same status and the same JSON, word for word. (400s say
    # "the body is not valid JSON: ..." with each parser's own reason, so they are left out.)
    _, path, body, content_type, _, _ = case
    flask, fastapi = (send(servers(kind).url, path, body, content_type) for kind in REST)
    assert (flask.status_code, flask.json()) == (fastapi.status_code, fastapi.json())


@pytest.mark.parametrize("kind", REST)
def test_a_body_of_exactly_1_mib_is_accepted_and_one_byte_more_is_not(kind, servers, model):
    url = servers(kind).url
    exactly = GOOD + " " * (MAX_BODY - len(GOOD))
    assert len(exactly.encode()) == MAX_BODY
    assert send(url, "/predict", exactly, JSON_TYPE).status_code == 200
    assert send(url, "/predict", exactly + " ", JSON_TYPE).status_code == 413


@pytest.mark.parametrize("kind", REST)
def test_json_with_a_charset_or_a_json_suffix_is_json(kind, servers):
    url = servers(kind).url
    for content_type in ("application/json; charset=utf-8", "application/vnd.iris+json"):
        assert send(url, "/predict", GOOD, content_type).status_code == 200


@pytest.mark.parametrize("kind", REST)
def test_unknown_routes_and_methods_get_json_errors(kind, servers):
    url = servers(kind).url
    for response, status in ((requests.get(url + "/nope"), 404), (requests.get(url + "/predict"), 405)):
        assert response.status_code == status
        assert response.json()["detail"]
