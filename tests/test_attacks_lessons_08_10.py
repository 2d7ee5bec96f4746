"""Lessons 08 and 10 attacked from outside, as real processes on 127.0.0.1, with tools nobody in the course wrote.

- Schemathesis (`--mode all --checks all`, fixed seed, bounded examples). Lesson 08 publishes no OpenAPI schema (its
  contract is the Open Inference Protocol), so open_inference() below writes the protocol's routes down as one, exact
  enough that "valid for the schema" means "valid for the server". Lesson 10 with its own /openapi.json: with a key
  in X-API-Key, without one, and with a wrong one.
- Raw HTTP bytes: the binary extension's Inference-Header-Content-Length with wrong, huge, negative and non-ASCII
  values, truncated and chunked bodies (lesson 08); every named attack of tests/test_attacks_rest.py, with a key and
  without (lesson 10, whose contract is lesson 02's). Then Hypothesis bodies, held to the contract.
- Raw protobuf bytes on generic gRPC channels (identity serializers), with and without a key.
- Stalled clients (half-sent bodies, calls that never send their message): health answers within 1 s, and a planned
  stop still ends.
- SIGTERM under load: 32 clients, SIGTERM after 0.5 s, every answer checked against the in-process model: 0 lost,
  exit code 0.

What they found, fixed in the servers: lesson 08 answered 500 to Inference-Header-Content-Length "²" (a digit to
str.isdigit, not to int) or 5,000 digits; took JSON true for the number 1 (numpy does); sent 405 without Allow; logged a
traceback when a client hung up mid-body; never exited after SIGTERM while one client stalled mid-body; and answered
one output named 37,000 times (1 MiB of request) with 2.4 GB. Lesson 10's body deadline failed its lifespan 10 s after
start-up. What must never come back: a 5xx, a hang, a path, a traceback or a key. Fixed seeds: every run sends the
same requests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib.util
import json
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest
import requests
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from course import REPO, import_lesson
from course.server import grpc_ready, http_ready, start_server
from course.shutdown import NotSent
from test_attacks_rest import NAMED, attacks, check_answer
from test_attacks_rest import send as send_attack
from test_grpc_attacks import stalled_calls

pb = import_lesson("08-open-inference/inference_pb2.py")
model_pb2 = import_lesson("10-security/model_pb2.py")

SEED = 20240
TIMEOUT = 5  # seconds a server has to answer one request; longer is a hang
K1, K2, WRONG = (secrets.token_urlsafe(32) for _ in range(3))
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 5.1, 1.8]]
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
REST08, GRPC08 = "lessons/08-open-inference/rest_server.py", "lessons/08-open-inference/grpc_server.py"
REST10, GRPC10 = "lessons/10-security/app.py", "lessons/10-security/grpc_server.py"
INFER = "/inference.GRPCInferenceService/ModelInfer"
# Lesson 10's keys, with a rate limit no test here reaches (tests/test_security_attacks.py attacks the limit).
KEYED = {"API_KEYS": f"{K1},{K2}", "RATE_PER_SECOND": "100000", "RATE_BURST": "100000"}
# What must never reach a client: where our files are, a Python stack trace, a key.
LEAKS = re.compile("|".join(map(re.escape, [str(REPO), "site-packages", ".py", "Traceback", 'File "', "/usr/",
                                            "/home/", "/tmp/", K1, K2, WRONG])))


@pytest.fixture(scope="module")
def servers():
    """servers(name) starts that server the first time it is asked for; every one stops at module end."""
    configs = {
        "rest08": (REST08, {}, http_ready("/v2/health/ready")),
        "grpc08": (GRPC08, {}, grpc_ready),
        "rest10": (REST10, {**KEYED, "BODY_SECONDS": "1"}, http_ready("/health")),
        "grpc10": (GRPC10, KEYED, grpc_ready),  # health needs no key
    }
    started = {}

    def get(name):
        if name not in started:
            script, env, ready = configs[name]
            started[name] = start_server(script, env={"DRAIN_SECONDS": "0", **env}, ready=ready)
        return started[name]

    yield get
    for server in started.values():
        server.stop()


def v2_body(flower, datatype="FP64", **extra) -> dict:
    return {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": datatype, "data": flower}], **extra}


def raw_http(server, head: str, body: bytes = b"", hang_up=False) -> tuple[int, str, bytes] | None:
    """(status, content type, body) for a request written out by hand; None if the server closed without one."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as connection:
        try:
            connection.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
            if hang_up:
                connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server answered, and closed, before it read everything: read what it said
        response = http.client.HTTPResponse(connection)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        return response.status, response.getheader("Content-Type", ""), response.read()


