"""Lesson 10 under attack: a burst over the rate limit, every bad input of the contract, and the logs afterwards.

- Rate limit: a bounded burst (25 requests) with one key gets 429 + Retry-After (REST) or RESOURCE_EXHAUSTED with
  a retry-after-ms trailer (gRPC) once its bucket is empty, while /health and a second key are served as usual.
- No leaks: each bad input of tests/test_contract.py (imported, not copied) is sent to the secured REST server
  with a valid key, without one and with a wrong one: every body is JSON with a `detail`, and none holds a
  file path, a stack trace or a key. Then the server's log: JSON lines, keys only as fingerprints.
"""

import json
import math
import re
import secrets
import time

import grpc
import pytest
import requests

from course import REPO, import_lesson
from course.server import http_ready, start_server
from test_contract import BAD_INPUT, send

client = import_lesson("10-security/client.py")
security = import_lesson("10-security/security.py")
model_pb2 = import_lesson("10-security/model_pb2.py")
K1, K2, K3, WRONG = (secrets.token_urlsafe(32) for _ in range(4))  # K3: the bad-bytes test's own bucket
ROW = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
RATE, BURST, SENT = 1, 5, 25  # per key: 1 request a second, bursts of 5; the attack sends 25 at once
# What must never reach a client: where our files are, a Python stack trace, a key.
LEAKS = re.compile("|".join(map(re.escape, [str(REPO), "site-packages", ".py", "Traceback", 'File "', "/usr/",
                                            "/home/", "/tmp/", K1, K2, K3, WRONG])))


@pytest.fixture(scope="module")
def rest():
    env = {"API_KEYS": f"{K1},{K2}", "RATE_PER_SECOND": "1000", "RATE_BURST": "1000", "DRAIN_SECONDS": "0"}
    with start_server("lessons/10-security/app.py", env=env, ready=http_ready("/health")) as server:
        yield server


@pytest.fixture(scope="module")
def limited():
    """Both servers with a small rate limit, started together (each is another process)."""
    env = {"API_KEYS": f"{K1},{K2},{K3}", "RATE_PER_SECOND": str(RATE), "RATE_BURST": str(BURST), "DRAIN_SECONDS": "0"}
    with start_server("lessons/10-security/app.py", env=env) as rest_server, \
            start_server("lessons/10-security/grpc_server.py", env=env, ready=client.ready()) as grpc_server:
        yield {"rest": rest_server, "grpc": grpc_server}


# ---- rate limit ------------------------------------------------------------------------------------------------

def assert_bucket_semantics(outcomes, seconds):
    """The first BURST pass; after that at most what the bucket refilled during the burst."""
    passed = sum(outcomes)
    assert all(outcomes[:BURST]), outcomes
    assert BURST <= passed <= BURST + math.ceil(seconds * RATE) + 1, (passed, seconds)
    assert SENT - passed >= SENT - BURST - math.ceil(seconds * RATE) - 1 > 0


def test_a_rest_burst_gets_429_with_retry_after_and_nobody_else_notices(limited):
    url = limited["rest"].url
    session = requests.Session()
    start = time.monotonic()
    answers = [session.post(url + "/predict", json=ROW, headers={"X-API-Key": K1}, timeout=10) for _ in range(SENT)]
    seconds = time.monotonic() - start
    assert_bucket_semantics([a.status_code == 200 for a in answers], seconds)
    refused = [a for a in answers if a.status_code != 200]
    assert {a.status_code for a in refused} == {429}
    for answer in refused:
        retry_after = int(answer.headers["Retry-After"])  # delta-seconds, RFC 9110
        assert 1 <= retry_after <= math.ceil(1 / RATE)
        assert answer.json()["detail"].startswith("too many requests for this API key")
    # The server stays healthy, and the other key has its own bucket.
    assert requests.get(url + "/health", timeout=5).status_code == 200
    assert [session.post(url + "/predict", json=ROW, headers={"X-API-Key": K2}, timeout=10).status_code
            for _ in range(BURST)] == [200] * BURST
    # After Retry-After, the first key is served again.
    time.sleep(int(refused[-1].headers["Retry-After"]))
    assert session.post(url + "/predict", json=ROW, headers={"X-API-Key": K1}, timeout=10).status_code == 200


