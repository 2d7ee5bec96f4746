import json
import subprocess
import sys

import numpy as np
import pytest

from course import REPO
from course.model import ModelIntegrityError, load_model, sha256_of

EXPECTED_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
EXPECTED_CLASSES = ["setosa", "versicolor", "virginica"]


def train_into(directory):
    subprocess.run([sys.executable, str(REPO / "models" / "train.py"), "--out", str(directory)],
                   check=True, capture_output=True)
    return load_model(directory / "iris.joblib")


def test_training_twice_gives_the_same_model(tmp_path):
    first, second = train_into(tmp_path / "a"), train_into(tmp_path / "b")
    grid = np.random.default_rng(0).uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(200, 4))
    assert (first.estimator.predict(grid) == second.estimator.predict(grid)).all()
    # Each training ran in its own process. Where two processes can get different BLAS kernels (OpenBLAS picks one
    # per CPU), the last bits of the weights differ, and with them the artifact's bytes (so its sha256): measured
    # with the Haswell, SkylakeX and Prescott kernels (forced in a shell), up to 1e-14 in probability. Randomness left in the
    # training would show as differences of 1e-3 and more.
    np.testing.assert_allclose(first.estimator.predict_proba(grid), second.estimator.predict_proba(grid),
                               rtol=0, atol=1e-12)
    for key in ("features", "classes", "feature_ranges", "test_accuracy"):
        assert first.metadata[key] == second.metadata[key]


def test_metadata_is_the_contract(model):
    meta = model.metadata
    assert meta["features"] == EXPECTED_FEATURES
    assert meta["classes"] == EXPECTED_CLASSES
    assert set(meta["versions"]) >= {"python", "scikit-learn", "joblib"}
    assert meta["sha256"] == sha256_of(model.path)
    assert meta["test_accuracy"] > 0.85
    assert list(meta["feature_ranges"]) == EXPECTED_FEATURES


def test_a_tampered_artifact_is_refused_before_unpickling(tmp_path):
    train_into(tmp_path)
    artifact = tmp_path / "iris.joblib"
    # A pickle that would create a file if it were ever loaded.
    marker = tmp_path / "code-ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    artifact.write_bytes(payload)
    expected = json.loads((tmp_path / "iris.json").read_text())["sha256"]
    with pytest.raises(ModelIntegrityError) as error:
        load_model(artifact)
    message = str(error.value)
    assert str(artifact) in message and expected in message and sha256_of(artifact) in message
    assert not marker.exists()


def test_a_missing_model_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make model"):
        load_model(tmp_path / "iris.joblib")


def test_model_path_comes_from_the_environment(tmp_path, monkeypatch):
    train_into(tmp_path)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "iris.joblib"))
    assert load_model().path == tmp_path / "iris.joblib"
