"""A copy of the course model that fails on some rows, to see what a batcher does when a model call raises.

    python lessons/09-throughput/fragile_model.py /some/folder    # writes iris.joblib + iris.json there
    MODEL_PATH=/some/folder/iris.joblib python lessons/09-throughput/server.py

Real models fail on inputs nobody tried: a feature the training data never had negative, a shape a kernel does not
support. This one takes the square root of every feature first, so a negative measurement becomes NaN and
predict_proba raises ValueError ("Input X contains NaN") for the whole call: every row batched with it fails too.
"""

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from course.model import load_model, sha256_of


def write_fragile_model(folder) -> Path:
    """iris.joblib and its iris.json (with the sha256 that load_model checks) in `folder`; returns the model path."""
    model = load_model()
    fragile = make_pipeline(FunctionTransformer(np.sqrt), model.estimator)
    path = Path(folder) / model.path.name
    joblib.dump(fragile, path)
    metadata = {**model.metadata, "version": model.metadata["version"] + "+fragile", "sha256": sha256_of(path)}
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    return path


if __name__ == "__main__":
    print(write_fragile_model(sys.argv[1]))
