"""The course's REST error contract, for its FastAPI servers: every error is one JSON sentence naming the problem.

Lesson 02 builds it and shows the failures it prevents; the later FastAPI servers (lessons 06, 09, 10) use it as it is,
the way every server uses course.model:

    app.add_middleware(LimitBody)                             # 413 while a body over 1 MiB arrives
    add_error_handlers(app, Features, limit=LIMIT, max_batch=MAX_BATCH)
    @app.post("/predict", responses=ERRORS)                   # the 400/413/415/422 answers, in /docs

Lesson 01's Flask server writes the same sentences by hand; tests/test_contract.py holds both to the same status and
body for every bad request.
"""

import json

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_BODY_BYTES = 1024 * 1024


class Error(BaseModel):
    detail: str = Field(description="What is wrong with the request", examples=["petal_width: missing"])


# Documented in /docs; 422 replaces FastAPI's list of errors, because every error here is one sentence.
ERRORS = {400: {"model": Error, "description": "The body is empty or not JSON"},
          413: {"model": Error, "description": f"The body is over {MAX_BODY_BYTES} bytes"},
          415: {"model": Error, "description": "The body is not sent as Content-Type: application/json"},
          422: {"model": Error, "description": "The JSON is not what the model needs; the sentence names the field"}}


class LimitBody:
    """ASGI middleware: stop reading a body past MAX_BODY_BYTES and answer 413 (JSON, like every error).
    FastAPI's own limit answers in plain text."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
            return message

        await self.app(scope, limited_receive, send)


class Sentence(JSONResponse):
    def render(self, content) -> bytes:
        # ASCII JSON: a lone surrogate that a client sent ("\\ud800" as a key) is escaped instead of failing as a 500.
        return json.dumps(content).encode()


def is_json(content_type: str) -> bool:
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def a(value) -> str:
    """The JSON type of a value, as the error sentences name it."""
    kinds = {str: "a string", bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}
    return kinds.get(type(value), "a number")


def sentence(error: dict, fields: list[str], batch: bool, limit: float, max_batch: int) -> str:
    """One pydantic error as the sentence lesson 01 writes by hand, e.g. "instances[2].petal_width: missing"."""
    loc = error["loc"][1:]  # without "body"
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".") or "body"
    expected = ", ".join(["instances"] if batch and len(loc) == 1 else fields)
    value, kind = error["input"], error["type"]
    if kind in ("model_attributes_type", "model_type"):
        return f"{field}: expected an object, got {a(value)}"
    if kind == "string_unicode":  # a key such as "\\ud800": JSON can write it, but it is no text
        return f"{field}: a key is not valid Unicode"
    if kind == "missing":
        return f"{field}: missing; expected {expected}"
    if kind == "extra_forbidden":
        return f"{field}: unknown field; expected {expected}"
    if kind == "float_type" and a(value) != "a number":  # a number here is an integer too big for a float
        return f"{field}: expected a number, got {a(value)}"
    if kind in ("float_type", "finite_number", "greater_than_equal", "less_than_equal"):
        return f"{field}: expected a number from {-limit:,.0f} to {limit:,.0f}, got {value}"
    if kind == "list_type":
        return f"{field}: expected an array, got {a(value)}"
    if kind in ("too_short", "too_long"):
        return f"{field}: expected 1 to {max_batch} items, got {len(value)}"
    return f"{field}: {error['msg']}"


def add_error_handlers(app, features: type[BaseModel], *, limit: float, max_batch: int) -> None:
    """Answer FastAPI's errors with the course's status codes and one sentence each."""
    fields = list(features.model_fields)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # pydantic calls every mistake 422. Like lesson 01, three of them are not about the fields:
        content_type = request.headers.get("content-type", "")
        if not is_json(content_type):  # then FastAPI did not parse the body as JSON (strict_content_type)
            return Sentence({"detail": f"expected Content-Type: application/json, got {content_type or 'none'}"}, 415)
        error = exc.errors()[0]
        if error["type"] == "json_invalid":
            return Sentence({"detail": f"the body is not valid JSON: {error['ctx']['error']}"}, 400)
        if error["type"] == "missing" and error["loc"] == ("body",):
            return Sentence({"detail": "the body is empty; send a JSON object"}, 400)
        # The first mistake, as a sentence: never the client's input echoed back (it can be huge, or not even text).
        batch = request.url.path.endswith("/batch")
        return Sentence({"detail": sentence(error, fields, batch, limit, max_batch)}, 422)

    @app.exception_handler(StarletteHTTPException)  # the class FastAPI raises, and registers its own handler for
    async def unparsable_body(request: Request, exc: StarletteHTTPException):
        # FastAPI answers "There was an error parsing the body" when json.loads fails with something other than a
        # syntax error: bytes that are not UTF-8, [[[[...]]]] nested 10,000 deep, an integer of 5,000 digits.
        if exc.status_code == 400 and exc.__cause__ is not None:
            reason = "nested too deeply" if isinstance(exc.__cause__, RecursionError) else exc.__cause__
            return Sentence({"detail": f"the body is not valid JSON: {reason}"}, 400)
        return await http_exception_handler(request, exc)
