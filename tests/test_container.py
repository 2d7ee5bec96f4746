"""Lesson 04: the images themselves, built and run for real.

With Docker when its daemon answers, else with Podman (build) and Buildah (run), daemonless; see
course/containers.py. The first run builds a base-image stand-in and the images (minutes);
later runs reuse .cache/containers (in the repository) and take seconds. On a machine with no
container engine at all, the tests that need one are skipped with a message saying what is
missing; the checks of the files themselves run everywhere.
"""

import os
import re
import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sklearn.datasets import load_iris

from course import REPO, import_lesson
from course import containers as engine_module
from course.server import start_server

LESSON = REPO / "lessons" / "04-docker"
REQUIREMENTS = {"Dockerfile": "requirements.txt", "grpc.Dockerfile": "requirements-grpc.txt"}
# Every Dockerfile the course builds (the exercise's worked answer too), relative to the repository.
DOCKERFILES = ["lessons/04-docker/Dockerfile", "lessons/04-docker/grpc.Dockerfile",
               "solutions/04-docker/fixed.Dockerfile"]
# The server each requirements file is for: what it imports must be installed.
SERVERS = {"requirements.txt": ["lessons/02-fastapi/app.py"], "requirements-grpc.txt": ["lessons/03-grpc/server.py"]}
# Imported inside lesson 02's onnxruntime_predict_proba, only when it starts with ENGINE=onnxruntime: the image runs the
# default engine, scikit-learn, and does without onnxruntime, onnx and skl2onnx (lesson 04's README says so).
ENGINE_ONLY = {"lessons/02-fastapi/app.py": {"numpy", "onnxruntime", "skl2onnx"}}
# What a container may take to answer after it is started (the lesson's target).
READY_WITHIN_SECONDS = 2.0
# The lesson's target for each image, in MB, measured as `docker images` does (uncompressed). On
# the debootstrap stand-in for python:3.11-slim (125 MB, like the real one) the images measure 345
# (HTTP) and 347 MB (gRPC).
SIZE_BUDGET_MB = {"http": 350, "grpc": 350}


IMAGES = engine_module.IMAGES


def pins(path):
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version.strip()
    return found


# ---- the files: these run on every machine ---------------------------------------------------------

@pytest.mark.parametrize("name", REQUIREMENTS.values())
def test_serving_pins_are_the_course_pins(name):
    course_pins = pins(REPO / "requirements.txt")
    serving = pins(LESSON / name)
    assert serving, f"{name} pins nothing"
    assert all(version for version in serving.values()), f"every line of {name} must pin with =="
    different = {pkg: (v, course_pins.get(pkg)) for pkg, v in serving.items() if course_pins.get(pkg) != v}
    assert not different, f"{name} disagrees with requirements.txt (serving, course): {different}"


def requirements_of(package):
    import importlib.metadata
    for line in importlib.metadata.distribution(package).requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            yield canonicalize_name(requirement.name)


def third_party_imports(path, when_loaded_only=False):
    """Top-level modules a file imports that are neither the standard library nor the repo's own; with
    when_loaded_only, only those imported as the file is loaded, not inside a function."""
    text = (REPO / path).read_text()
    indent = "" if when_loaded_only else r"\s*"
    modules = set(re.findall(rf"^{indent}(?:from|import)\s+([A-Za-z_][\w]*)", text, re.M))
    local = {p.stem for p in (REPO / path).parent.glob("*.py")} | {"course"}
    return {m for m in modules if m not in sys.stdlib_module_names and m not in local}


