"""Lesson 01: the iris model behind Flask, with every input checked.

    python lessons/01-flask/app.py                                 # Flask's development server, port 5000
    gunicorn -c lessons/01-flask/gunicorn.conf.py                  # a production server: see that file

What changed from naive_app.py: the feature order comes from the model's metadata, never from the
request; every value is checked before it reaches the model; and every mistake is answered with
JSON whose `detail` is one sentence naming the field, under the status code the table in the notebook gives.
"""

import json
import os

from flask import Flask, abort, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from course.model import load_model

MODEL = load_model()       # once per process, at import: each gunicorn worker loads it once
FEATURES = MODEL.features  # the order the model was trained in
CLASSES = MODEL.classes
MODEL_INFO = {key: MODEL.metadata[key] for key in ("name", "version", "features", "classes", "feature_ranges")}
MAX_BODY_BYTES = 1024 * 1024
MAX_BATCH = 1000
# Any finite float is a number, but near 1e308 the model's scaling overflows and it answers NaN.
# A million centimetres (10 km) is no flower either, so values must lie within +-LIMIT.
LIMIT = 1e6
JSON_TYPES = {str: "a string", bool: "a boolean", type(None): "null", list: "an array", dict: "an object"}

app = Flask(__name__)
# Werkzeug answers 413 when Content-Length is over this, and stops reading a chunked body here.
app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1


class InvalidInput(ValueError):
    """The body is JSON, but not what the model needs: 422, with the field's path in the message."""


def a(value):
    """The JSON type of a value, as the error sentences name it."""
    return JSON_TYPES.get(type(value), "a number")


def check_object(value, where):
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object, got {a(value)}")
    for key in value:
        if any("\ud800" <= c <= "\udfff" for c in key):  # a lone surrogate: "\ud800" is valid JSON, but no text
            raise InvalidInput(f"{where}: a key is not valid Unicode")


def check_no_unknown(value, names, where):
    for key in value:
        if key not in names:
            raise InvalidInput(f"{path(where, key)}: unknown field; expected {', '.join(names)}")


def path(where, key):
    return key if where == "body" else f"{where}.{key}"


def to_row(instance, where="body"):
    """One JSON object -> the model's input row, in the metadata's feature order."""
    check_object(instance, where)
    row = []
    for name in FEATURES:  # field by field, in order, then unknown keys: the first mistake is reported
        if name not in instance:
            raise InvalidInput(f"{path(where, name)}: missing; expected {', '.join(FEATURES)}")
        value = instance[name]
        # bool is a subclass of int in Python, and "5.1" is text: neither is a measurement.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{path(where, name)}: expected a number, got {a(value)}")
        # Also refuses NaN (it fails every comparison) and Infinity, which Python's json reads without complaint.
        if not -LIMIT <= value <= LIMIT:
            raise InvalidInput(f"{path(where, name)}: expected a number from {-LIMIT:,.0f} to {LIMIT:,.0f}, "
                               f"got {value}")
        row.append(float(value))
    check_no_unknown(instance, FEATURES, where)
    return row


def read_json():
    """The parsed body, or the right error: too big 413, not JSON 415, empty or malformed 400."""
    try:
        body = request.get_data()
    except HTTPException:  # 413 past MAX_CONTENT_LENGTH
        raise
    except Exception as error:  # the server could not read it, e.g. gunicorn's InvalidChunkSize for broken chunks
        abort(400, f"the body could not be read: {type(error).__name__}")
    if len(body) > MAX_BODY_BYTES:  # a chunked body (no Content-Length), cut at MAX_CONTENT_LENGTH
        raise RequestEntityTooLarge()
    if not request.is_json:
        abort(415, f"expected Content-Type: application/json, got {request.mimetype or 'none'}")
    if not body:
        abort(400, "the body is empty; send a JSON object")
    try:
        return json.loads(body)
    except ValueError as error:  # also catches bytes that are not UTF-8
        abort(400, f"the body is not valid JSON: {error}")
    except RecursionError:  # [[[[...]]]] 10,000 deep: Python's parser gives up; FastAPI answers 400 too
        abort(400, "the body is not valid JSON: nested too deeply")


def predict_rows(rows):
    # One predict_proba call: the predicted class is the most probable one, so no predict() too.
    probabilities = MODEL.estimator.predict_proba(rows)
    return [{"prediction": best, "label": CLASSES[best], "probabilities": p}
            for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]


@app.get("/health")
def health():
    # Readiness. The model is loaded at import, before the first request; after SIGTERM, gunicorn.conf.py
    # sets DRAINING, and the 503 tells load balancers to send new requests elsewhere.
    if app.config.get("DRAINING"):
        return {"status": "shutting down"}, 503
    return {"status": "ok"}


@app.get("/model")
def model_info():
    return MODEL_INFO


@app.post("/predict")
def predict():
    return predict_rows([to_row(read_json())])[0]


@app.post("/predict/batch")
def predict_batch():
    body = read_json()
    check_object(body, "body")
    if "instances" not in body:
        raise InvalidInput("instances: missing; expected instances")
    instances = body["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"instances: expected an array, got {a(instances)}")
    if not 1 <= len(instances) <= MAX_BATCH:
        raise InvalidInput(f"instances: expected 1 to {MAX_BATCH} items, got {len(instances)}")
    rows = [to_row(x, f"instances[{i}]") for i, x in enumerate(instances)]
    check_no_unknown(body, ["instances"], "body")
    return {"predictions": predict_rows(rows)}


@app.errorhandler(InvalidInput)
def invalid_input(error):
    return jsonify(detail=str(error)), 422


@app.errorhandler(RequestEntityTooLarge)
def too_large(error):
    return jsonify(detail=f"the body is larger than {MAX_BODY_BYTES} bytes"), 413


@app.errorhandler(HTTPException)
def http_error(error):
    # Every other HTTP error (400, 404, 405, 415) as JSON too, instead of Flask's HTML page. Starting from
    # error.get_response() keeps its headers, such as the Allow that a 405 must carry.
    response = error.get_response()
    response.data = json.dumps({"detail": error.description})
    response.content_type = "application/json"
    return response


if __name__ == "__main__":
    # Flask's development server: handy on a laptop, not made for production (see the notebook).
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
