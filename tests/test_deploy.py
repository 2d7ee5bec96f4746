"""Lesson 05: the deployment files, checked against what the server really does.

- Kubernetes: every manifest validated offline against the Kubernetes schema (strict: a misspelt
  field fails), and the Deployment's probe paths and port called on the server started the way
  its container would start it: with the manifest's env, as a process here and, when a container
  engine is available, as the real image.
- Graceful shutdown: after SIGTERM, /health answers 503 first, the server keeps serving through its drain,
  then refuses new connections, finishes the requests in flight and exits 0 (tests/test_shutdown.py
  measures the same under load, on every server).
- AWS Lambda: the handler invoked with real-shaped API Gateway events (HTTP API v2, REST API v1); the
  model is loaded once per container, at import, not per invocation.
- ECS: the task definition is JSON with the fields ECS requires, and agrees with the image.
(Cloud Run's contract, "listen on $PORT", is tested on the container in test_container.py.)
"""

import base64
import copy
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import kubernetes_validate
import psutil
import pytest
import requests
import yaml

from course import REPO, import_lesson
from course import containers as engine_module
from course.server import BackgroundServer, http_ready, start_server

LESSON = REPO / "lessons" / "05-deploy"
MANIFESTS = sorted((LESSON / "k8s").glob("*.yaml"))
# An older Kubernetes the manifests work on, and the newest schema.
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version() + ".0"]
ROW = {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}




def documents():
    return [(path.name, doc) for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind):
    return next(doc for _, doc in documents() if doc["kind"] == kind)


def api_container(deployment):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "api")


def image_spec(image):
    """Lesson 04's image this manifest runs (by tag), and the CMD its Dockerfile gives it."""
    spec = next(s for s in engine_module.IMAGES.values() if image.endswith(s.tag))
    cmd = re.findall(r"^CMD (\[.*\])$", (REPO / spec.dockerfile).read_text(), re.M)[-1]
    return spec, json.loads(cmd)


def dockerfile_value(spec, instruction):
    return re.findall(rf"^{instruction}\s+(.+)$", (REPO / spec.dockerfile).read_text(), re.M)[-1]


def mebibytes(quantity):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] / 2**20