# ---- Schemathesis ---------------------------------------------------------------------------------------------------

def schemathesis(schema: str, url: str, cwd, *options: str) -> subprocess.CompletedProcess:
    """`schemathesis run`, as a learner would type it, in `cwd`: it and Hypothesis keep caches in the current folder."""
    if importlib.util.find_spec("schemathesis") is None:
        pytest.skip("schemathesis is not installed: pip install schemathesis")
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", schema, "--url", url, "--mode", "all", "--checks", "all",
        "--max-response-time", "5", "--max-examples", "40", "--seed", str(SEED), "--generation-database", "none",
        "--workers", "1", "--request-timeout", str(TIMEOUT), "--continue-on-failure", "--no-color",
        "--phases", "examples,coverage,fuzzing", *options,  # stateful: 8 s more, and nothing here has state
    ]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=90)


def failures(run: subprocess.CompletedProcess) -> str:
    return run.stdout[run.stdout.find("FAILURES"):] if "FAILURES" in run.stdout else run.stdout + run.stderr


ERROR = {"description": "The protocol's error object", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
NUMBER = {"type": "number", "minimum": -1e6, "maximum": 1e6}
OUTPUTS = ["predict", "probabilities", "label"]
DATATYPES = ["FP64", "FP32", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"]


def open_inference(version: str) -> dict:
    """The protocol's REST routes for this model as OpenAPI. A request valid for it is one the server must answer
    200 (one flower, as JSON); what breaks it must get 4xx: booleans for numbers, other names, shapes, types."""
    model = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "enum": ["iris"]}}
    versioned = {"name": "model_version", "in": "path", "required": True,
                 "schema": {"type": "string", "enum": [version]}}
    tensor = {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
        "name": {"type": "string", "enum": ["input-0"]}, "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer"}, "prefixItems": [{"const": 1}, {"const": 4}],
                  "minItems": 2, "maxItems": 2},
        "data": {"type": "array", "items": NUMBER, "minItems": 4, "maxItems": 4}}}
    request = {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": OUTPUTS}, "parameters": {"type": "object"}}},
            "allOf": [{"contains": {"properties": {"name": {"const": name}}}, "minContains": 0, "maxContains": 1}
                      for name in OUTPUTS]}}}  # each output once at most
    reply = {"type": "object", "required": ["model_name", "model_version", "outputs"], "properties": {
        "model_name": {"const": "iris"}, "model_version": {"const": version}, "id": {"type": "string"},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"]}}}}

    def get(required, *parameters):
        schema = {"type": "object", "required": required}
        answer = {"description": "the answer", "content": {"application/json": {"schema": schema}}}
        return {"get": {"parameters": list(parameters), "responses": {"200": answer, "503": answer, "404": ERROR}}}

    def infer(*parameters):
        return {"post": {"parameters": list(parameters),
                         "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
                         "responses": {"200": {"description": "the outputs", "content": {
                             "application/json": {"schema": reply}, "application/octet-stream": {}}},
                             "400": ERROR, "404": ERROR, "413": ERROR}}}

    paths = {"/v2": get(["name", "version", "extensions"]), "/v2/health/live": get(["live"]),
             "/v2/health/ready": get(["ready"]), "/v2/models/{model_name}": get(["name", "inputs", "outputs"], model),
             "/v2/models/{model_name}/versions/{model_version}": get(["name", "inputs", "outputs"], model, versioned),
             "/v2/models/{model_name}/ready": get(["ready"], model),
             "/v2/models/{model_name}/versions/{model_version}/ready": get(["ready"], model, versioned),
             "/v2/models/{model_name}/infer": infer(model),
             "/v2/models/{model_name}/versions/{model_version}/infer": infer(model, versioned)}
    return {"openapi": "3.1.0", "info": {"title": "Open Inference Protocol (KServe V2): iris", "version": "2"},
            "paths": paths}


def test_schemathesis_finds_no_failure_in_lesson_08(servers, tmp_path):
    server = servers("rest08")
    version = requests.get(server.url + "/v2/models/iris", timeout=TIMEOUT).json()["versions"][0]
    (tmp_path / "v2.json").write_text(json.dumps(open_inference(version)))
    run = schemathesis(str(tmp_path / "v2.json"), server.url, tmp_path)
    assert run.returncode == 0, f"schemathesis against lesson 08:\n{failures(run)}"
    assert " passed" in run.stdout  # it did test something
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("key", [K1, None, WRONG], ids=["key", "no key", "wrong key"])
def test_schemathesis_finds_no_failure_in_lesson_10(servers, tmp_path, key):
    server = servers("rest10")
    headers = ["-H", f"X-API-Key: {key}"] if key else []
    run = schemathesis(f"{server.url}/openapi.json", server.url, tmp_path, *headers)
    assert run.returncode == 0, f"schemathesis against lesson 10:\n{failures(run)}"
    assert " passed" in run.stdout
    assert key is not K1 or "Authentication failed" not in run.stdout  # with the key, it got past the lock


# ---- Lesson 08 over raw HTTP: the binary extension's header and the body's framing ----------------------------------

BODY = json.dumps(v2_body(FLOWERS[0])).encode()
BINARY_JSON = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                      "parameters": {"binary_data_size": 32}}]}).encode()
BINARY = BINARY_JSON + np.asarray(FLOWERS[0], "<f8").tobytes()
HEADER = "Inference-Header-Content-Length"


