"""Train the course model: a scikit-learn pipeline on the iris data that scikit-learn ships.

    python models/train.py            # writes models/iris.joblib and models/iris.json
    python models/train.py --out DIR  # somewhere else

Training is deterministic (fixed split and solver, no randomness left), so two runs give
the same predictions. The metadata written beside the artifact is the contract every server
reads: feature names *in order*, class names, training ranges, library versions, sha256.
"""

import argparse
import json
import platform
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from course.model import sha256_of

MODEL_NAME = "iris-classifier"
MODEL_VERSION = "1.0.0"
# scikit-learn calls them "sepal length (cm)"; servers and clients use these names.
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SEED = 42


def train(out_dir: Path) -> dict:
    iris = load_iris()
    x_train, x_test, y_train, y_test = train_test_split(
        iris.data, iris.target, test_size=0.3, stratify=iris.target, random_state=SEED
    )
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pipeline.fit(x_train, y_train)

    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "iris.joblib"
    joblib.dump(pipeline, artifact)

    metadata = {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "artifact": artifact.name,
        "sha256": sha256_of(artifact),
        "features": FEATURES,
        "classes": [str(name) for name in iris.target_names],
        # Lesson 06 counts inputs outside these ranges as a drift signal.
        "feature_ranges": {
            name: [float(x_train[:, i].min()), float(x_train[:, i].max())]
            for i, name in enumerate(FEATURES)
        },
        "test_accuracy": round(float(pipeline.score(x_test, y_test)), 4),
        "train_rows": int(len(x_train)),
        "test_rows": int(len(x_test)),
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "joblib": joblib.__version__,
            "numpy": np.__version__,
        },
    }
    (out_dir / "iris.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    meta = train(args.out)
    print(f"Trained {meta['name']} {meta['version']}: test accuracy {meta['test_accuracy']}, "
          f"sha256 {meta['sha256'][:12]}…, written to {args.out / meta['artifact']}")
