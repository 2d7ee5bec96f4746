"""Lesson 08: the Open Inference servers as real processes, called by clients nobody in the course wrote.

tritonclient (HTTP with JSON tensors, HTTP with binary tensors, gRPC) runs in MLServer's virtualenv, where it
installs (it needs protobuf < 7; the course's grpcio-tools needs >= 7.35). Expected values always come from
the in-process model. Error messages are pinned: they are the contract a client reads. Then Hypothesis attacks
both servers, SIGTERM drains them, and the KServe manifest is checked against KServe's own field list.
The specification's cases, run against MLServer too, are in tests/test_open_inference_conformance.py.
"""

import json
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_iris

from course import LESSONS, REPO, import_lesson
from course.server import ServerFailedToStart, grpc_ready, http_ready, start_server

LESSON = LESSONS / "08-open-inference"
REST, GRPC = "lessons/08-open-inference/rest_server.py", "lessons/08-open-inference/grpc_server.py"
pb = import_lesson("08-open-inference/inference_pb2.py")
pb_grpc = import_lesson("08-open-inference/inference_pb2_grpc.py")
TRITON_PYTHON = REPO / ".cache/mlserver-venv/bin/python"  # tritonclient 2.73.0 lives there (make mlserver)
ROWS = load_iris().data
SHAPE = ("input-0: expected shape [n, 4] with n from 1 to 1000, one row per flower (sepal_length, sepal_width, "
         "petal_length, petal_width); got ")
RANGE = "expected a number from -1,000,000 to 1,000,000, got "
NOT_SERVED = "model 'nope' is not served here; this server serves 'iris'"


@pytest.fixture(scope="module")
def rest():
    with start_server(REST, ready=http_ready("/v2/health/ready")) as server:
        yield server.url


@pytest.fixture(scope="module")
def grpc_address():
    with start_server(GRPC, ready=grpc_ready) as server:
        yield server.address


@pytest.fixture(scope="module")
def stub(grpc_address):
    with grpc.insecure_channel(grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def v2_body(rows, datatype="FP64", **extra):
    rows = np.asarray(rows)
    return {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": datatype,
                        "data": rows.ravel().tolist()}], **extra}


# ---- tritonclient, with its defaults ------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [ROWS[:1], ROWS], ids=["one flower", "150 flowers"])
def test_tritonclient_gets_the_models_predictions_every_way(rest, grpc_address, model, rows):
    if not TRITON_PYTHON.exists():
        pytest.skip("tritonclient is not installed: run `make mlserver` (it lives in MLServer's virtualenv)")
    command = [TRITON_PYTHON, LESSON / "triton_clients.py", rest.removeprefix("http://"), grpc_address,
               "--rows", json.dumps(rows.tolist()), "--repeat", "1"]
    results = json.loads(subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout)
    probabilities = model.estimator.predict_proba(rows)
    assert set(results) == {"http-json", "http-binary", "grpc"}
    for way, result in results.items():
        assert "error" not in result, (way, result)
        outputs = result["outputs"]
        assert outputs["predict"] == probabilities.argmax(axis=1).tolist(), way
        assert np.allclose(outputs["probabilities"], probabilities, rtol=0, atol=1e-6), way
        assert outputs["label"] == [model.classes[i] for i in probabilities.argmax(axis=1)], way
        assert result["metadata_inputs"] == 1


# ---- REST: what the lesson promises beyond the specification -------------------------------------------------

def test_metadata_is_built_from_the_models_metadata_file(rest, model):
    body = requests.get(f"{rest}/v2/models/iris", timeout=5).json()
    assert body["versions"] == [model.metadata["version"]]
    assert body["parameters"]["features"].split(",") == model.features
    assert body["parameters"]["classes"].split(",") == model.classes
    assert {o["name"]: o["shape"] for o in body["outputs"]} == {
        "predict": [-1], "probabilities": [-1, 3], "label": [-1]}
    assert "binary_tensor_data" in requests.get(f"{rest}/v2", timeout=5).json()["extensions"]


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64", "INT32", "UINT8"])
def test_rest_accepts_float_and_integer_tensors(rest, model, datatype):
    rows = np.asarray([[5, 3, 1, 0], [6, 3, 5, 2]]) if datatype[0] in "IU" else ROWS[:2]
    body = requests.post(f"{rest}/v2/models/iris/infer", json=v2_body(rows, datatype), timeout=5).json()
    wire = rows.astype(np.float32) if datatype == "FP32" else rows
    probabilities = next(o for o in body["outputs"] if o["name"] == "probabilities")
    assert np.allclose(np.reshape(probabilities["data"], (-1, 3)), model.estimator.predict_proba(wire), atol=1e-6)