def post08(body: bytes, *headers: str, length: int | None = None, chunked=False) -> str:
    """The head of a POST to lesson 08's infer route, as raw text (raw_http writes the line ends)."""
    lines = ["POST /v2/models/iris/infer HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    length = len(body) if length is None else length
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return "\n".join(lines) + "\n"


def case(body: bytes, *headers: str, status: int | None, wire: bytes | None = None, hang_up=False, **head):
    """(head, bytes after it, hang up?, status): 200, the 4xx a correct server answers, or None: it may close."""
    return post08(body, *headers, **head), body if wire is None else wire, hang_up, status


def json08(flower, datatype="FP64") -> bytes:
    return json.dumps(v2_body(flower, datatype)).encode()


SIZE = f"{HEADER}: {len(BINARY_JSON)}"
# Each output named is answered in full: 1,000 rows and the same output named 37,000 times fit in 1 MiB and asked
# for a 2.4 GB answer (a minute of a blocked event loop, then out of memory). Here 1,000 times: 65 MB if it came.
AMPLIFIED = json.dumps({**v2_body(FLOWERS * 250), "outputs": [{"name": "probabilities"}] * 1000}).encode().replace(
    b'"shape": [1, 4]', b'"shape": [1000, 4]')
RAW08 = {
    f"{HEADER} ² (a digit to str.isdigit)": case(BINARY, f"{HEADER}: \xb2", status=400),
    f"{HEADER} of 5,000 digits": case(BINARY, f"{HEADER}: {'9' * 5000}", status=400),
    f"{HEADER} -1": case(BINARY, f"{HEADER}: -1", status=400),
    f"{HEADER} +{len(BINARY_JSON)}": case(BINARY, f"{HEADER}: +{len(BINARY_JSON)}", status=400),
    f"{HEADER} 0x10": case(BINARY, f"{HEADER}: 0x10", status=400),
    f"{HEADER} 0": case(BINARY, f"{HEADER}: 0", status=400),
    f"{HEADER} empty": case(BINARY, f"{HEADER}: ", status=400),
    f"{HEADER} past the body": case(BINARY, f"{HEADER}: {len(BINARY) + 1}", status=400),
    f"{HEADER} 1 short of the JSON": case(BINARY, f"{HEADER}: {len(BINARY_JSON) - 1}", status=400),
    "the binary tensor a byte short": case(BINARY[:-1], SIZE, status=400),
    "the binary tensor a byte long": case(BINARY + b"\0", SIZE, status=400),
    "the binary tensor": case(BINARY, SIZE, status=200),
    "the binary tensor, chunked": case(BINARY, SIZE, chunked=True, status=200,
                                       wire=b"%x\r\n%s\r\n0\r\n\r\n" % (len(BINARY), BINARY)),
    "JSON in two chunks": case(BODY, chunked=True, status=200,
                               wire=b"a\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (BODY[:10], len(BODY) - 10, BODY[10:])),
    "2 MiB in chunks": case(b"", chunked=True, status=413,
                           wire=(b"100000\r\n" + b" " * 2**20 + b"\r\n") * 2 + b"0\r\n\r\n"),
    "Content-Length shorter than the body": case(BODY, length=10, status=400),
    "Content-Length 2,000,000, then the client hangs up": case(BODY, length=2_000_000, hang_up=True, status=None),
    "Content-Length longer, then the client hangs up": case(BODY, length=500, hang_up=True, status=None),
    "a chunk shorter than its size, then the client hangs up": case(b"{}", chunked=True, wire=b"100\r\n{}",
                                                                    hang_up=True, status=None),
    "true for a number": case(json08([True, 3.5, 1.4, 0.2]), status=400),
    "false for a number, nested": case(json08([[5.1, 3.5, 1.4, False]]), status=400),
    "true for a number, as INT32": case(json08([1, 3, 1, True], "INT32"), status=400),
    "integers, as INT32": case(json08([5, 3, 1, 0], "INT32"), status=200),
    "one output named 1,000 times": case(AMPLIFIED, status=400),
}


@pytest.mark.parametrize("name", RAW08)
def test_lesson_08_answers_raw_requests_with_the_protocols_answer(servers, name):
    head, body, hang_up, status = RAW08[name]
    server = servers("rest08")
    answer = raw_http(server, head, body, hang_up)
    if status is None:  # the client hung up: closing is fair, so is a 4xx nobody reads
        assert answer is None or 400 <= answer[0] < 500, answer
    else:
        assert answer is not None and answer[0] == status, (answer, server.log()[-2000:])
        if status != 200:
            assert answer[1] == "application/json" and isinstance(json.loads(answer[2])["error"], str), answer
            assert not LEAKS.search(answer[2].decode()), answer
    assert requests.get(server.url + "/v2/health/ready", timeout=TIMEOUT).status_code == 200


def test_lesson_08_logs_no_traceback_for_any_of_them(servers):
    # Runs after the table: a client that hangs up mid-body is the client's business, not an error in our log.
    server = servers("rest08")
    for name in ("Content-Length longer, then the client hangs up", f"{HEADER} of 5,000 digits"):
        raw_http(server, *RAW08[name][:3])
    time.sleep(0.1)
    assert "Traceback" not in server.log(), server.log()[-3000:]


# ---- Lesson 08: Hypothesis bodies, held to the protocol's contract --------------------------------------------------

def rows_in(document) -> list[list[float]] | None:
    """The rows a correct server predicts for this JSON request (no binary part), or None: refuse it with a 400."""
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) or len(document["inputs"]) != 1:
        return None
    tensor = document["inputs"][0]
    if not isinstance(tensor, dict) or tensor.get("name") != "input-0" or tensor.get("datatype") not in DATATYPES:
        return None
    shape, data = tensor.get("shape"), tensor.get("data")
    if not isinstance(tensor.get("parameters", {}), dict) or "binary_data_size" in tensor.get("parameters", {}):
        return None  # a binary tensor, with no bytes after the JSON
    if not isinstance(data, list) or not isinstance(shape, list) or len(shape) != 2:
        return None
    if not all(type(n) is int for n in shape) or shape[1] != 4 or not 1 <= shape[0] <= 1000:
        return None
    flat = [x for row in data for x in row] if data and all(isinstance(row, list) for row in data) else data
    if data and isinstance(data[0], list) and [len(data), *{len(row) for row in data}] != shape:
        return None
    if len(flat) != shape[0] * 4 or not all(type(x) in (int, float) and -1e6 <= x <= 1e6 for x in flat):
        return None
    if "outputs" in document or "id" in document and not isinstance(document["id"], str):
        return None  # both checked by the named tests; here the body is what varies
    if not isinstance(document.get("parameters", {}), dict):
        return None
    return [flat[i:i + 4] for i in range(0, len(flat), 4)]


numbers = st.one_of(st.floats(-10, 10), st.integers(-3, 12))  # what a flower measures: all valid
HOSTILE = [None, "5.1", "", [], [5.1], [[5.1]], {"cm": 5.1}, 1e6, -1e6, 1e6 + 1, -1e300, -0.0, 2**63,
           2**64, -2**63 - 1]
# Booleans get a branch of their own: numpy reads [true, 1.5] as [1.0, 1.5], so they are the values a server
# built on numpy takes for numbers without a word; the rest of HOSTILE it refuses whatever it is built on.
hostile = st.one_of(st.booleans(), st.sampled_from(HOSTILE + ["x", "\ud800"]))


@st.composite
def v2_requests(draw) -> dict:
    rows = draw(st.integers(1, 3))
    data = draw(st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=rows, max_size=rows))
    flat = draw(st.booleans())
    values = [x for row in data for x in row] if flat else data
    tensor = {"name": "input-0", "shape": [rows, 4], "datatype": draw(st.sampled_from(DATATYPES)), "data": values}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2]))):  # two requests in three are broken somewhere
        where = draw(st.sampled_from(["value"] * 4 + ["key", "shape", "name", "datatype", "extra"]))
        if where == "value" and flat:
            values[draw(st.integers(0, len(values) - 1))] = draw(hostile)
        elif where == "value":
            values[draw(st.integers(0, len(values) - 1))][draw(st.integers(0, 3))] = draw(hostile)
        elif where == "key":
            del tensor[draw(st.sampled_from(sorted(tensor)))]
        elif where == "shape":
            tensor["shape"] = draw(st.lists(st.one_of(st.integers(-1, 5), st.booleans(), st.floats(0, 5)), max_size=3))
        elif where in ("name", "datatype"):
            tensor[where] = draw(st.one_of(st.sampled_from(["input-0", "INPUT-0", "FP64", "BYTES", "BOOL", "FP16"]),
                                           hostile))
        else:
            tensor[draw(st.sampled_from(["parameters", "contents", "unknown"]))] = draw(hostile)
    document = {"inputs": [tensor]}
    if draw(st.integers(0, 4)) == 0:
        document[draw(st.sampled_from(["id", "parameters", "inputs"]))] = draw(hostile)
    return document


