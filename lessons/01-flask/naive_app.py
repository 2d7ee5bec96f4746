"""The classic first model server, as many tutorials write it. It has a bug: the notebook finds it.

    python lessons/01-flask/naive_app.py      # then POST JSON to http://127.0.0.1:5000/predict

Changes from the tutorial version, none of them touching the bug: the model is loaded with
course.model (which checks the file's sha256 before unpickling it), the server listens on
127.0.0.1 unless HOST says otherwise (not on every network interface), and GET /health tells
course.server when the server is up.
"""

import os

from flask import Flask, jsonify, request

from course.model import load_model

app = Flask(__name__)
model = load_model().estimator


@app.route("/health")
def health():
    # Only here so that course.server can tell when the server is up.
    return jsonify({"status": "ok"})


@app.route("/predict", methods=["POST"])
def predict():
    data = request.get_json()
    x = [data[f] for f in sorted(data.keys())]
    pred = model.predict([x])
    return jsonify({"prediction": int(pred[0])})


if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "5000")))