def test_binary_and_json_outputs_mix_in_one_response(rest, model):
    header = json.dumps({
        "id": "mix", "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                 "parameters": {"binary_data_size": 96}}],
        "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    answer = requests.post(f"{rest}/v2/models/iris/infer", data=header + ROWS[:3].tobytes(), timeout=5,
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/octet-stream"
    length = int(answer.headers["Inference-Header-Content-Length"])
    body = json.loads(answer.content[:length])
    label, probabilities = body["outputs"]
    assert body["id"] == "mix" and label["data"] == [model.classes[i] for i in model.estimator.predict(ROWS[:3])]
    assert probabilities["parameters"]["binary_data_size"] == 72 == len(answer.content) - length
    assert np.allclose(np.frombuffer(answer.content[length:], "<f8").reshape(3, 3),
                       model.estimator.predict_proba(ROWS[:3]), atol=1e-6)


def binary(rows, datatype="FP64", size=None, header_length=None):
    data = np.asarray(rows, dtype={"FP64": "<f8", "FP32": "<f4"}[datatype]).tobytes()
    header = json.dumps({"inputs": [{"name": "input-0", "shape": list(np.shape(rows)), "datatype": datatype,
                                     "parameters": {"binary_data_size": len(data) if size is None else size}}]})
    return header.encode() + data, {"Inference-Header-Content-Length": str(header_length or len(header))}


REST_MISTAKES = {  # name: (path, body, headers, status, the error's words)
    "unknown model": ("nope", v2_body(ROWS[:1]), {}, 404, NOT_SERVED),
    "unknown version": ("iris/versions/2.0.0", v2_body(ROWS[:1]), {}, 404,
                        "model 'iris' has no version '2.0.0'; its versions: 1.0.0"),
    "three features": ("iris", v2_body([[5.1, 3.5, 1.4]]), {}, 400, SHAPE + "[1, 3]"),
    "1001 rows": ("iris", v2_body(np.ones((1001, 4))), {}, 400, SHAPE + "[1001, 4]"),
    "no batch dimension": ("iris", {"inputs": [{"name": "input-0", "shape": [4], "datatype": "FP64",
                                                "data": [5.1, 3.5, 1.4, 0.2]}]}, {}, 400, SHAPE + "[4]"),
    "text tensor": ("iris", v2_body([["a", "b", "c", "d"]], "BYTES"), {}, 400,
                    "input-0: datatype BYTES is not accepted; send FP32 or FP64 (INT types are converted)"),
    "numbers as text": ("iris", v2_body([["5", "3", "1", "0"]]), {}, 400, None),
    "too large": ("iris", v2_body([[5.1, 3.5, 1e7, 0.2]]), {}, 400, "input-0[0] petal_length: " + RANGE + "10000000.0"),
    "nested data of another shape": ("iris", {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64",
                                                          "data": [[1, 2], [3, 4], [5, 6], [7, 8]]}]}, {}, 400,
                                     "input-0: shape [2, 4] holds 8 numbers; the data has 8 in shape [4, 2]"),
    "other input name": ("iris", {"inputs": [{**v2_body(ROWS[:1])["inputs"][0], "name": "x"}]}, {}, 400,
                         "unknown input 'x': this model has one input, input-0"),
    "unknown output": ("iris", v2_body(ROWS[:1], outputs=[{"name": "predict_proba"}]), {}, 400,
                       "unknown output 'predict_proba': this model's outputs are predict, probabilities, label"),
    "id not a string": ("iris", v2_body(ROWS[:1], id=42), {}, 400, "id: expected a string, got a number"),
    "no inputs": ("iris", {"outputs": []}, {}, 400, "inputs: expected a list, got nothing"),
    "not JSON": ("iris", b"{'inputs': []}", {}, 400, None),
    "nested 100,000 deep": ("iris", b"[" * 100_000 + b"]" * 100_000, {}, 400, None),
    "a 400-digit number": ("iris", b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
                                   b'"data": [1' + b"0" * 400 + b', 1, 1, 1]}]}', {}, 400, None),
    "NaN as bytes": ("iris", *binary([[np.nan, 3.5, 1.4, 0.2]]), 400, "input-0[0] sepal_length: " + RANGE + "nan"),
    "binary size wrong": ("iris", *binary(ROWS[:1], size=31), 400,
                          "input-0: binary_data_size is 31, but 32 bytes follow the JSON"),
    "binary FP32 sent as FP64 bytes": ("iris", *binary(ROWS[:2], "FP32", size=64), 400,
                                       "input-0: binary_data_size is 64, but 32 bytes follow the JSON"),
    "header length past the body": ("iris", *binary(ROWS[:1], header_length=10_000), 400, None),
    "over 1 MB": ("iris", b" " * (1024 * 1024 + 1), {}, 413, "the body is larger than 1048576 bytes"),
}