@pytest.mark.parametrize("name", REQUIREMENTS.values())
def test_serving_requirements_are_complete_and_nothing_more(name):
    import importlib.metadata
    serving = set(pins(LESSON / name))
    # What the servers (and course.model, which loads the model with joblib and scikit-learn) import.
    distributions = importlib.metadata.packages_distributions()
    needed = {"scikit-learn", "joblib"}
    for server in SERVERS[name]:
        engine_only = ENGINE_ONLY.get(server, set())
        top_level = third_party_imports(server, when_loaded_only=True)
        assert not top_level & engine_only, f"{server} imports {top_level & engine_only} at start, for every engine"
        for module in third_party_imports(server) - engine_only:
            needed |= {canonicalize_name(d) for d in distributions.get(module, [module])}
    assert needed <= serving, f"{name} lacks {sorted(needed - serving)}, which the server imports"
    # The image installs with --no-deps: everything those need must be pinned too, and only that.
    closure, todo = set(), list(needed)
    while todo:
        package = todo.pop()
        if package not in closure:
            closure.add(package)
            todo += requirements_of(package)
    assert closure == serving, (f"{name}: missing {sorted(closure - serving)}, "
                                f"not needed {sorted(serving - closure)}")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = REPO / ".venv" / "bin" / "hadolint"
    if not hadolint.exists():
        hadolint = "hadolint"
    result = subprocess.run([str(hadolint), str(REPO / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    # Any rule switched off must say why on the line above.
    lines = (REPO / dockerfile).read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert number and lines[number - 1].startswith("#") and "hadolint" not in lines[number - 1]


@pytest.mark.parametrize("dockerfile", REQUIREMENTS)
def test_dockerfile_essentials(dockerfile):
    text = (LESSON / dockerfile).read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(image == "python:3.11-slim" for image in froms)
    instructions = [line.split()[0] for line in text.splitlines() if line and not line[0].isspace()
                    and not line.startswith("#")]
    # The pinned requirements are installed before any code is copied in (the cached layer).
    first_code_copy = next(i for i, line in enumerate(text.splitlines()) if line.startswith("COPY course/"))
    install = next(i for i, line in enumerate(text.splitlines()) if "pip install" in line)
    assert install < first_code_copy
    assert re.search(r"^USER\s+10001:10001$", text, re.M), "a numeric non-root USER"
    assert "HEALTHCHECK" in instructions and "EXPOSE" in instructions
    assert re.search(r"^CMD \[", text, re.M), "CMD in exec form, so the server is PID 1 and gets SIGTERM"
    assert re.search(r"HOST=0\.0\.0\.0", text), "listen on every interface inside the container"


def test_dockerignore_sends_only_what_the_dockerfiles_copy():
    context = {path.as_posix() for path in engine_module.build_context()}
    # Nothing of the virtual environment, notebooks, caches, git, or compiled files.
    leaked = [p for p in context if p.startswith((".venv/", ".git/", ".cache/")) or p.endswith((".ipynb", ".pyc"))
              or "__pycache__" in p]
    assert not leaked, leaked
    # ...but everything the Dockerfiles COPY from the context is there.
    for dockerfile in DOCKERFILES:
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    found = [p for p in context if p == source or p.startswith(source.rstrip("/") + "/")]
                    assert found, f"{dockerfile} copies {source}, which .dockerignore keeps out"


# What `make image` says when a build fails for want of a network: one line, naming what needed it. The outputs
# below were captured offline (in a network namespace): pip 23 (Debian bookworm's, in the stand-in image), pip 25,
# Podman unable to pull the base image, debootstrap unable to reach its mirror; Docker's is BuildKit's wording.
PIP_23 = ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
          "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f7c5126ed90>: "
          "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': "
          "/simple/scikit-learn/\nERROR: Could not find a version that satisfies the requirement scikit-learn==1.9.1 "
          "(from versions: none)\nERROR: No matching distribution found for scikit-learn==1.9.1\n")
PIP_25 = ("WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
          "broken by 'NameResolutionError(\"HTTPSConnection(host='pypi.org', port=443): Failed to resolve 'pypi.org' "
          "([Errno -3] Temporary failure in name resolution)\")': /simple/annotated-types/\n"
          "ERROR: No matching distribution found for annotated-types==0.7.0\n")
PODMAN_PULL = ('Error: initializing source docker://python:3.11-slim: pinging container registry registry-1.docker.io: '
               'Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on 10.255.255.53:53: '
               'dial udp 10.255.255.53:53: connect: network is unreachable\n')
DOCKER_PULL = ('ERROR: failed to solve: python:3.11-slim: failed to resolve source metadata for '
               'docker.io/library/python:3.11-slim: failed to do request: Head '
               '"https://registry-1.docker.io/v2/library/python/manifests/3.11-slim": dial tcp: lookup '
               'registry-1.docker.io on 192.168.65.7:53: no such host\n')
NEEDS = "building the image needs network for "


@pytest.mark.parametrize("output, said", [
    (PIP_23, NEEDS + "pip to install lessons/04-docker/requirements.txt (a package index): pypi.org: "
                     "the name does not resolve"),
    (PIP_25, NEEDS + "pip to install lessons/04-docker/requirements.txt (a package index): pypi.org: "
                     "the name does not resolve"),
    (DOCKER_PULL, NEEDS + "the base image python:3.11-slim (Docker Hub): registry-1.docker.io: "
                          "the name does not resolve"),
    (PODMAN_PULL, NEEDS + "the base image python:3.11-slim (Docker Hub): registry-1.docker.io: "
                          "network is unreachable"),
    # Failures that are not the network's are shown as they are, with the build's output.
    ("ERROR: No matching distribution found for fastapi==999\n", None),
    ("Error: building at STEP \"RUN python lessons/04-docker/start_once.py http lessons/02-fastapi/app.py\": "
     "exit status 1\n", None),
], ids=["pip 23", "pip 25", "docker pull", "podman pull", "a wrong pin", "a server that fails"])
def test_an_offline_build_says_what_needed_the_network_in_one_line(output, said, monkeypatch):
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    assert engine_module.network_problem(output, IMAGES["http"]) == said


NOTEBOOK = REPO / "lessons/04-docker/notebook.ipynb"


def notebook_docker_commands():
    """Every docker command lesson 04's notebook shows or runs: the session in its markdown, and the commands its
    cells run where a Docker daemon answers (f-strings, given example values)."""
    import json
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    commands = set()
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            commands |= {line.split("  #")[0].strip() for line in source.splitlines() if line.startswith("docker ")}
        else:
            for command in re.findall(r'f?"(docker [^"]+)"', source):
                command = command.split("   # no daemon")[0]
                example = {"name": "iris", "port": 8000, "settings": " --env PYTHONPYCACHEPREFIX=/no-bytecode-here"}
                command = command.format(**example) \
                    if "{name}" in command or "{port}" in command else command
                commands.add(command.replace("\\t", "\t"))
    return sorted(commands)


def test_the_notebooks_docker_commands_are_valid_docker_commands(tmp_path):
    """This machine may have no Docker daemon, and then the notebook runs its fallback. The commands it shows a
    learner, and runs where a daemon answers, are still checked by the real docker CLI: it parses every flag and
    argument before it connects, so pointed at a daemon that does not exist, a well-formed command fails only on
    the connection, and a malformed one on its syntax."""
    import shutil
    if not shutil.which("docker"):
        pytest.skip("the docker CLI is not installed, which checks lesson 04's docker commands: install Docker "
                    "(https://docs.docker.com/get-docker/; Debian/Ubuntu: apt-get install docker.io)")
    commands = notebook_docker_commands()
    assert {"build", "run", "logs", "stop", "rm", "history"} <= {c.split()[1] for c in commands}, commands
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-daemon.sock", "DOCKER_CONFIG": str(tmp_path)}
    for command in commands:
        result = subprocess.run(shlex.split(command), cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        said = result.stdout + result.stderr
        assert result.returncode != 0 and re.search(r"Cannot connect to the Docker daemon|failed to connect|"
                                                    r"error during connect|no such file or directory", said), \
            f"{command!r} did not reach the connection step:\n{said}"


def test_debootstraps_offline_failure_names_the_mirror():
    said = engine_module.network_cause("I: Retrieving Release \nE: Failed getting release file "
                                       "http://deb.debian.org/debian/dists/bookworm/Release\n")
    assert said == "deb.debian.org: debootstrap cannot reach the Debian mirror"


# ---- the images: these need Docker, or Podman + Buildah -----------------------------------------

@pytest.fixture(scope="module")
def engine():
    try:
        return engine_module.detect()
    except engine_module.EngineMissing as missing:
        pytest.skip(str(missing))


def build(engine, spec):
    """engine.build, skipping (with its one line) where the build needs a network this machine does not have:
    the first build downloads the base image and the packages; later ones reuse the cache and work offline."""
    try:
        return engine.build(spec)
    except engine_module.NeedsNetwork as offline:
        pytest.skip(str(offline))


@pytest.fixture(scope="module")
def built(engine):
    """Build both images once per test run (cached layers make a rebuild take seconds)."""
    if not (REPO / "models" / "iris.joblib").exists():
        pytest.fail("no trained model to put in the image: run `make model` first")
    results = {}
    for kind, spec in IMAGES.items():
        seconds, log = build(engine, spec)
        results[kind] = {"seconds": seconds, "log": log, **engine.inspect(spec.tag)}
    return results


@pytest.fixture(scope="module")
def api(engine, built):
    container = engine.start(IMAGES["http"])
    yield container
    container.stop()


@pytest.fixture(scope="module")
def grpc_server(engine, built):
    container = engine.start(IMAGES["grpc"])
    yield container
    container.stop()


@pytest.mark.parametrize("kind", IMAGES)
def test_image_size_is_within_budget(built, kind):
    size_mb = built[kind]["size"] / 1e6
    assert size_mb <= SIZE_BUDGET_MB[kind], f"{IMAGES[kind].tag} is {size_mb:.0f} MB"


@pytest.mark.parametrize("kind", IMAGES)
def test_image_config(built, kind):
    config = built[kind]["config"]
    spec = IMAGES[kind]
    assert config["User"] == "10001:10001"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == str(spec.port)
    assert env["MODEL_PATH"] == "/app/models/iris.joblib"
    assert f"{spec.port}/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][:2] == ["CMD", "python"]
    server = "lessons/02-fastapi/app.py" if kind == "http" else "lessons/03-grpc/server.py"
    assert config["Cmd"] == ["python", server]


def test_container_answers_health_quickly(engine, api):
    assert requests.get(api.url + "/health", timeout=5).json() == {"status": "ok"}
    # Timed on a second start: the first one after a build also reads the image from disk.
    with engine.start(IMAGES["http"]) as again:
        inside = again.ready_after
    # Most of a start is Python importing the libraries, which a busy machine slows down: so the
    # same server, started outside any container right now, is the yardstick when it is slow too.
    started = time.monotonic()
    with start_server("lessons/02-fastapi/app.py"):
        outside = time.monotonic() - started
    limit = max(READY_WITHIN_SECONDS, outside + 0.75)
    assert inside <= limit, (f"the container took {inside:.2f} s to answer /health; the target is "
                             f"{READY_WITHIN_SECONDS} s (outside a container: {outside:.2f} s)")


def iris_rows(features):
    return [dict(zip(features, map(float, values))) for values in load_iris().data]


def test_predictions_match_the_in_process_model(api, model):
    rows = iris_rows(model.features)
    expected = model.estimator.predict_proba([[row[f] for f in model.features] for row in rows])
    for row, probabilities in list(zip(rows, expected))[::15]:
        reply = requests.post(api.url + "/predict", json=row, timeout=5).json()
        assert reply["prediction"] == int(probabilities.argmax())
        assert reply["label"] == model.classes[int(probabilities.argmax())]
        assert reply["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-9)
    batch = requests.post(api.url + "/predict/batch", json={"instances": rows}, timeout=10).json()["predictions"]
    assert [p["prediction"] for p in batch] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in batch], expected, rtol=0, atol=1e-9)


def test_bad_input_gets_a_4xx_naming_the_field(api):
    row = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}
    response = requests.post(api.url + "/predict", json=row, timeout=5)
    assert response.status_code == 422
    assert response.json()["detail"].startswith("petal_width: missing")  # lesson 02's one sentence
    response = requests.post(api.url + "/predict", data="5.1,3.5", headers={"Content-Type": "text/csv"}, timeout=5)
    assert response.status_code == 415 and "application/json" in response.json()["detail"]


def test_the_model_in_the_image_is_the_trained_one(api, model):
    info = requests.get(api.url + "/model", timeout=5).json()
    assert {k: info[k] for k in ("name", "version", "features", "classes")} == {
        k: model.metadata[k] for k in ("name", "version", "features", "classes")}
    result = api.exec(["python", "-c", "from course.model import sha256_of; print(sha256_of('models/iris.joblib'))"])
    assert result.stdout.strip() == model.metadata["sha256"], result.stderr


def test_a_tampered_model_is_refused_at_start(api):
    # A copy of the model with one byte appended, then the image's own server pointed at it.
    script = ("cp models/iris.joblib models/iris.json /tmp/ && printf x >> /tmp/iris.joblib "
              "&& MODEL_PATH=/tmp/iris.joblib exec python lessons/02-fastapi/app.py")
    result = api.exec(["sh", "-c", script], env={"PORT": str(engine_module.free_port())}, timeout=60)
    assert result.returncode != 0
    assert "Refusing to load /tmp/iris.joblib: its sha256 is" in result.stdout + result.stderr


def test_the_server_runs_as_a_non_root_user(api):
    assert api.server_uid() == 10001


def test_the_healthcheck_command_works(api, built):
    command = built["http"]["config"]["Healthcheck"]["Test"][1:]
    assert api.exec(command).returncode == 0
    nobody_there = api.exec(command, env={"PORT": str(engine_module.free_port())})
    assert nobody_there.returncode == 1


def test_it_listens_on_the_port_it_is_given_like_cloud_run_requires(api):
    # Cloud Run (and Heroku, and others) choose the port and pass it in $PORT; the engine started
    # this container with a random free one, not the image's 8000.
    assert api.port != 8000
    assert f"Uvicorn running on http://0.0.0.0:{api.port}" in api.logs()


def test_the_image_holds_only_what_the_server_needs(api):
    listing = api.exec(["find", "/app", "-type", "f", "-not", "-path", "*/__pycache__/*"]).stdout.split()
    files = sorted(path.removeprefix("/app/") for path in listing)
    assert files == ["course/__init__.py", "course/errors.py", "course/model.py",
                     "lessons/02-fastapi/app.py", "lessons/04-docker/healthcheck.py",
                     "lessons/04-docker/start_once.py", "models/iris.joblib", "models/iris.json"]
    no_pip = api.exec(["python", "-m", "pip", "--version"])
    assert no_pip.returncode != 0, "pip is left in the runtime image"


def call_grpc(address, rows):
    """PredictBatch on these rows, and one bad Predict; returns (reply, the bad call's error)."""
    import grpc
    model_pb2 = import_lesson("03-grpc/model_pb2.py")
    model_pb2_grpc = import_lesson("03-grpc/model_pb2_grpc.py")

    with grpc.insecure_channel(address) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        reply = stub.PredictBatch(model_pb2.PredictBatchRequest(
            instances=[model_pb2.PredictRequest(features=row) for row in rows]), timeout=10)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Predict(model_pb2.PredictRequest(features=[1.0, 2.0]), timeout=5)
    return reply, bad.value


@pytest.mark.parametrize("kind", IMAGES)
def test_the_server_compiles_nothing_when_it_starts(engine, built, kind, model):
    # start_once.py left bytecode in the image for every module the server imports, and only for
    # those. PYTHONVERBOSE makes Python log each import: "code object from '<file>.pyc'" when it
    # used bytecode, "code object from <file>.py" when it had to compile the source.
    with engine.start(IMAGES[kind], env={"PYTHONVERBOSE": "1"}) as container:
        rows = iris_rows(model.features)[:3]
        if kind == "http":
            requests.post(container.url + "/predict", json=rows[0], timeout=5).raise_for_status()
            requests.post(container.url + "/predict/batch", json={"instances": rows}, timeout=5).raise_for_status()
            assert requests.post(container.url + "/predict", json={}, timeout=5).status_code == 422
        else:
            call_grpc(container.address, [list(row.values()) for row in rows])
        log = container.logs()
    from_bytecode = re.findall(r"^# code object from '(.+)'$", log, re.M)
    compiled = re.findall(r"^# code object from ([^'].+)$", log, re.M)
    assert len(from_bytecode) > 500, "the server did not start, or PYTHONVERBOSE did not reach it"
    assert compiled == [], f"{len(compiled)} modules compiled at every start: {compiled[:5]}"


def test_grpc_image_serves_predictions(grpc_server, model):
    import grpc

    rows = [[float(v) for v in values] for values in load_iris().data[::10]]
    expected = model.estimator.predict_proba(rows)
    reply, bad = call_grpc(grpc_server.address, rows)
    assert [p.class_index for p in reply.predictions] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([list(p.probabilities) for p in reply.predictions], expected, rtol=0, atol=1e-6)
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_server.server_uid() == 10001
    assert grpc_server.exec(["python", "lessons/04-docker/healthcheck.py", "grpc"]).returncode == 0


def test_stopping_the_container_lets_the_server_finish(engine, built):
    # `docker stop` sends SIGTERM and waits; the server must shut down cleanly well within the wait.
    container = engine.start(IMAGES["http"])
    started = time.monotonic()
    code = container.stop(grace=10)
    assert time.monotonic() - started < 8, "the server ignored SIGTERM and had to be killed"
    assert "Finished server process" in container.logs()
    if isinstance(container, engine_module.BuildahContainer):  # its log was a file: kept in memory, the file gone
        assert not container.log_path.exists()
    # 0 as PID 1 under Docker; 143 (128 + SIGTERM) where, as under Buildah, it is not PID 1 and
    # uvicorn re-raises the signal after its graceful shutdown. Never 137: that is a SIGKILL.
    assert code in (0, 143), container.logs()


def test_the_exercise_answer_builds_and_serves(engine, built, model):
    answer = engine_module.ImageSpec("http", "iris-api:exercise", "solutions/04-docker/fixed.Dockerfile", 8000)
    build(engine, answer)  # seconds: it shares the lesson image's cached dependency layer
    with engine.start(answer) as container:
        row = dict(zip(model.features, [6.0, 2.7, 5.1, 1.6]))
        expected = model.estimator.predict_proba([list(row.values())])[0]
        reply = requests.post(container.url + "/predict", json=row, timeout=5).json()
        assert reply["probabilities"] == pytest.approx(expected.tolist(), abs=1e-9)
        assert container.server_uid() == 10001
