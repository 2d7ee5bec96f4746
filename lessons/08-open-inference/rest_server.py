"""Lesson 08: the iris model over the Open Inference Protocol's REST API (KServe V2), binary extension included.

    python lessons/08-open-inference/rest_server.py     # 127.0.0.1:8000 (env HOST, PORT, MODEL_PATH, DRAIN_SECONDS)
    curl 127.0.0.1:8000/v2/models/iris                  # what the model takes and gives
    curl 127.0.0.1:8000/v2/models/iris/infer -H 'content-type: application/json' \
         -d '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}'

The routes and JSON are the protocol's, not ours: tritonclient, MLServer's and KServe's clients call this
server unchanged. The model side (metadata, rows, outputs) is in v2.py, shared with grpc_server.py.
No pydantic models here: a request is parsed once, by json.loads and numpy, which keeps a V2 request cheap
(`make bench` measures it against MLServer; the README has a run).
"""

import json
import os
import threading

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

import v2

MAX_BODY_BYTES = 1024 * 1024  # 1000 rows of JSON fit with room to spare (the notebook measures their size)
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))  # readiness false this long after SIGTERM, then drain
GRACE_SECONDS = 5  # then the requests still running are cancelled: a client stalled mid-body held the stop forever
BINARY_HEADER = "inference-header-content-length"  # the binary extension: how many bytes of the body are JSON
state = {"draining": False}
# No /docs: the contract is the published protocol, which a generated schema of `Request` routes would not show.
app = FastAPI(title="Iris over the Open Inference Protocol", openapi_url=None)


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        # ASCII JSON: an input name such as "\ud800", echoed in an error, is escaped instead of failing as a 500.
        return json.dumps(content).encode()


def error(status: int, message: str, headers=None) -> JSON:
    return JSON({"error": message}, status, headers)  # the protocol's error object


@app.exception_handler(v2.BadRequest)
async def bad_request(request: Request, exc: v2.BadRequest):
    return error(400, str(exc))


@app.exception_handler(v2.NotFound)
async def not_found(request: Request, exc: v2.NotFound):
    return error(404, str(exc))


@app.exception_handler(HTTPException)  # unknown paths (404) and methods (405): the protocol's error object too
async def http_error(request: Request, exc: HTTPException):
    # exc.headers: a 405's Allow, the methods the path takes (RFC 9110 requires it; Schemathesis checks it)
    return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", exc.headers)


@app.get("/v2")
async def server_metadata():
    return JSON(v2.SERVER_METADATA)


@app.get("/v2/health/live")
async def live():
    return JSON({"live": True})


@app.get("/v2/health/ready")
async def ready():
    # Kubernetes' readinessProbe looks at the status code only: 503 after SIGTERM sends traffic elsewhere.
    return JSON({"ready": not state["draining"]}, 503 if state["draining"] else 200)


@app.get("/v2/models/{name}")
@app.get("/v2/models/{name}/versions/{version}")
async def model_metadata(name: str, version: str = ""):
    v2.check_model(name, version)
    return JSON(v2.METADATA)


@app.get("/v2/models/{name}/ready")
@app.get("/v2/models/{name}/versions/{version}/ready")
async def model_ready(name: str, version: str = ""):
    v2.check_model(name, version)
    return JSON({"name": name, "ready": not state["draining"]}, 503 if state["draining"] else 200)