@pytest.mark.parametrize("name", REST_MISTAKES)
def test_rest_mistakes_get_the_error_object_naming_the_problem(rest, name):
    path, body, headers, status, words = REST_MISTAKES[name]
    send = {"json": body} if isinstance(body, dict) else {"data": body}
    answer = requests.post(f"{rest}/v2/models/{path}/infer", headers=headers, timeout=10, **send)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error == words if words else error.startswith(("input-0: data must be numbers", "the body is not valid",
                                                          "inference-header-content-length must be"))


def test_unknown_paths_and_methods_get_the_error_object(rest):
    assert requests.get(f"{rest}/v1/models/iris", timeout=5).json() == {"error": "Not Found: GET /v1/models/iris"}
    answer = requests.get(f"{rest}/v2/models/iris/infer", timeout=5)
    assert answer.status_code == 405 and answer.json()["error"].startswith("Method Not Allowed")
    assert requests.get(f"{rest}/v2/models/nope/ready", timeout=5).json() == {"error": NOT_SERVED}


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                         lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
                             st.sampled_from(["inputs", "outputs", "name", "shape", "datatype", "data", "id",
                                              "parameters", "binary_data_size", "binary_data"]) | st.text(max_size=3),
                             inner, max_size=5), max_leaves=20))
def test_any_json_gets_an_answer_or_the_error_object(rest, body):
    answer = requests.post(f"{rest}/v2/models/iris/infer", data=json.dumps(body), timeout=5)
    assert answer.status_code in (200, 400), answer.text
    assert answer.status_code == 200 or isinstance(answer.json()["error"], str)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), header=st.text(alphabet="0123456789-x", max_size=4))
def test_any_bytes_after_a_binary_header_get_an_answer_or_the_error_object(rest, data, header):
    body, headers = binary(ROWS[:1])
    answer = requests.post(f"{rest}/v2/models/iris/infer", data=body[:len(body) - 32] + data, timeout=5,
                           headers={**headers, **({"Inference-Header-Content-Length": header} if header else {})})
    assert answer.status_code in (200, 400), answer.text
    assert answer.status_code == 200 or isinstance(answer.json()["error"], str)


# ---- gRPC ---------------------------------------------------------------------------------------------------

def infer_request(rows, datatype="FP64", raw=True, model="iris", **fields):
    rows = np.asarray(rows)
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="input-0", datatype=datatype, shape=rows.shape)
    if raw:
        request.raw_input_contents.append(rows.astype({"FP64": "<f8", "FP32": "<f4", "INT32": "<i4"}[datatype])
                                          .tobytes())
    else:
        field = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT32": "int_contents"}[datatype]
        getattr(tensor.contents, field).extend(rows.ravel().tolist())
    return request


