"""Attack tests: every REST server of the course, attacked from outside with what no friendly client sends.

Each server runs as a real process on 127.0.0.1: lesson 00 (http.server), lesson 01 (Flask's development server,
and gunicorn), lesson 02 (FastAPI) and lesson 06 (FastAPI with metrics). Two attackers:

- Schemathesis reads lesson 02's OpenAPI schema and sends valid and invalid requests for every operation, with
  every check, to lessons 02 and 06 (each with its own /openapi.json) and to both Flask servers: one contract, one
  schema.
- Raw HTTP over sockets: a table of named attacks (lone surrogates, bytes that are not UTF-8, 10,000-deep nesting,
  1e400, 5,000-digit integers, duplicate keys, NaN, Content-Lengths that lie, broken chunked encoding, empty bodies,
  wrong content types and methods), then Hypothesis combining the same ingredients at random.

Whatever arrives, a server must answer before the socket times out, never with a 5xx, and still answer GET /health
with 200 afterwards. What the contract accepts gets the in-process model's prediction; what it refuses gets a 4xx
whose body is exactly `{"detail": "<a string>"}` (`rows_in` and `expected_rows` below write the contract down).

The seeds are fixed: every run sends the same requests. Other seeds: `ATTACK_SEED=7 pytest tests/test_attacks_rest.py`.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from course import LESSONS
from course.server import BackgroundServer, free_port

SEED = int(os.environ.get("ATTACK_SEED", "20240"))
TIMEOUT = 5  # seconds a server has to answer one request; longer is a hang
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}

GUNICORN_CONF = LESSONS / "01-flask" / "gunicorn.conf.py"
SERVERS = {  # name: the command line, as each lesson's README runs it
    "00-stdlib": ["lessons/00-why-serve/server.py"],
    "01-flask-dev": ["lessons/01-flask/app.py"],
    "01-gunicorn": ["-m", "gunicorn", "--chdir", "lessons/01-flask", "-b", "127.0.0.1:{port}", "app:app"],
    "02-fastapi": ["lessons/02-fastapi/app.py"],
    "02-onnxruntime": ["lessons/02-fastapi/app.py"],  # with ENGINE=onnxruntime (ENVS)
    "06-monitoring": ["lessons/06-monitoring/app.py"],
    "09-batching": ["lessons/09-throughput/server.py"],
}
ENVS = {"02-onnxruntime": {"ENGINE": "onnxruntime"}}


@pytest.fixture(scope="module")
def servers():
    """servers(name) starts that server the first time it is asked for; every one stops at module end."""
    started = {}

    def get(name):
        if name not in started:
            port = free_port()
            command = [part.format(port=port) for part in SERVERS[name]]
            if name == "01-gunicorn" and GUNICORN_CONF.exists():  # the settings lesson 01 runs gunicorn with
                command[2:2] = ["-c", str(GUNICORN_CONF)]
            # These tests do not measure shutdowns: no drain pause, so that stopping five servers is quick.
            started[name] = BackgroundServer([sys.executable, *command], port=port, env={"DRAIN_SECONDS": "0", **ENVS.get(name, {})}).start()
        return started[name]

    yield get
    for server in started.values():
        server.stop()


# ---- Schemathesis: the OpenAPI contract, attacked --------------------------------------------------------------

MAX_EXAMPLES = 150  # fuzzing examples per operation: about 670 requests per server, 5 to 7 s on 2 cores
SCHEMATHESIS = {  # target: the server whose /openapi.json describes it
    "02-fastapi": "02-fastapi",
    "02-onnxruntime": "02-fastapi",
    "06-monitoring": "06-monitoring",
    "09-batching": "09-batching",
    "01-flask-dev": "02-fastapi",  # lesson 01 publishes no schema, but it promises lesson 02's contract
    "01-gunicorn": "02-fastapi",
}


@pytest.mark.parametrize("target", SCHEMATHESIS)
def test_schemathesis_finds_no_failure(target, servers, tmp_path):
    """`schemathesis run`, as a learner would type it. (Its pytest loader for a server started by a fixture,
    `schemathesis.pytest.from_fixture`, fails under pytest 9.2: "'Function' object has no attribute '_nodeid'".)"""
    server, schema = servers(target), servers(SCHEMATHESIS[target])
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{schema.url}/openapi.json", "--url", server.url,
        "--mode", "all",  # valid requests must be answered 200, invalid ones refused with a 4xx
        "--checks", "all",  # no 5xx, responses match the schema, 405 carries Allow, ...
        "--max-response-time", "5",  # the one check `all` leaves off until it is given a limit
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--generation-database", "none",
        "--workers", "1", "--request-timeout", str(TIMEOUT), "--continue-on-failure", "--no-color",
    ]
    # cwd: Schemathesis and Hypothesis keep caches in the current folder; tmp_path is removed by pytest.
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    report = run.stdout[run.stdout.find("FAILURES"):] if "FAILURES" in run.stdout else run.stdout + run.stderr
    assert run.returncode == 0, f"schemathesis against {target}:\n{report}"
    assert " passed" in run.stdout  # it did test something


# ---- Raw HTTP: a request, and what a correct server answers to it -------------------------------------------------

@dataclass(frozen=True)
class Attack:
    """One request, as raw bytes on the wire, with what it means."""

    request: bytes  # the whole request as sent
    body: bytes  # the content it carries: what a server that decodes the framing sees
    method: str = "POST"
    path: str = "/predict"
    content_type: str | None = "application/json"
    # "exact": the body is framed as HTTP says (Content-Length); "chunked": likewise, in chunks; "broken": the framing
    # lies; "hangs up": it lies, then the client half-closes the connection, because the rest will never come.
    framing: str = "exact"

    def __repr__(self):  # short enough to read in a failure report
        shown = self.request if len(self.request) <= 400 else self.request[:250] + b"..." + self.request[-100:]
        return f"Attack({shown!r}, framing={self.framing!r})"

    def _repr_pretty_(self, printer, cycle):  # how Hypothesis prints a failing example: the same short form
        printer.text(repr(self))


TRUE_LENGTH = "the body's length"


def attack(body: bytes | str = b"", *, method="POST", path="/predict", content_type: str | None = "application/json",
           length: int | str | None = TRUE_LENGTH, headers: tuple[str, ...] = (), wire: bytes | None = None,
           framing="exact") -> Attack:
    """A raw HTTP/1.1 request. `length`: the Content-Length to claim (the truth, a lie, or None for no header);
    `wire`: what follows the headers, when it is not the body itself (chunks)."""
    if isinstance(body, str):  # "surrogatepass": a lone surrogate goes out as the bytes ED A0 80, as it is written
        body = body.encode("utf-8", "surrogatepass")
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == TRUE_LENGTH else length}")
    head = ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode("latin-1")
    return Attack(head + (body if wire is None else wire), body, method, path, content_type, framing)


def chunked(body: bytes | str, wire: bytes | None = None, *, headers=(), framing="chunked", **options) -> Attack:
    """A request with Transfer-Encoding: chunked; `wire`: the chunks, when they are not the body in one."""
    body = body.encode() if isinstance(body, str) else body
    wire = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if wire is None else wire
    return attack(body, length=None, headers=("Transfer-Encoding: chunked", *headers), wire=wire, framing=framing,
                  **options)


def flower(**changed: str | None) -> str:
    """The JSON text of a good flower, with some values replaced by raw JSON text (or removed, with None)."""
    values = {name: json.dumps(value) for name, value in GOOD.items()} | changed
    return "{" + ", ".join(f'"{name}": {value}' for name, value in values.items() if value is not None) + "}"


def batch(*instances: str) -> str:
    return '{"instances": [' + ", ".join(instances) + "]}"


def with_key(json_object: str, raw_key: str, raw_value: str = "1") -> str:
    """Add a key, written as raw JSON string content (escapes included), at the end of a JSON object."""
    return json_object[:-1] + f', "{raw_key}": {raw_value}' + "}"


# ---- What a correct server answers: the course's contract, written as a function ----------------------------------

LIMIT = 1e6
MAX_BATCH = 1000


def rows_in(body: bytes, is_batch: bool) -> list[list[float]] | None:
    """The model's input rows in this body, or None when the contract says it must be refused."""
    try:
        # Strict UTF-8: JSON between systems is UTF-8 (RFC 8259), so the bytes ED A0 80 are no surrogate but an error.
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if is_batch:
        if not (isinstance(document, dict) and list(document) == ["instances"]):
            return None
        instances = document["instances"]
        if not (isinstance(instances, list) and 1 <= len(instances) <= MAX_BATCH):
            return None
    else:
        instances = [document]
    rows = []
    for instance in instances:
        if not (isinstance(instance, dict) and sorted(instance) == sorted(FEATURES)):
            return None
        row = [instance[name] for name in FEATURES]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and -LIMIT <= x <= LIMIT for x in row):
            return None  # NaN too: it fails both comparisons
        rows.append([float(x) for x in row])
    return rows


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in this JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in body.decode("utf-8", "replace"):
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def is_json(content_type: str | None) -> bool:
    mime = (content_type or "").partition(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def expected_rows(name: str, attack: Attack) -> list[list[float]] | None:
    """The rows a correct server predicts for this request, or None when it must refuse it with a 4xx."""
    routes = ["/predict"] if name == "00-stdlib" else ["/predict", "/predict/batch"]
    if attack.method != "POST" or attack.path not in routes:
        return None
    if name == "00-stdlib":
        if attack.framing == "chunked":  # http.server does not decode chunks: 411, send a Content-Length
            return None
    elif not is_json(attack.content_type):  # lessons 01 and 02 refuse it, 415; lesson 00 does not look
        return None
    return rows_in(attack.body, attack.path == "/predict/batch")


# ---- Sending, and checking the answer -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def send(server: BackgroundServer, attack: Attack) -> Answer | None:
    """Send the attack on a fresh connection; None when the server closed it without an answer."""
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as connection:
        try:
            connection.sendall(attack.request)
            if attack.framing == "hangs up":
                connection.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise AssertionError(f"the server stopped reading for {TIMEOUT} s: it hangs on {attack!r}") from None
        except OSError:
            pass  # the server answered, and closed, before it read everything: read what it said
        response = http.client.HTTPResponse(connection)
        try:
            response.begin()
            return Answer(response.status, response.getheader("Content-Type", ""), response.read())
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        except TimeoutError:
            raise AssertionError(f"no answer within {TIMEOUT} s: the server hangs on {attack!r}") from None


def strict_json(body: bytes):
    """JSON as RFC 8259 defines it: UTF-8, and no NaN or Infinity (which Python's json would read)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def check_predictions(reply, rows, model, answer):
    predictions = reply["predictions"] if "predictions" in reply else [reply]
    expected = model.estimator.predict_proba(rows)
    assert len(predictions) == len(expected), answer
    for prediction, probabilities in zip(predictions, expected.tolist()):
        assert set(prediction) == {"prediction", "label", "probabilities"}, answer
        # Lesson 00 rounds to 6 decimals; a batch may take another BLAS path than a single row.
        assert prediction["probabilities"] == pytest.approx(probabilities, abs=1e-6), answer
        best = max(range(len(probabilities)), key=prediction["probabilities"].__getitem__)
        assert (prediction["prediction"], prediction["label"]) == (best, model.classes[best]), answer


STANDARD_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}


def check_answer(name: str, server: BackgroundServer, attack: Attack, model) -> None:
    """Send the attack and hold the answer to the contract; then the server must still be healthy."""
    answer = send(server, attack)
    broken = attack.framing in ("broken", "hangs up")
    # A lying framing may be refused or, by a lenient server, read as far as the body goes; never anything else.
    rows = rows_in(attack.body, attack.path == "/predict/batch") if broken else expected_rows(name, attack)
    # Each JSON parser sets its own depth limit (RFC 8259, section 9): Python's gives up near 1,000 levels. A
    # document nested deeper than any real request (say, a duplicate key holding [[[...]]]) may be refused too.
    may_refuse = broken or nesting_depth(attack.body) > 100
    if answer is None:
        # Closing is the one fair reply to a client that hung up before sending the body it announced.
        assert attack.framing == "hangs up", f"the server closed the connection without an answer to {attack!r}"
    elif (broken or attack.method not in STANDARD_METHODS) and answer.status == 400 and "json" not in answer.content_type:
        # The HTTP server's own refusal (uvicorn's text/plain, gunicorn's HTML): the app never saw the request.
        # httptools, uvicorn's C parser when installed (lesson 09), refuses a method it does not know this way too.
        pass
    elif answer.status == 200 and rows is not None:
        assert answer.content_type.startswith("application/json"), answer
        check_predictions(strict_json(answer.body), rows, model, answer)
    else:
        assert answer.status != 200, f"200 to a request the contract refuses: {answer} for {attack!r}"
        assert rows is None or may_refuse, f"a valid request was refused: {answer} for {attack!r}"
        assert answer.status in (400, 404, 405, 411, 413, 415, 422), f"{answer} for {attack!r}"
        assert answer.content_type.startswith("application/json"), f"{answer} for {attack!r}"
        reply = strict_json(answer.body)
        assert set(reply) == {"detail"} and isinstance(reply["detail"], str), f"{answer} for {attack!r}"
        lone_surrogates = [c for c in reply["detail"] if "\ud800" <= c <= "\udfff"]
        assert not lone_surrogates, f"the detail echoes {lone_surrogates}, which no client can print: {answer}"
    health = requests.get(server.url + "/health", timeout=TIMEOUT)
    assert (health.status_code, health.json()) == (200, {"status": "ok"}), f"after {attack!r}"


# ---- The named attacks: one line each in the report ---------------------------------------------------------------

DEEP = 10_000
NESTED = "[" * DEEP + "]" * DEEP
FLOWER = flower()
NAMED = {
    "a lone surrogate as a value": attack(flower(petal_width=r'"\ud800"')),
    "a lone surrogate as a key": attack(with_key(FLOWER, r"\ud800")),
    "a lone surrogate as a key in a batch": attack(batch(FLOWER, with_key(FLOWER, r"\udfff")), path="/predict/batch"),
    "a lone surrogate as a value in a batch": attack(batch(flower(sepal_length=r'"\udbff"')), path="/predict/batch"),
    "a lone surrogate beside the instances": attack(with_key(batch(FLOWER), r"\ud800"), path="/predict/batch"),
    "a surrogate as raw bytes (ED A0 80)": attack(with_key(FLOWER, "\ud800")),
    "bytes that are not UTF-8 in a key": attack(with_key(FLOWER, "").encode().replace(b'""', b'"\xff\xfe"')),
    "bytes that are not UTF-8 before the JSON": attack(b"\xc0\xaf" + FLOWER.encode()),
    f"{DEEP:,} nested arrays": attack(NESTED),
    f"{DEEP:,} nested objects": attack('{"a": ' * DEEP + "1" + "}" * DEEP),
    f"{DEEP:,} nested arrays as a value": attack(flower(petal_width=NESTED)),
    f"{DEEP:,} nested arrays in a batch": attack(batch(NESTED), path="/predict/batch"),
    "1e400, more than a double holds": attack(flower(petal_width="1e400")),
    "-1e400": attack(flower(sepal_width="-1e400")),
    "7e307, finite, and the model's NaN": attack(flower(petal_width="7e307")),
    "-7e307 in a batch": attack(batch(FLOWER, flower(petal_length="-7e307")), path="/predict/batch"),
    "1,000,000 exactly": attack(flower(sepal_length="1000000", sepal_width="-1e6")),
    "just over 1,000,000": attack(flower(sepal_length="1000000.0000001")),
    "-0": attack(flower(sepal_length="-0")),
    "1e-400, less than a double holds": attack(flower(sepal_length="1e-400")),
    "an integer of 5,000 digits": attack(flower(petal_width="9" * 5000)),
    "an integer of 4,000 digits": attack(flower(petal_width="9" * 4000)),
    "duplicate keys, the last one wrong": attack(with_key(FLOWER, "petal_width", '"wide"')),
    "duplicate keys, the last one right": attack(with_key(flower(petal_width='"wide"'), "petal_width", "0.2")),
    "NaN": attack(flower(sepal_length="NaN")),
    "Infinity": attack(flower(sepal_width="Infinity")),
    "-Infinity in a batch": attack(batch(flower(petal_width="-Infinity")), path="/predict/batch"),
    "an unknown extra key": attack(with_key(FLOWER, "colour", '"blue"')),
    "a missing key": attack(flower(petal_width=None)),
    "true for a number": attack(flower(petal_width="true")),
    "an empty body": attack(b""),
    "a body of spaces": attack(b"   "),
    "null": attack(b"null"),
    "an array instead of an object": attack(b"[5.1, 3.5, 1.4, 0.2]"),
    "an empty batch": attack(batch(), path="/predict/batch"),
    "a batch of 1,001 flowers": attack(batch(*[FLOWER] * 1001), path="/predict/batch"),
    "Content-Type text/plain": attack(FLOWER, content_type="text/plain"),
    "no Content-Type": attack(FLOWER, content_type=None),
    "a form instead of JSON": attack("sepal_length=5.1", content_type="application/x-www-form-urlencoded"),
    "multipart instead of JSON": attack(b"--x\r\n\r\n{}\r\n--x--", content_type="multipart/form-data; boundary=x"),
    "PUT /predict": attack(FLOWER, method="PUT"),
    "DELETE /health": attack(b"", method="DELETE", path="/health"),
    "a method nobody knows": attack(FLOWER, method="BREW"),
    "a chunked body": chunked(FLOWER),
    # The framing lies: the body does not end where the headers say it does.
    "Content-Length shorter than the body": attack(FLOWER, length=10, framing="broken"),
    "Content-Length longer than the body, then the client hangs up": attack(FLOWER, length=500, framing="hangs up"),
    "Content-Length 2,000,000, a short body, then the client hangs up": attack(FLOWER, length=2_000_000,
                                                                               framing="hangs up"),
    "a negative Content-Length": attack(FLOWER, length=-5, framing="broken"),
    "a Content-Length that is not a number": attack(FLOWER, length="eleven", framing="broken"),
    "a Content-Length of 5,000 digits": attack(FLOWER, length="9" * 5000, framing="broken"),
    "two different Content-Lengths": attack(FLOWER, headers=("Content-Length: 3",), framing="broken"),
    "Content-Length and chunked together": chunked(FLOWER, headers=("Content-Length: 5",), framing="broken"),
    "a chunk size that is not hexadecimal": chunked(b"{}", b"zz\r\n{}\r\n0\r\n\r\n", framing="broken"),
    "a chunk longer than its size": chunked(FLOWER, b"2\r\n%s\r\n0\r\n\r\n" % FLOWER.encode(), framing="broken"),
    "a chunk shorter than its size, then the client hangs up": chunked(b"{}", b"100\r\n{}", framing="hangs up"),
    "no last chunk, then the client hangs up": chunked(b"{}", b"2\r\n{}\r\n", framing="hangs up"),
}


@pytest.mark.parametrize("attack", NAMED.values(), ids=NAMED.keys())
@pytest.mark.parametrize("name", SERVERS)
def test_a_named_attack_gets_the_contracts_answer_and_the_server_stays_up(name, attack, servers, model):
    check_answer(name, servers(name), attack, model)


NOT_JSON = ["bytes that are not UTF-8 before the JSON", f"{DEEP:,} nested arrays", f"{DEEP:,} nested objects",
            f"{DEEP:,} nested arrays as a value", "an integer of 5,000 digits", "a body of spaces"]


@pytest.mark.parametrize("label", NOT_JSON)
@pytest.mark.parametrize("name", SERVERS)
def test_a_body_that_is_not_json_is_called_so_on_every_server(name, label, servers):
    """One mistake, one sentence, whichever parser gave up: the course calls it "the body is not valid JSON: ..."."""
    answer = send(servers(name), NAMED[label])
    assert answer is not None and answer.status == 400, answer
    assert strict_json(answer.body)["detail"].startswith("the body is not valid JSON"), answer


@pytest.mark.parametrize("name", SERVERS)
def test_a_client_that_stalls_mid_body_does_not_starve_health(name, servers):
    server = servers(name)
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as stalled:
        stalled.sendall(attack(FLOWER, length=500).request)  # 500 bytes promised, fewer sent: the server waits
        # Within 1 s, as a load balancer's health check would wait: a slower answer counts as a dead server.
        assert requests.get(server.url + "/health", timeout=1).status_code == 200
    assert requests.get(server.url + "/health", timeout=TIMEOUT).status_code == 200


# ---- Hypothesis: the same ingredients, combined at random ---------------------------------------------------------

def json_string(text: str) -> str:
    """JSON string content for any text, lone surrogates included, written as \\uXXXX escapes."""
    return json.dumps(text)[1:-1]


HOSTILE_NUMBERS = ["1e400", "-1e400", "7e307", "-7e307", "-0", "-0.0", "1e-400", "NaN", "Infinity", "-Infinity",
                   "9" * 5000, "1" + "0" * 4000, "1000000", "1000000.0000001", "-1e6", "1E6", "0.1e7", "5e-324"]
any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # every code point, lone surrogates too
values = st.one_of(
    st.sampled_from(HOSTILE_NUMBERS),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),  # repr(-0.0) is "-0.0", repr(1e300) "1e+300"
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["true", "false", "null", "[]", "{}", '"5.1"', "[5.1]", '{"cm": 5.1}']),
    any_text.map(lambda text: f'"{json_string(text)}"'),
    st.sampled_from([10, 1000, DEEP]).map(lambda depth: "[" * depth + "]" * depth),
)
keys = st.one_of(st.sampled_from(FEATURES), st.sampled_from(["Petal_Width", "petal_width ", "", "instances"]),
                 any_text.map(json_string))


@st.composite
def flowers(draw) -> str:
    """A flower's JSON text, keys shuffled: right about half the time, else with hostile values, keys or duplicates."""
    entries = [(f'"{name}"', json.dumps(draw(st.floats(0, 10)))) for name in FEATURES]
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        change = draw(st.sampled_from(["value", "extra key", "duplicate", "missing"]))
        at = draw(st.integers(0, len(entries) - 1)) if entries else 0
        if change == "value" and entries:
            entries[at] = (entries[at][0], draw(values))
        elif change == "extra key" or not entries:
            entries.append((f'"{draw(keys)}"', draw(values)))
        elif change == "duplicate":
            entries.append((entries[at][0], draw(values)))
        else:
            del entries[at]
    entries = draw(st.permutations(entries))
    return "{" + ", ".join(f"{key}: {value}" for key, value in entries) + "}"


@st.composite
def attacks(draw) -> Attack:
    path = draw(st.sampled_from(["/predict", "/predict/batch"]))
    text = draw(flowers()) if path == "/predict" else batch(*draw(st.lists(flowers(), max_size=3)))
    body = text.encode("utf-8", "surrogatepass")  # an unescaped surrogate goes out as ED A0 80
    if draw(st.integers(0, 9)) == 0:  # now and then, bytes that are not UTF-8, anywhere
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.sampled_from([b"\xed\xa0\x80", b"\xff", b"\xc3", b"\xc0\xaf", b"\x00"])) + body[at:]
    content_type = draw(st.sampled_from(["application/json"] * 6 + [
        "application/json; charset=utf-8", "application/problem+json", "text/plain",
        "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]))
    framing = draw(st.sampled_from(["exact"] * 6 + ["chunked", "short", "long", "bad chunks", "no length"]))
    if framing == "exact":
        return attack(body, path=path, content_type=content_type)
    if framing == "chunked":
        return chunked(body, path=path, content_type=content_type)
    if framing == "short":
        return attack(body, path=path, content_type=content_type, length=len(body) // 2, framing="broken")
    if framing == "long":
        return attack(body, path=path, content_type=content_type, length=len(body) + draw(st.integers(1, 10**6)),
                      framing="hangs up")
    if framing == "bad chunks":
        size = draw(st.sampled_from([b"zz", b"-1", b"%x" % (len(body) + 1), b"%x" % max(len(body) - 1, 0)]))
        wire = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
        return chunked(body, wire, path=path, content_type=content_type, framing="hangs up")
    # No Content-Length and no chunks: HTTP/1.1 says such a request has no body, whatever bytes follow.
    return attack(b"", path=path, content_type=content_type, length=None, wire=body)


@pytest.mark.parametrize("name", SERVERS)
@seed(SEED)
@settings(
    max_examples=200,  # per server: about 2 s each
    deadline=None,  # a request over a socket: its time is the server's business, checked by TIMEOUT
    database=None,  # the seed decides the examples, not what an earlier run stored
    # No shrinking: every example is already one small attack (and its repr shows what was sent), while each
    # shrinking step against a hanging server would cost a socket timeout.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(attack=attacks())
def test_random_attacks_get_the_contracts_answer_and_the_server_stays_up(name, servers, model, attack):
    check_answer(name, servers(name), attack, model)