# ---- Kubernetes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name, doc", documents(), ids=[f"{n}:{d['kind']}" for n, d in documents()])
def test_manifest_is_valid_kubernetes(name, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError, naming the field


def test_strict_validation_catches_a_misspelt_field():
    # The test above can fail: a classic typo is rejected, not silently ignored like kubectl < 1.27 did.
    deployment = copy.deepcopy(find("Deployment"))
    container = api_container(deployment)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_pieces_fit_together():
    deployment, service, hpa = find("Deployment"), find("Service"), find("HorizontalPodAutoscaler")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items(), "the Service would find no pods"
    container = api_container(deployment)
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2
    # A CPU utilization target is a percentage of the CPU request: without one, the HPA cannot work.
    assert container["resources"]["requests"]["cpu"]


def test_the_deployment_is_locked_down_and_drains_gracefully():
    deployment = find("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = api_container(deployment)
    spec, _ = image_spec(container["image"])
    user, group = dockerfile_value(spec, "USER").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(user), int(group))
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container["resources"]
    for kind in ("cpu", "memory"):
        assert resources["requests"][kind] and resources["limits"][kind]
    assert mebibytes(resources["requests"]["memory"]) <= mebibytes(resources["limits"]["memory"])
    # One pause, the server's own after SIGTERM (a preStop sleep would add a second one before it). It
    # outlasts the readiness probe's time to see the 503, and fits in the grace period with time to finish.
    drain = float({item["name"]: item["value"] for item in container["env"]}["DRAIN_SECONDS"])
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert "preStop" not in container.get("lifecycle", {})
    assert readiness["periodSeconds"] * readiness["failureThreshold"] < drain
    assert drain < liveness["periodSeconds"] * liveness["failureThreshold"], "liveness would restart it mid-drain"
    assert drain + 10 <= pod["terminationGracePeriodSeconds"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def probes(container):
    return {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}


def test_probes_and_port_agree_with_the_image():
    container = api_container(find("Deployment"))
    spec, _ = image_spec(container["image"])
    env = {item["name"]: item["value"] for item in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["HOST"] == "0.0.0.0", "inside a pod the server must listen on every interface"
    assert int(env["PORT"]) == ports["http"] == spec.port == int(dockerfile_value(spec, "EXPOSE"))
    for probe in probes(container).values():
        assert ports.get(probe["port"], probe["port"]) == ports["http"]


def test_probe_paths_answer_on_the_server_started_as_the_manifest_says(model):
    # The pod would run the image's CMD with the manifest's env, on port 8000 on every interface.
    # Here: the same command and env, but on a free port of 127.0.0.1 (8000 may be taken on this
    # machine); the test above checks that the manifest's own numbers agree with each other.
    container = api_container(find("Deployment"))
    _, cmd = image_spec(container["image"])
    assert cmd[0] == "python"
    env = {item["name"]: item["value"] for item in container["env"] if item["name"] not in ("HOST", "PORT")}
    env["DRAIN_SECONDS"] = "0"  # the drain is measured in the shutdown tests; here it would only slow the stop
    paths = {probe["path"] for probe in probes(container).values()}
    with BackgroundServer([sys.executable, *cmd[1:]], env=env, ready=http_ready(sorted(paths)[0])) as server:
        for path in paths:
            assert requests.get(server.url + path, timeout=2).status_code == 200, path
        # ...and the memory request is what the server really uses after serving predictions.
        rows = [dict(zip(model.features, values)) for values in [[5.1, 3.5, 1.4, 0.2]] * 1000]
        assert requests.post(server.url + "/predict/batch", json={"instances": rows}, timeout=10).ok
        used = psutil.Process(server.pid).memory_info().rss / 2**20
        requested = mebibytes(container["resources"]["requests"]["memory"])
        assert used <= requested, f"the server uses {used:.0f} MiB, the pod requests {requested:.0f} MiB"


def test_probe_paths_answer_in_the_real_image():
    try:
        engine = engine_module.detect()
    except engine_module.EngineMissing as missing:
        pytest.skip(str(missing))
    container = api_container(find("Deployment"))
    spec, _ = image_spec(container["image"])
    try:
        engine.ensure_built(spec)  # nothing to do if test_container.py built it in this run
    except engine_module.NeedsNetwork as offline:  # a first build, offline: said in one line
        pytest.skip(str(offline))
    env = {item["name"]: item["value"] for item in container["env"] if item["name"] != "PORT"}
    env["DRAIN_SECONDS"] = "0"  # as above
    with engine.start(spec, env=env) as running:
        for probe in probes(container).values():
            assert requests.get(running.url + probe["path"], timeout=2).status_code == 200
        # readOnlyRootFilesystem: true must not break it. The server's user can write nowhere in
        # its code, libraries or model (so it never tries to), and /tmp is a volume in the pod.
        writable = running.exec(["find", "/app", "/opt/venv", "-writable"])
        assert writable.returncode == 0 and writable.stdout.strip() == "", writable.stdout[:500]


# ---- graceful shutdown -------------------------------------------------------------------------------

def send_headers(port, body):
    """Start a POST and stop before the body: the request is in flight once the app asks for the
    body, which uvicorn signals by answering `Expect: 100-continue` with `100 Continue`."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall((f"POST /predict/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  "Expect: 100-continue\r\n\r\n").encode())
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        interim += sock.recv(1)
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return sock


def read_response(sock):
    data = b""
    while chunk := sock.recv(65536):  # the server closes the connection: it is shutting down
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_sigterm_fails_readiness_keeps_serving_through_the_drain_then_exits_0(model):
    # The planned stop every server of the course makes, step by step, on the image's server (lesson 02).
    drain = 1.0
    rows = [[5.1, 3.5, 1.4, 0.2], [6.0, 2.7, 5.1, 1.6], [6.3, 3.3, 6.0, 2.5], [5.7, 2.8, 4.1, 1.3], [4.9, 3.0, 1.4, 0.2]]
    bodies = [json.dumps({"instances": [dict(zip(model.features, row))] * (i + 1)}).encode()
              for i, row in enumerate(rows)]
    expected = model.estimator.predict_proba([[ROW[f] for f in model.features]])[0]
    server = start_server("lessons/02-fastapi/app.py", env={"DRAIN_SECONDS": str(drain)})
    try:
        in_flight = [send_headers(server.port, body) for body in bodies]
        server.signal(signal.SIGTERM)  # what `docker stop` and the kubelet send
        signalled = time.monotonic()
        # 1. Readiness fails first, so that load balancers polling /health send new requests elsewhere...
        while requests.get(server.url + "/health", timeout=1).status_code != 503:
            assert time.monotonic() < signalled + drain, "/health still answers 200 after SIGTERM"
            time.sleep(0.01)
        # 2. ...but until they have noticed, whatever they still send is answered: new connections too.
        reply = requests.post(server.url + "/predict", json=ROW, timeout=2)
        assert time.monotonic() < signalled + drain, "too slow to tell: this request came after the drain"
        assert reply.status_code == 200 and reply.json()["label"] == model.classes[int(expected.argmax())]
        assert reply.json()["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)
        # 3. After the drain, new connections are refused...
        while True:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < signalled + drain + 10, "still accepting connections long after the drain"
            time.sleep(0.05)
        assert time.monotonic() - signalled >= drain, "stopped accepting before the drain was over"
        assert server.process.poll() is None, "it exited with requests still in flight"
        # 4. ...and the requests already started are finished.
        for sock, body, row in zip(in_flight, bodies, rows):
            sock.sendall(body)
            status, answer = read_response(sock)
            sock.close()
            assert status == 200
            assert {p["prediction"] for p in answer["predictions"]} == {
                int(model.estimator.predict_proba([row])[0].argmax())}
        code = server.process.wait(10)
    finally:
        server.stop()
    assert "Finished server process" in server.log()
    assert code == 0, f"exit code {code}: a planned stop is not a crash\n{server.log()}"


# ---- AWS Lambda --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lambda_module():
    return import_lesson("05-deploy/lambda_handler.py")  # Lambda's init phase: once per container


@pytest.fixture(scope="module")
def handler(lambda_module):
    return lambda_module.handler


EVENTS = {"v2": "http-api-v2-predict.json", "v1": "rest-api-v1-predict.json"}


def event(version, method="POST", path="/predict", body=None, content_type="application/json", encode=False):
    """The stored real-shaped event, with another route or body: each format puts them elsewhere."""
    data = json.loads((LESSON / "events" / EVENTS[version]).read_text())
    if body is not None:
        raw = body if isinstance(body, str) else json.dumps(body)
        data["body"] = base64.b64encode(raw.encode()).decode() if encode else raw
        data["isBase64Encoded"] = encode
    if version == "v2":
        data["rawPath"] = data["requestContext"]["http"]["path"] = path
        data["requestContext"]["http"]["method"] = method
        data["headers"]["content-type"] = content_type
        data["headers"]["content-length"] = str(len(data["body"] or ""))
    else:
        data["path"], data["httpMethod"] = path, method
        data["requestContext"]["httpMethod"] = method
        data["requestContext"]["path"] = "/prod" + path
        data["pathParameters"] = {"proxy": path.lstrip("/")}
        data["headers"]["Content-Type"] = content_type
        data["multiValueHeaders"]["Content-Type"] = [content_type]
    if method == "GET":
        data["body"] = None
    return data


def invoke(handler, data):
    response = handler(data, None)
    assert response["isBase64Encoded"] is False
    body = json.loads(response["body"])
    return response["statusCode"], response, body


@pytest.mark.parametrize("version", EVENTS)
def test_lambda_predicts_like_the_model(handler, model, version):
    expected = model.estimator.predict_proba([[ROW[f] for f in model.features]])[0]
    status, response, body = invoke(handler, event(version))  # the stored event, unchanged
    assert status == 200 and response["headers"]["content-type"] == "application/json"
    assert body["prediction"] == int(expected.argmax()) and body["label"] == model.classes[int(expected.argmax())]
    assert body["probabilities"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert ("multiValueHeaders" in response) == (version == "v1")  # each format answers in its own shape


def test_lambda_loads_the_model_once_per_container_not_per_invocation(lambda_module, monkeypatch):
    app_module = lambda_module.fastapi_app
    loaded = app_module.ml["model"]  # by the init phase
    loads = []
    monkeypatch.setattr(app_module, "load_model", lambda *args: loads.append(args) or loaded)
    for version in ("v2", "v1"):  # two warm invocations
        status, _, body = invoke(lambda_module.handler, event(version))
        assert status == 200 and body["label"] == "virginica"
    assert loads == [], "an invocation loaded the model again"
    assert app_module.ml["model"] is loaded, "an invocation shut the app down, or replaced its model"


def test_lambda_init_fails_on_a_tampered_model(tmp_path):
    # lifespan="on": a model that fails its hash check fails the init phase, where Lambda reports it.
    model_file = tmp_path / "iris.joblib"
    model_file.write_bytes((REPO / "models" / "iris.joblib").read_bytes() + b"tampered")
    (tmp_path / "iris.json").write_text((REPO / "models" / "iris.json").read_text())
    init = subprocess.run([sys.executable, "-c", "from course import import_lesson; "
                           "import_lesson('05-deploy/lambda_handler.py')"],
                          env={**os.environ, "MODEL_PATH": str(model_file)}, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode != 0 and "ModelIntegrityError: Refusing to load" in init.stderr, init.stderr[-2000:]


@pytest.mark.parametrize("version", EVENTS)
def test_lambda_other_routes(handler, model, version):
    status, _, health = invoke(handler, event(version, "GET", "/health"))
    assert (status, health) == (200, {"status": "ok"})
    status, _, info = invoke(handler, event(version, "GET", "/model"))
    assert status == 200 and info["features"] == model.features
    status, _, batch = invoke(handler, event(version, path="/predict/batch", body={"instances": [ROW, ROW]}))
    assert status == 200 and len(batch["predictions"]) == 2
    status, _, _ = invoke(handler, event(version, "GET", "/nowhere"))
    assert status == 404


@pytest.mark.parametrize("version", EVENTS)
def test_lambda_base64_body(handler, version):
    # API Gateway base64-encodes bodies of "binary" media types; Mangum decodes them.
    status, _, body = invoke(handler, event(version, body=ROW, encode=True))
    assert status == 200 and body["label"] == "virginica"


@pytest.mark.parametrize("version", EVENTS)
@pytest.mark.parametrize("body, status, where", [
    ({k: v for k, v in ROW.items() if k != "petal_width"}, 422, "petal_width"),
    ({**ROW, "sepal_length": "long"}, 422, "sepal_length"),
    ({**ROW, "colour": "blue"}, 422, "colour"),
    ("{not json", 400, "not valid JSON"),
])
def test_lambda_bad_input_gets_a_4xx_naming_the_problem(handler, version, body, status, where):
    got, _, reply = invoke(handler, event(version, body=body))
    assert got == status
    detail = reply["detail"]
    assert where in (detail if isinstance(detail, str) else json.dumps([e["loc"] for e in detail]))


@pytest.mark.parametrize("version", EVENTS)
def test_lambda_wrong_content_type(handler, version):
    status, _, reply = invoke(handler, event(version, body="5.1,3.5,1.4,0.2", content_type="text/csv"))
    assert status == 415 and "application/json" in reply["detail"]


# ---- ECS -----------------------------------------------------------------------------------------

# RegisterTaskDefinition's fields (AWS API reference); anything else is a typo ECS would reject.
TASK_FIELDS = {"family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions", "volumes",
               "placementConstraints", "requiresCompatibilities", "cpu", "memory", "tags", "pidMode", "ipcMode",
               "proxyConfiguration", "inferenceAccelerators", "ephemeralStorage", "runtimePlatform",
               "enableFaultInjection"}
CONTAINER_FIELDS = {"name", "image", "repositoryCredentials", "cpu", "memory", "memoryReservation", "links",
                    "portMappings", "essential", "restartPolicy", "entryPoint", "command", "environment",
                    "environmentFiles", "mountPoints", "volumesFrom", "linuxParameters", "secrets", "dependsOn",
                    "startTimeout", "stopTimeout", "versionConsistency", "hostname", "user", "workingDirectory",
                    "disableNetworking", "privileged", "readonlyRootFilesystem", "dnsServers", "dnsSearchDomains",
                    "extraHosts", "dockerSecurityOptions", "interactive", "pseudoTerminal", "dockerLabels",
                    "ulimits", "logConfiguration", "healthCheck", "systemControls", "resourceRequirements",
                    "firelensConfiguration", "credentialSpecs"}
# Fargate's CPU units -> the memory sizes (MiB) it allows with them.
FARGATE = {256: {512, 1024, 2048}, 512: set(range(1024, 4097, 1024)), 1024: set(range(2048, 8193, 1024)),
           2048: set(range(4096, 16385, 1024)), 4096: set(range(8192, 30721, 1024)),
           8192: set(range(16384, 61441, 4096)), 16384: set(range(32768, 122881, 8192))}


def test_ecs_task_definition():
    task = json.loads((LESSON / "ecs" / "task-definition.json").read_text())
    assert set(task) <= TASK_FIELDS, set(task) - TASK_FIELDS
    assert task["family"] and task["containerDefinitions"]
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert int(task["memory"]) in FARGATE[int(task["cpu"])], "not a CPU/memory pair Fargate offers"
    volumes = {volume["name"] for volume in task.get("volumes", [])}
    (container,) = task["containerDefinitions"]
    assert set(container) <= CONTAINER_FIELDS, set(container) - CONTAINER_FIELDS
    spec, _ = image_spec(container["image"])
    env = {item["name"]: item["value"] for item in container["environment"]}
    assert env["HOST"] == "0.0.0.0"
    assert [m["containerPort"] for m in container["portMappings"]] == [int(env["PORT"])] == [spec.port]
    assert container["user"] == dockerfile_value(spec, "USER")
    assert container["readonlyRootFilesystem"] is True
    assert all(m["sourceVolume"] in volumes for m in container["mountPoints"])
    # The same health check the image declares, so ECS and `docker ps` agree on "healthy".
    healthcheck = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])", (REPO / spec.dockerfile).read_text(), re.S).group(1)
    assert container["healthCheck"]["command"] == ["CMD", *json.loads(healthcheck)]
    assert 2 <= container["stopTimeout"] <= 120  # Fargate's range; SIGKILL follows SIGTERM after it