def test_grpc_answers_raw_bytes_with_raw_bytes_and_contents_with_contents(stub, model):
    expected = model.estimator.predict_proba(ROWS)
    raw = stub.ModelInfer(infer_request(ROWS), timeout=5)
    assert [o.name for o in raw.outputs] == ["predict", "probabilities", "label"]
    assert np.allclose(np.frombuffer(raw.raw_output_contents[1], "<f8").reshape(-1, 3), expected, atol=1e-6)
    typed = stub.ModelInfer(infer_request(ROWS, raw=False, id="7"), timeout=5)
    assert typed.id == "7" and not typed.raw_output_contents
    assert list(typed.outputs[0].contents.int64_contents) == expected.argmax(axis=1).tolist()
    assert np.allclose(np.reshape(typed.outputs[1].contents.fp64_contents, (-1, 3)), expected, atol=1e-6)
    assert [b.decode() for b in typed.outputs[2].contents.bytes_contents] == [model.classes[i]
                                                                              for i in expected.argmax(axis=1)]


def test_grpc_metadata_matches_rest(stub, rest):
    reply = stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"), timeout=5)
    body = requests.get(f"{rest}/v2/models/iris", timeout=5).json()
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [
        (t["name"], t["datatype"], t["shape"]) for t in body["outputs"]]
    assert stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=5).extensions == ["binary_tensor_data"]


GRPC_MISTAKES = {  # name: (request, code, details)
    "unknown model": (infer_request(ROWS[:1], model="nope"), grpc.StatusCode.NOT_FOUND, NOT_SERVED),
    "three features": (infer_request([[5.1, 3.5, 1.4]], raw=False), grpc.StatusCode.INVALID_ARGUMENT, SHAPE + "[1, 3]"),
    "infinity": (infer_request([[np.inf, 3.5, 1.4, 0.2]], "FP32"), grpc.StatusCode.INVALID_ARGUMENT,
                 "input-0[0] sepal_length: " + RANGE + "inf"),
    "raw bytes one short": (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[1, 4])], raw_input_contents=[b"\0" * 31]),
        grpc.StatusCode.INVALID_ARGUMENT, "input-0: shape [1, 4] of FP64 takes 32 bytes; got 31"),
    "two inputs": (pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor()] * 2),
                   grpc.StatusCode.INVALID_ARGUMENT, "inputs: expected one tensor, input-0; got 2"),
    "raw bytes and contents": (infer_request(ROWS[:1], raw=True), grpc.StatusCode.INVALID_ARGUMENT,
                               "raw_input_contents: expected one entry, for input-0, and no `contents`"),
}
GRPC_MISTAKES["raw bytes and contents"][0].inputs[0].contents.fp64_contents.extend([1, 2, 3, 4])


@pytest.mark.parametrize("name", GRPC_MISTAKES)
def test_grpc_mistakes_get_a_status_naming_the_problem(stub, name):
    request, code, details = GRPC_MISTAKES[name]
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request, timeout=5)
    assert (error.value.code(), error.value.details()) == (code, details)


def test_grpc_model_metadata_of_an_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=5)
    assert (error.value.code(), error.value.details()) == (grpc.StatusCode.NOT_FOUND, NOT_SERVED)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300) | st.builds(
    lambda shape, datatype, values, raw: infer_request(np.resize(values, shape) if all(shape) else np.zeros(shape),
                                                       datatype, raw).SerializeToString(),
    st.lists(st.integers(0, 5), min_size=1, max_size=3), st.sampled_from(["FP64", "FP32"]),
    st.lists(st.floats(width=32), min_size=1, max_size=24), st.booleans()))
