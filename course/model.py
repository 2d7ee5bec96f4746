"""Load the course model safely, together with the metadata that describes it.

The artifact is a pickle (joblib). Unpickling runs code chosen by whoever wrote the file,
so we check the file's sha256 against the metadata *before* loading it: a corrupt or swapped
file is refused instead of executed. (The hash only proves the file is the one the metadata
describes; trust still comes from where the metadata came from. Lesson 00 shows skops and
ONNX, formats that do not run code on load.)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from course import DEFAULT_MODEL_PATH


class ModelIntegrityError(ValueError):
    """The artifact on disk is not the one its metadata describes."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def metadata_path_for(model_path: Path) -> Path:
    return Path(model_path).with_suffix(".json")


def model_path_from_env() -> Path:
    """`MODEL_PATH` if set, else the repository's trained model (wherever we are started from)."""
    return Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)


@dataclass(frozen=True)
class LoadedModel:
    estimator: Any
    metadata: dict
    path: Path

    @property
    def features(self) -> list[str]:
        return self.metadata["features"]

    @property
    def classes(self) -> list[str]:
        return self.metadata["classes"]


def read_metadata(model_path: Path | str | None = None) -> dict:
    model_path = Path(model_path) if model_path else model_path_from_env()
    meta_path = metadata_path_for(model_path)
    if not meta_path.exists():
        raise FileNotFoundError(
            f"No metadata beside the model: {meta_path} is missing. "
            "Train the model first: `make model` (or `python models/train.py`)."
        )
    return json.loads(meta_path.read_text())


def load_model(model_path: Path | str | None = None) -> LoadedModel:
    """Verify the artifact against its metadata, then unpickle it."""
    model_path = Path(model_path) if model_path else model_path_from_env()
    if not model_path.exists():
        raise FileNotFoundError(
            f"Model file {model_path} does not exist. "
            "Train it first: `make model` (or `python models/train.py`)."
        )
    metadata = read_metadata(model_path)
    actual = sha256_of(model_path)
    if actual != metadata["sha256"]:
        raise ModelIntegrityError(
            f"Refusing to load {model_path}: its sha256 is {actual}, "
            f"but {metadata_path_for(model_path).name} expects {metadata['sha256']}. "
            "The file is corrupt or was replaced; retrain it with `make model`."
        )

    import joblib  # imported late: the integrity check must not depend on it
    import sklearn

    trained_with = metadata["versions"]["scikit-learn"]
    if trained_with != sklearn.__version__:
        warnings.warn(
            f"{model_path.name} was trained with scikit-learn {trained_with} but "
            f"{sklearn.__version__} is installed; predictions may differ. Retrain with `make model`.",
            stacklevel=2,
        )
    return LoadedModel(estimator=joblib.load(model_path), metadata=metadata, path=model_path)
