"""The smallest honest model API: Python's standard library and nothing else.

    python lessons/00-why-serve/server.py      # then POST JSON to http://127.0.0.1:8000/predict

Everything Flask and FastAPI will do for us later is done by hand here: routing, reading the
body, parsing JSON, validating it, and turning mistakes into a 400 instead of a crash.
"""

import json
import math
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from course.model import load_model

MODEL = load_model()  # MODEL_PATH, or the repo's trained model


def is_finite_number(x):
    # bool is a subclass of int in Python, but true/false is not a measurement.
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class PredictHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/health":
            return self.reply(404, {"detail": f"no route GET {self.path}"})
        self.reply(200, {"status": "ok"})

    def do_POST(self):
        if self.path != "/predict":
            return self.reply(404, {"detail": f"no route POST {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.reply(400, {"detail": "body is not valid JSON"})
        if not isinstance(body, dict):
            return self.reply(400, {"detail": f"send a JSON object with the features {MODEL.features}"})
        missing = [name for name in MODEL.features if name not in body]
        if missing:
            return self.reply(400, {"detail": f"missing features {missing}"})
        # The order of the model's features comes from its metadata, never from the request.
        row = [body[name] for name in MODEL.features]
        not_numbers = [name for name, x in zip(MODEL.features, row) if not is_finite_number(x)]
        if not_numbers:
            return self.reply(400, {"detail": f"features {not_numbers} must be finite numbers"})
        probabilities = MODEL.estimator.predict_proba([row])[0]
        best = int(probabilities.argmax())
        self.reply(200, {"prediction": best, "label": MODEL.classes[best],
                         "probabilities": [round(float(p), 6) for p in probabilities]})

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    print(f"Serving {MODEL.metadata['name']} on http://{host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), PredictHandler).serve_forever()