def test_any_bytes_over_grpc_get_a_reply_or_invalid_argument(grpc_address, data):
    with grpc.insecure_channel(grpc_address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            pb.ModelInferResponse.FromString(call(data, timeout=5))
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.details()


# ---- shutdown, start-up, stubs ------------------------------------------------------------------------------

def test_rest_sigterm_turns_readiness_off_keeps_serving_then_exits_0():
    server = start_server(REST, ready=http_ready("/v2/health/ready"), env={"DRAIN_SECONDS": "1.5"})
    try:
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
        assert requests.get(f"{server.url}/v2/health/live", timeout=5).status_code == 200
        assert requests.post(f"{server.url}/v2/models/iris/infer", json=v2_body(ROWS[:1]), timeout=5).ok
        assert server.process.wait(10) == 0
    finally:
        server.stop()


def test_grpc_sigterm_turns_readiness_off_keeps_serving_then_exits_0():
    server = start_server(GRPC, ready=grpc_ready, env={"DRAIN_SECONDS": "1.5"})
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            server.signal(signal.SIGTERM)
            time.sleep(0.3)
            assert not stub.ServerReady(pb.ServerReadyRequest(), timeout=5).ready
            assert not grpc_ready(server)  # the standard health service says NOT_SERVING too
            assert stub.ModelInfer(infer_request(ROWS[:1]), timeout=5).outputs
        assert server.process.wait(10) == 0
    finally:
        server.stop()


@pytest.mark.parametrize("script", [REST, GRPC])
def test_the_servers_load_the_model_from_model_path(tmp_path, script):
    with pytest.raises(ServerFailedToStart, match="missing.joblib does not exist"):
        start_server(script, ready=grpc_ready, env={"MODEL_PATH": str(tmp_path / "missing.joblib")})


def test_committed_stubs_are_generated_from_the_current_proto(tmp_path):
    # The same command as `make protos`, into a temporary folder.
    subprocess.run([".venv/bin/python" if (REPO / ".venv/bin/python").exists() else "python", "-m",
                    "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", "protos/inference.proto"], cwd=REPO, check=True)
    for name in ["inference_pb2.py", "inference_pb2_grpc.py", "inference_pb2.pyi"]:
        assert (tmp_path / name).read_bytes() == (LESSON / name).read_bytes(), \
            f"lessons/08-open-inference/{name} is out of date with protos/inference.proto: run `make protos`"


# ---- the KServe manifest, offline ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifests():
    return list(yaml.safe_load_all((LESSON / "kserve/inferenceservice.yaml").read_text()))


def test_the_inference_services_use_only_kserve_fields(manifests):
    from course import kserve as check
    validator = check.validator()
    for manifest in manifests:
        assert check.problems(manifest, validator) == [], manifest["metadata"]["name"]
    typo = json.loads(json.dumps(manifests[0]))
    typo["spec"]["predictor"]["model"]["protocolVersoin"] = typo["spec"]["predictor"]["model"].pop("protocolVersion")
    assert check.problems(typo, validator) == [
        "spec.predictor.model: Additional properties are not allowed ('protocolVersoin' was unexpected)"]
    wrong_type = json.loads(json.dumps(manifests[1]))
    wrong_type["spec"]["predictor"]["containers"][0]["ports"][0]["containerPort"] = "8080"
    assert check.problems(wrong_type, validator) == [
        "spec.predictor.containers.0.ports.0.containerPort: '8080' is not of type 'integer'"]


def test_the_inference_services_speak_v2_as_the_model_named_iris(manifests, rest):
    sklearn, own = manifests
    assert sklearn["metadata"]["name"] == "iris"  # KServe's runtime serves it as /v2/models/<this name>
    assert sklearn["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    assert sklearn["spec"]["predictor"]["model"]["modelFormat"]["name"] == "sklearn"
    container = own["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["ports"][0]["containerPort"] == int(env["PORT"]) and env["HOST"] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):  # the paths answer 200 on the real server
        assert container[probe]["httpGet"]["port"] == int(env["PORT"])
        assert requests.get(rest + container[probe]["httpGet"]["path"], timeout=5).status_code == 200


# ---- the exercise -------------------------------------------------------------------------------------------

def test_solution_sends_and_reads_binary_tensors(rest, model):
    solution = import_lesson("solutions/08-open-inference/binary_client.py")
    rows = ROWS[np.arange(1000) % len(ROWS)]
    assert np.allclose(solution.infer_binary(rest, rows), model.estimator.predict_proba(rows.astype(np.float32)),
                       atol=1e-6)
    body, _ = solution.binary_request(rows)
    assert len(body) < len(json.dumps(v2_body(rows.astype(np.float32)))) / 3
    with pytest.raises(RuntimeError, match="404 from the server: .*not served here"):
        solution.infer_binary(rest, rows[:1], model="nope")