@seed(SEED)
@settings(max_examples=200, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(document=v2_requests())
def test_lesson_08_answers_any_v2_body_as_the_protocol_says(servers, model, document):
    answer = requests.post(servers("rest08").url + "/v2/models/iris/infer", data=json.dumps(document), timeout=TIMEOUT)
    rows = rows_in(document)
    if rows is None:
        assert answer.status_code == 400, (answer.status_code, answer.text)
        assert isinstance(answer.json()["error"], str), answer.text
    else:
        assert answer.status_code == 200, answer.text
        outputs = {tensor["name"]: tensor["data"] for tensor in answer.json()["outputs"]}
        expected = model.estimator.predict_proba(np.asarray(rows, dtype=np.float64))
        assert outputs["predict"] == expected.argmax(axis=1).tolist(), answer.text
        assert np.allclose(outputs["probabilities"], expected.ravel(), atol=1e-9), answer.text


@seed(SEED)
@settings(max_examples=100, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow])
@given(header=st.one_of(st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=6),
                        st.integers(-2, 200).map(str), st.integers(10**6, 10**30).map(str),
                        # digits to str.isdigit() that int() refuses: superscripts, and more than 4,300 digits
                        st.sampled_from(["\xb2", "\xb3", "\xb9", "1\xb2", "9" * 4301, "0" * 5000 + "1"])),
       tail=st.binary(max_size=40))
