"""Lesson 08's offline check of a KServe InferenceService manifest: every field one KServe knows, with its type.

    python -m course.kserve [manifest.yaml]   # default: lessons/08-open-inference/kserve/inferenceservice.yaml

KServe's fields come from kserve-inferenceservice.schema.json beside this file (written by tools/kserve_schema.py
from kserve 0.21.0's models); the Kubernetes types inside (Container, ResourceRequirements, probes) from the strict schemas that
kubernetes-validate ships (lesson 05 uses it). No cluster needed, which is also the limit: the README lists what
only a cluster with KServe can tell.
"""

import json
import sys
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import referencing
import yaml

from course import LESSONS

SCHEMA = Path(__file__).resolve().with_name("kserve-inferenceservice.schema.json")
MANIFEST = LESSONS / "08-open-inference" / "kserve" / "inferenceservice.yaml"


def validator() -> jsonschema.Draft202012Validator:
    kubernetes = files("kubernetes_validate") / "kubernetes-json-schema" / \
        f"v{kubernetes_validate.latest_version()}-local-strict"
    schemas = (json.loads(path.read_text()) for path in kubernetes.iterdir() if path.name.endswith(".json"))
    registry = referencing.Registry().with_resources(
        (schema["$id"], referencing.Resource.from_contents(schema)) for schema in schemas if "$id" in schema)
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()),
                                           registry=registry)


def problems(manifest: dict, check=None) -> list[str]:
    """One line per problem, naming where it is ("spec.predictor.model: ..."); [] for a manifest that passes."""
    check = check or validator()
    return [f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
            for error in check.iter_errors(manifest)]


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else MANIFEST
    check, failed = validator(), False
    for manifest in yaml.safe_load_all(path.read_text()):
        found = problems(manifest, check)
        failed |= bool(found)
        print(f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}: " + ("; ".join(found) or "OK"))
    sys.exit(1 if failed else 0)