def test_a_grpc_burst_gets_resource_exhausted_with_a_retry_hint(limited):
    with client.channel(limited["grpc"].address) as chan:
        start, outcomes, trailers = time.monotonic(), [], []
        for _ in range(SENT):
            try:
                client.predict(chan, K1, list(ROW.values()))
                outcomes.append(True)
            except grpc.RpcError as refused:
                assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
                trailers.append(dict(refused.trailing_metadata()))
                outcomes.append(False)
        assert_bucket_semantics(outcomes, time.monotonic() - start)
        assert all(0 < int(t["retry-after-ms"]) <= 1000 / RATE + 1 for t in trailers)
        assert client.serving(chan)
        assert all(client.predict(chan, K2, list(ROW.values())).label for _ in range(BURST))


# ---- no leaks ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_no_error_body_holds_a_path_a_trace_or_a_key(rest, case):
    _, path, body, content_type, status, field = case
    for key, expected in [(K1, {status}), (None, {400, 401, 413}), (WRONG, {400, 403, 413})]:
        headers = {"Content-Type": content_type} if content_type else {}
        if key:
            headers["X-API-Key"] = key
        data = body() if callable(body) else (body.encode() if isinstance(body, str) else body)
        response = requests.post(rest.url + path, data=data, headers=headers, timeout=30)
        assert response.status_code in expected, (key == K1, response.status_code, response.text[:300])
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"]
        assert not LEAKS.search(response.text), response.text[:300]
        if key == K1 and field:
            assert field in response.json()["detail"]
    assert send(rest.url, "/health", b"", None).status_code in (405,)  # POST /health: a JSON 405, still no leak


@pytest.mark.parametrize("data", [b"\xff" * 10, b"\x0a\x05\x01\x02", b"\x0d\x00\x00\xc0\x7f",
                                  b"\x0a\xff\xff\xff\xff\x0f"], ids=["garbage", "truncated", "nan", "huge-length"])
def test_grpc_bad_bytes_get_invalid_argument_without_a_leak(limited, data):
    with client.channel(limited["grpc"].address) as chan:
        raw = chan.unary_unary("/ModelService/Predict")  # bytes in, bytes out: nothing checks them on our side
        with pytest.raises(grpc.RpcError) as refused:
            raw(data, metadata=(("x-api-key", K3),), timeout=5)  # 4 calls: within K3's burst of 5
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not LEAKS.search(refused.value.details() or ""), refused.value.details()


def test_logs_are_json_and_name_keys_only_by_fingerprint(rest, limited):
    # Runs last in this file: the servers have seen good keys, wrong keys, no keys and bursts by now.
    requests.post(rest.url + "/predict", json=ROW, headers={"X-API-Key": WRONG}, timeout=5)
    for server in (rest, limited["rest"], limited["grpc"]):
        lines = server.log().splitlines()
        # gRPC's C core writes its own plain lines to stderr (TLS handshake errors, for one): not ours to format.
        ours = [json.loads(line) for line in lines if line.startswith("{")]
        assert ours and all(line.startswith("{") or re.match(r"[IWE]\d{4} ", line) for line in lines), lines[:5]
        text = server.log()
        for secret in (K1, K2, K3, WRONG):
            assert secret not in text
        loaded = next(line for line in ours if line["message"] == "API keys loaded")["keys"]
        assert {security.fingerprint(K1), security.fingerprint(K2)} <= set(loaded)
    refusals = [json.loads(line) for line in rest.log().splitlines() if "API key not valid" in line]
    assert refusals and all(line["key"] == security.fingerprint(WRONG) for line in refusals)