JSON_TYPES = {list: "a list", dict: "an object", str: "a string", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def field(obj, key: str, kind: type, where: str, default=None):
    """obj[key] if it has the JSON type the protocol gives it, else BadRequest naming the field."""
    value = obj.get(key, default)
    if not isinstance(value, kind):
        raise v2.BadRequest(f"{where}{key}: expected {JSON_TYPES[kind]}, "
                            f"got {JSON_TYPES[type(value)] if key in obj else 'nothing'}")
    return value


def read_input(request: dict, binary: bytes):
    """The one input tensor as rows, from its JSON `data` or from the bytes after the JSON."""
    inputs = field(request, "inputs", list, "")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise v2.BadRequest(f"inputs: expected one tensor, {v2.INPUT}; got {len(inputs)} items")
    tensor, where = inputs[0], f"{v2.INPUT}: "
    name, datatype = field(tensor, "name", str, "inputs[0]."), field(tensor, "datatype", str, where)
    shape = field(tensor, "shape", list, where)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
        raise v2.BadRequest(f"{where}shape: expected a list of integers, got {shape}")
    size = field(tensor, "parameters", dict, where, {}).get("binary_data_size")
    if size is None:
        data = field(tensor, "data", list, where)
        rows = v2.rows_from(name, datatype, shape, data)  # so data is flat or [n, 4]: two levels at most
        if any(v is True or v is False or isinstance(v, list) and bool in map(type, v) for v in data):
            raise v2.BadRequest(f"{where}data must be numbers, as a flat or nested list")  # numpy read true as 1
        return rows
    if not isinstance(size, int) or size != len(binary):
        raise v2.BadRequest(f"{where}binary_data_size is {size}, but {len(binary)} bytes follow the JSON")
    return v2.rows_from(name, datatype, shape, binary)


def requested_outputs(request: dict) -> list[tuple[str, bool]]:
    """(name, as binary?) for each output to send; every output if the request names none."""
    everything_binary = field(request, "parameters", dict, "", {}).get("binary_data_output") is True
    outputs = field(request, "outputs", list, "", [])
    if not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise v2.BadRequest("outputs: expected a list of objects such as {\"name\": \"probabilities\"}")
    if not outputs:
        return [(name, everything_binary) for name in v2.OUTPUTS]
    return [(o["name"], field(o, "parameters", dict, f"{o['name']}: ", {}).get("binary_data", everything_binary)
             is True) for o in outputs]


@app.post("/v2/models/{name}/infer")
@app.post("/v2/models/{name}/versions/{version}/infer")
async def infer(request: Request, name: str, version: str = ""):
    # `async def`: one row costs the model less than a hand-off to a worker thread (lesson 02 measured it).
    v2.check_model(name, version)
    body = bytearray()
    try:
        async for chunk in request.stream():  # read no further than the limit, whatever Content-Length says
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    except ClientDisconnect:  # the client hung up mid-body: an answer nobody reads, not a traceback in the log
        return error(400, "the client hung up before the body ended")
    json_length = request.headers.get(BINARY_HEADER, str(len(body)))
    # ASCII digits, 7 at most: isdigit() says yes to "²", which int() refuses, as it refuses 5,000 digits (a 500).
    if not (json_length.isascii() and json_length.isdigit() and len(json_length) <= 7) or int(json_length) > len(body):
        raise v2.BadRequest(f"{BINARY_HEADER} must be the JSON's length in bytes, at most {len(body)}; "
                            f"got {json_length}")
    try:
        request_json = json.loads(body[:int(json_length)])
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nested thousands deep
        raise v2.BadRequest(f"the body is not valid JSON: {exc or 'nested too deeply'}") from None
    if not isinstance(request_json, dict):
        raise v2.BadRequest("the body must be a JSON object with \"inputs\"")
    rows = read_input(request_json, bytes(body[int(json_length):]))
    wanted = requested_outputs(request_json)
    response = {"model_name": v2.NAME, "model_version": v2.VERSION, "outputs": []}
    if "id" in request_json:  # the protocol: an id in the request comes back in the response
        response["id"] = field(request_json, "id", str, "")
    blobs = []
    for (name, datatype, shape, values), (_, binary) in zip(v2.infer(rows, [n for n, _ in wanted]), wanted):
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:  # the bytes go after the JSON, in output order; the JSON says how many are this tensor's
            blobs.append(v2.to_bytes(datatype, values))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        else:
            tensor["data"] = values.ravel().tolist()
        response["outputs"].append(tensor)
    if not blobs:
        return JSON(response)
    header = json.dumps(response).encode()
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


class DrainFirst(uvicorn.Server):
    """uvicorn with a planned stop that loses nothing (as in lesson 02): readiness first, a pause, then drain."""

    def handle_exit(self, sig, frame):
        if state["draining"]:  # a second Ctrl+C or SIGTERM: stop now
            self.should_exit = self.force_exit = True
        else:
            state["draining"] = True  # /v2/health/ready answers 503: load balancers stop sending requests here
            threading.Timer(DRAIN_SECONDS, setattr, (self, "should_exit", True)).start()


if __name__ == "__main__":
    config = uvicorn.Config(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                            access_log=False, timeout_graceful_shutdown=GRACE_SECONDS)
    DrainFirst(config).run()