def test_lesson_08_answers_any_binary_header_and_tail_with_200_or_the_error_object(servers, header, tail):
    server = servers("rest08")
    body = BINARY_JSON + tail
    # Raw bytes: a client library would refuse to send some of these header values; an attacker's socket does not.
    answer = raw_http(server, post08(body, f"{HEADER}: {header}"), body)
    assert answer is not None and answer[0] in (200, 400), answer
    if answer[0] == 200:
        value = header.strip(" \t")
        assert value.isdigit() and int(value) == len(BINARY_JSON) and len(tail) == 32, (header, tail)
    elif "json" not in answer[1]:  # the HTTP server's own refusal (text/plain): no control characters in a header
        assert any(c < " " and c != "\t" or c == "\x7f" for c in header), (header, answer)
    else:
        assert isinstance(json.loads(answer[2])["error"], str), answer


# ---- Lesson 10 over raw HTTP: lesson 02's attacks, with a key -------------------------------------------------------

def keyed(attack, key=K1):
    return dataclasses.replace(attack, request=attack.request.replace(
        b"Host: 127.0.0.1\r\n", b"Host: 127.0.0.1\r\nX-API-Key: " + key.encode() + b"\r\n", 1))


@pytest.mark.parametrize("attack", NAMED.values(), ids=NAMED.keys())
def test_lesson_10_answers_lesson_02s_attacks_as_lesson_02_does(servers, model, attack):
    check_answer("10-security", servers("rest10"), keyed(attack), model)


