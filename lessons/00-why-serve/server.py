"""The smallest honest model API: Python's standard library and nothing else.

    python lessons/00-why-serve/server.py      # then POST JSON to http://127.0.0.1:8000/predict

Everything Flask and FastAPI will do for us later is done by hand here: routing, reading the
body, parsing JSON, validating it, and turning mistakes into a 4xx with a message instead of a crash.
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from course.model import load_model

MODEL = load_model()  # MODEL_PATH, or the repo's trained model
EXPECTED = ", ".join(MODEL.features)
MAX_BODY_BYTES = 1024 * 1024
# Any finite float is a number, but near 1e308 the model's arithmetic overflows and it answers NaN.
# A million centimetres (10 km) is no flower either, so values must lie within +-LIMIT.
LIMIT = 1e6
JSON_TYPES = {str: "a string", bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}


class Refused(Exception):
    """A mistake in the request: Refused(status, a sentence naming it)."""


def to_row(body):
    """The features in the model's order, which comes from its metadata, never from the request."""
    if not isinstance(body, dict):
        raise Refused(400, f"expected a JSON object with {EXPECTED}")
    row = []
    for name in MODEL.features:
        if name not in body:
            raise Refused(400, f"{name}: missing; expected {EXPECTED}")
        value = body[name]
        # bool is a subclass of int in Python, but true/false is not a measurement.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Refused(400, f"{name}: expected a number, got {JSON_TYPES[type(value)]}")
        # NaN fails every comparison, so this refuses NaN and Infinity too (Python's json reads both).
        if not -LIMIT <= value <= LIMIT:
            raise Refused(400, f"{name}: expected a number from {-LIMIT:,.0f} to {LIMIT:,.0f}, got {value}")
        row.append(float(value))
    for key in body:
        if key not in MODEL.features:  # a typo ("petal_widht") must not pass unnoticed
            # repr: a key can hold anything, even a lone surrogate ("\ud800") that no terminal can print.
            raise Refused(400, f"{key!r}: unknown field; expected {EXPECTED}")
    return row


class PredictHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health":
            return self.reply(404, {"detail": f"no route GET {self.path}"})
        self.reply(200, {"status": "ok"})

    def do_POST(self):
        if self.path != "/predict":
            return self.reply(404, {"detail": f"no route POST {self.path}"})
        try:
            row = to_row(self.read_json())
        except Refused as mistake:
            status, detail = mistake.args
            return self.reply(status, {"detail": detail})
        probabilities = MODEL.estimator.predict_proba([row])[0]
        best = int(probabilities.argmax())
        self.reply(200, {"prediction": best, "label": MODEL.classes[best],
                         "probabilities": [round(float(p), 6) for p in probabilities]})

    def read_json(self):
        length = self.headers.get("Content-Length", "")
        # Without a length we cannot know where the body ends (http.server does not decode chunked ones).
        if not length.isdecimal():
            raise Refused(411, "send the body with a Content-Length header")
        # Before reading, so we never hold more. len first: int() refuses a number of 5,000 digits.
        if len(length) > 9 or int(length) > MAX_BODY_BYTES:
            raise Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        body = self.rfile.read(int(length))
        if len(body) < int(length):  # the client hung up half-way
            raise Refused(400, "the body is shorter than its Content-Length")
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, a 5,000-digit integer; [[[[...]]]]
            raise Refused(400, f"the body is not valid JSON: {error}") from None

    def send_error(self, code, message=None, explain=None):
        # http.server's own refusals, as JSON too. Its 501 means "no do_PUT": for us, one more unknown route.
        if code == 501:
            code, message = 404, f"no route {self.command} {self.path}"
        self.reply(code, {"detail": message or self.responses[code][0]})

    def reply(self, status, payload):
        body = json.dumps(payload, allow_nan=False).encode()  # NaN is not JSON: fail here rather than send it
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    print(f"Serving {MODEL.metadata['name']} on http://{host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), PredictHandler).serve_forever()
