"""Lesson 01, exercise (worked answer): lesson 01's app.py, plus: every measurement must be > 0.

    python solutions/01-flask/app.py                               # Flask's development server, port 5000

The change is two lines in to_row(), marked "Exercise". Everything else is lesson 01's app.py.

What changed from naive_app.py: the feature order comes from the model's metadata, never from the
request; every value is checked before it reaches the model; and every mistake is answered with
JSON whose `detail` names the field, under the status code the table in the notebook gives.
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


def path(where, key):
    return key if where == "body" else f"{where}.{key}"


def check_object(value, names, where):
    """`value` must be a JSON object holding exactly the keys `names`, in any order."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object with {names}, got {JSON_TYPES.get(type(value), 'a number')}")
    for key in value:
        if key not in names:
            raise InvalidInput(f"{path(where, key)}: unknown field; expected exactly {names}")
    for name in names:
        if name not in value:
            raise InvalidInput(f"{path(where, name)}: missing; every one of {names} is required")


def to_row(instance, where="body"):
    """One JSON object -> the model's input row, in the metadata's feature order."""
    check_object(instance, FEATURES, where)
    row = []
    for name in FEATURES:
        value = instance[name]
        # bool is a subclass of int in Python, and "5.1" is text: neither is a measurement.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{path(where, name)}: expected a number, got {JSON_TYPES[type(value)]}")
        # Also refuses NaN (it fails every comparison) and Infinity, which Python's json reads without complaint.
        if not -LIMIT <= value <= LIMIT:
            raise InvalidInput(f"{path(where, name)}: expected a number from {-LIMIT:,.0f} to {LIMIT:,.0f}, "
                               f"got {value}")
        if value <= 0:  # Exercise: no real flower has a length or width of zero or less
            raise InvalidInput(f"{path(where, name)}: expected a number greater than 0, got {value}")
        row.append(float(value))
    return row


def read_json():
    """The parsed body, or the right error: too big 413, not JSON 415, empty or malformed 400."""
    body = request.get_data()
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


def predict_rows(rows):
    # One predict_proba call: the predicted class is the most probable one, so no predict() too.
    probabilities = MODEL.estimator.predict_proba(rows)
    return [{"prediction": best, "label": CLASSES[best], "probabilities": p}
            for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]


@app.get("/health")
def health():
    return {"status": "ok"}  # the model is loaded at import, before the first request


@app.get("/model")
def model_info():
    return MODEL_INFO


@app.post("/predict")
def predict():
    return predict_rows([to_row(read_json())])[0]


@app.post("/predict/batch")
def predict_batch():
    body = read_json()
    check_object(body, ["instances"], "body")
    instances = body["instances"]
    if not isinstance(instances, list):
        got = JSON_TYPES.get(type(instances), "a number")
        raise InvalidInput(f"instances: expected an array of objects, got {got}")
    if not 1 <= len(instances) <= MAX_BATCH:
        raise InvalidInput(f"instances: expected 1 to {MAX_BATCH} objects, got {len(instances)}")
    return {"predictions": predict_rows([to_row(x, f"instances[{i}]") for i, x in enumerate(instances)])}


@app.errorhandler(InvalidInput)
def invalid_input(error):
    return jsonify(detail=str(error)), 422


@app.errorhandler(RequestEntityTooLarge)
def too_large(error):
    return jsonify(detail=f"the body is larger than {MAX_BODY_BYTES} bytes"), 413


@app.errorhandler(HTTPException)
def http_error(error):
    # Every other HTTP error (400, 404, 405, 415) as JSON too, instead of Flask's HTML page.
    return jsonify(detail=error.description), error.code


if __name__ == "__main__":
    # Flask's development server: handy on a laptop, not made for production (see the notebook).
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