@pytest.mark.parametrize("key", [None, WRONG], ids=["no key", "wrong key"])
def test_lesson_10_refuses_every_attack_without_a_valid_key_and_leaks_nothing(servers, key):
    server, refused = servers("rest10"), Counter()
    for attack in NAMED.values():
        answer = send_attack(server, keyed(attack, key) if key else attack)
        if answer is None:  # the client hung up
            continue
        assert answer.status != 200 and answer.status < 500, (answer, attack)
        if "json" in answer.content_type:
            assert isinstance(json.loads(answer.body)["detail"], str) and not LEAKS.search(answer.body.decode())
        refused[answer.status] += 1
    assert refused[401 if key is None else 403] >= 30, refused  # most get no further than the lock


@seed(SEED)
@settings(max_examples=150, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(attack=attacks())
def test_lesson_10_answers_random_attacks_as_lesson_02_does(servers, model, attack):
    check_answer("10-security", servers("rest10"), keyed(attack), model)


# ---- gRPC: raw protobuf bytes ---------------------------------------------------------------------------------------

def call_raw(channel, method, data, metadata=()):
    """(status name, details or reply bytes) for raw bytes: nothing on our side checks or fixes them."""
    try:
        return "OK", channel.unary_unary(method)(data, metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as error:
        return error.code().name, error.details() or ""


def infer08(flower) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name="iris", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input-0", datatype="FP64", shape=[1, 4], contents=pb.InferTensorContents(fp64_contents=flower))])


GOOD08 = infer08(FLOWERS[0])
GOOD10 = model_pb2.PredictRequest(features=FLOWERS[0]).SerializeToString()


@st.composite
def mutated(draw, good: bytes) -> bytes:
    """Random bytes, or the good message with bytes flipped, cut or added: what parses is the interesting part."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=80))
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@seed(SEED)
@settings(max_examples=150, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(data=mutated(GOOD08.SerializeToString()),
       method=st.sampled_from(["ModelInfer"] * 4 + ["ModelMetadata", "ModelReady", "ServerMetadata", "ServerLive"]))
def test_lesson_08_grpc_answers_any_bytes_ok_invalid_argument_or_not_found(servers, data, method):
    with grpc.insecure_channel(servers("grpc08").address) as channel:
        status, details = call_raw(channel, f"/inference.GRPCInferenceService/{method}", data)
    try:
        request = getattr(pb, f"{method}Request").FromString(data)
    except DecodeError:
        assert (status, details) == ("INVALID_ARGUMENT", f"the request is not a valid {method}Request")
        return
    name = getattr(request, "model_name", getattr(request, "name", "iris"))
    if name != "iris":
        assert (status, details) == ("NOT_FOUND", f"model '{name}' is not served here; this server serves 'iris'")
    else:
        assert status in ("OK", "INVALID_ARGUMENT", "NOT_FOUND"), (status, details)  # NOT_FOUND: a wrong version


@seed(SEED)
@settings(max_examples=100, deadline=None, database=None, phases=[Phase.explicit, Phase.generate])
@given(data=mutated(GOOD10), key=st.sampled_from([K1, K1, K1, None, WRONG]))
def test_lesson_10_grpc_answers_any_bytes_by_the_key_first_then_the_bytes(servers, data, key):
    with grpc.insecure_channel(servers("grpc10").address) as channel:
        status, details = call_raw(channel, "/ModelService/Predict", data, (("x-api-key", key),) if key else ())
    if key is None:
        assert (status, details) == ("UNAUTHENTICATED", "missing API key: send it as x-api-key metadata")
        return
    if key == WRONG:
        assert (status, details) == ("PERMISSION_DENIED", "the API key is not valid")
        return
    try:
        features = model_pb2.PredictRequest.FromString(data).features
    except DecodeError:
        assert status == "INVALID_ARGUMENT" and "protobuf could not parse it" in details, (status, details)
        return
    valid = len(features) == 4 and all(-1e6 <= x <= 1e6 for x in features)
    assert status == ("OK" if valid else "INVALID_ARGUMENT"), (status, details, list(features))
    assert status == "OK" or not LEAKS.search(details), details


def test_lesson_08_grpc_refuses_one_output_named_1000_times(servers):
    request = pb.ModelInferRequest.FromString(GOOD08.SerializeToString())
    request.outputs.extend([pb.ModelInferRequest.InferRequestedOutputTensor(name="label")] * 1000)
    with grpc.insecure_channel(servers("grpc08").address) as channel:
        status, details = call_raw(channel, INFER, request.SerializeToString())
    assert (status, details) == ("INVALID_ARGUMENT", "outputs: name each output once at most; got 1000 names for 3")


# ---- Stalled clients ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, health, key", [("rest08", "/v2/health/ready", None), ("rest10", "/health", K1),
                                               ("rest10", "/health", None)], ids=["08", "10 with a key", "10 no key"])
def test_32_clients_stalled_mid_body_do_not_starve_health(servers, name, health, key):
    server = servers(name)
    path = "/v2/models/iris/infer" if name == "rest08" else "/predict"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 500\r\n"
            + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n")
    with contextlib.ExitStack() as stack:
        stalled = [stack.enter_context(socket.create_connection((server.host, server.port), timeout=TIMEOUT))
                   for _ in range(32)]
        for connection in stalled:
            connection.sendall(head.encode() + BODY[:20])  # 500 bytes promised, 20 sent: the server waits
        started = time.monotonic()
        # Within 1 s, as a load balancer's health check would wait: a slower answer counts as a dead server.
        assert requests.get(server.url + health, timeout=1).status_code == 200
        assert time.monotonic() - started < 1
        if name == "rest10":  # lesson 10 gives the body BODY_SECONDS (1 s here), then answers 408 or 401
            stalled[0].settimeout(3)
            answer = http.client.HTTPResponse(stalled[0])
            answer.begin()
            # 408 with a key; without one, 408 too if the body is read before the key is looked at, else 401
            assert answer.status in ((408,) if key else (401, 408)) and json.loads(answer.read())["detail"]
    assert requests.get(server.url + health, timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("name", ["grpc08", "grpc10"])
def test_32_stalled_grpc_calls_do_not_starve_health_or_predictions(servers, name):
    path, data = (INFER, GOOD08.SerializeToString()) if name == "grpc08" else ("/ModelService/Predict", GOOD10)
    metadata = (("x-api-key", K1),) if name == "grpc10" else ()
    with grpc.insecure_channel(servers(name).address) as channel, stalled_calls(channel, 32, path, metadata):
        started = time.monotonic()
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        answer = channel.unary_unary(path)(data, metadata=metadata, timeout=1)
        seconds = time.monotonic() - started
    assert status == health_pb2.HealthCheckResponse.SERVING and answer and seconds < 1


def test_lesson_10s_body_deadline_leaves_the_lifespan_alone():
    # BodyDeadline once timed out the lifespan's receive() too, which waits until shutdown: BODY_SECONDS after
    # start-up the log said ERROR with a traceback, and the lifespan's shutdown never ran.
    server = start_server(REST10, env={**KEYED, "BODY_SECONDS": "0.2", "DRAIN_SECONDS": "0"},
                          ready=http_ready("/health"))
    time.sleep(0.5)
    assert server.stop() == 0
    log = server.log()
    assert '"level": "ERROR"' not in log and "Application shutdown complete" in log, log[-2000:]


# ---- SIGTERM under load ---------------------------------------------------------------------------------------------

CLIENTS = 32


def rest_predict(server, path, body, headers):
    def predict():
        connection = http.client.HTTPConnection(server.host, server.port, timeout=TIMEOUT)
        try:
            try:
                connection.connect()
            except OSError as error:
                raise NotSent from error
            connection.request("POST", path, body, {"Content-Type": "application/json", "Connection": "close",
                                                    **headers})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()
    return predict


def grpc_predict(channel, path, data, metadata):
    def predict():
        try:
            return 200, channel.unary_unary(path)(data, metadata=metadata, timeout=TIMEOUT)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
                raise NotSent from error
            return error.code().name, b""
    return predict


def answers08_rest(reply, expected):
    outputs = {tensor["name"]: tensor["data"] for tensor in json.loads(reply)["outputs"]}
    return outputs["predict"] == [int(expected.argmax())] and np.allclose(outputs["probabilities"], expected, atol=1e-9)


def answers08_grpc(reply, expected):
    outputs = pb.ModelInferResponse.FromString(reply).outputs
    return (list(outputs[0].contents.int64_contents) == [int(expected.argmax())]
            and np.allclose(outputs[1].contents.fp64_contents, expected, atol=1e-9))


def answers10_rest(reply, expected):
    reply = json.loads(reply)
    return reply["prediction"] == int(expected.argmax()) and np.allclose(reply["probabilities"], expected, atol=1e-9)


def answers10_grpc(reply, expected):
    reply = model_pb2.PredictReply.FromString(reply)
    return reply.class_index == int(expected.argmax()) and np.allclose(reply.probabilities, expected, atol=1e-5)


LOADS = {  # name: (script, env, ready(server), predict(server, channel, flower), answers(reply, expected))
    "rest08": (REST08, {}, http_ready("/v2/health/ready"), lambda server, channel, flower: rest_predict(
        server, "/v2/models/iris/infer", json.dumps(v2_body(flower)), {}), answers08_rest),
    "grpc08": (GRPC08, {}, grpc_ready, lambda server, channel, flower: grpc_predict(
        channel, INFER, infer08(flower).SerializeToString(), ()), answers08_grpc),
    "rest10": (REST10, KEYED, http_ready("/health"), lambda server, channel, flower: rest_predict(
        server, "/predict", json.dumps(dict(zip(FEATURES, flower))), {"X-API-Key": K2}), answers10_rest),
    "grpc10": (GRPC10, KEYED, grpc_ready, lambda server, channel, flower: grpc_predict(
        channel, "/ModelService/Predict", model_pb2.PredictRequest(features=flower).SerializeToString(),
        (("x-api-key", K2),)), answers10_grpc),
}


@pytest.mark.parametrize("name", LOADS)
def test_sigterm_under_load_loses_no_request_and_exits_0(name, model):
    """32 clients in a loop and a readiness poller every 50 ms that stops them once it reads "not ready", as a load
    balancer would (course/shutdown.py, lesson 05); SIGTERM after 0.5 s. Every request sent gets the model's answer."""
    script, env, ready, make_predict, answers = LOADS[name]
    expected = model.estimator.predict_proba(FLOWERS)
    lock, outcomes, not_ready, give_up = threading.Lock(), Counter(), threading.Event(), time.monotonic() + 15
    server = start_server(script, env={**env, "DRAIN_SECONDS": "1"}, ready=ready)
    with grpc.insecure_channel(server.address) as channel:
        def client(number):
            predict = make_predict(server, channel, FLOWERS[number % 4])
            while not not_ready.is_set() and time.monotonic() < give_up:
                try:
                    status, reply = predict()
                    outcome = "right" if status == 200 and answers(reply, expected[number % 4]) else f"lost: {status}"
                except NotSent:
                    outcome = "refused before sending"
                    time.sleep(0.01)
                except Exception as error:  # reset, timeout: lost
                    outcome = f"lost: {type(error).__name__}"
                with lock:
                    outcomes[outcome] += 1

        def poller():
            while time.monotonic() < give_up and ready(server):
                time.sleep(0.05)
            not_ready.set()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=poller))
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            exit_code = server.process.wait(10)
        finally:
            not_ready.set()
            for thread in threads:
                thread.join(TIMEOUT + 1)
            server.stop()
    seconds = time.monotonic() - signalled
    assert not any(thread.is_alive() for thread in threads)
    assert set(outcomes) <= {"right", "refused before sending"}, (outcomes, server.log()[-2000:])  # 0 lost, 0 wrong
    assert outcomes["right"] >= CLIENTS, outcomes
    assert exit_code == 0, server.log()[-2000:]
    assert seconds < 1 + 5, seconds


@pytest.mark.parametrize("name", ["rest08", "rest10"])
def test_a_client_stalled_mid_body_does_not_hold_a_planned_stop(name):
    """uvicorn's drain waits for every request to finish, and one whose body never comes never does: lesson 08 did
    not exit until the kubelet's SIGKILL. Now it cancels what runs past GRACE_SECONDS (5 s); lesson 10 answers
    408 after BODY_SECONDS (1 s here)."""
    script, path, env, bound = {"rest08": (REST08, "/v2/models/iris/infer", {}, 5),
                                "rest10": (REST10, "/predict", {**KEYED, "BODY_SECONDS": "1"}, 1)}[name]
    server = start_server(script, env={"DRAIN_SECONDS": "0", **env},
                          ready=http_ready("/v2/health/ready" if name == "rest08" else "/health"))
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as stalled:
        stalled.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {K1}\r\nContent-Length: 500\r\n\r\n{{"
                        .encode())
        time.sleep(0.2)
        server.signal(signal.SIGTERM)
        signalled = time.monotonic()
        try:
            exit_code = server.process.wait(bound + 3)
        finally:
            server.stop()
    assert exit_code == 0 and time.monotonic() - signalled < bound + 3, server.log()[-2000:]
