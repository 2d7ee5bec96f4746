"""Lesson 07: a Java client, built from protos/model.proto with Debian's gRPC packages, talks to the
Python gRPC server of lesson 03 over a real channel and gets the in-process model's answer.

Needs a JDK, protoc, grpc_java_plugin and the gRPC jars (tools/java-client.sh check);
without them the tests skip and name the Debian packages to install.
"""

import subprocess

import pytest
from sklearn.datasets import load_iris

from course import REPO
from course.server import free_port, grpc_ready, start_server

BUILD_SH = REPO / "tools/java-client.sh"
INVALID_ARGUMENT, DEADLINE_EXCEEDED, UNAVAILABLE = 3, 4, 14  # gRPC status numbers = the exit codes

IRIS = load_iris().data
# One flower of each kind, and the rows the model is least sure about (its mistakes live there).
ROWS = {"setosa-0": IRIS[0], "versicolor-50": IRIS[50], "virginica-100": IRIS[100],
        "borderline-77": IRIS[77], "borderline-83": IRIS[83]}


def run(*command, check=False, **options):
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120,
                          check=check, **options)


# What each Debian package of tools/java-client.sh's list provides, in words that hold on any system.
TOOL_PACKAGES = {"default-jdk-headless": "java and javac (a JDK)", "protobuf-compiler": "protoc",
                 "protobuf-compiler-grpc-java-plugin": "grpc_java_plugin (protoc's grpc-java plugin)"}


def skip_reason(check_stderr):
    """tools/java-client.sh check's 'missing Debian packages: ...' as one line: what is missing, then what to install."""
    packages = check_stderr.split("missing Debian packages:", 1)[1].splitlines()[0].split()
    missing = [TOOL_PACKAGES[p] for p in packages if p in TOOL_PACKAGES]
    if any(p not in TOOL_PACKAGES for p in packages):
        missing.append("the gRPC Java jars")
    return (f"{', '.join(missing)} {'is' if missing == ['protoc'] else 'are'} not installed, which the Java client "
            f"needs: install them (Debian/Ubuntu: apt-get install {' '.join(packages)}; elsewhere: a JDK, protoc, "
            "protoc-gen-grpc-java and the grpc-java jars, in the folder JAVA_JARS names: see "
            "tools/java-client.sh)")


@pytest.fixture(scope="module")
def java_client():
    missing = run("bash", BUILD_SH, "check")
    if missing.returncode == 3:
        pytest.skip(skip_reason(missing.stderr))
    build = run("bash", BUILD_SH, "build")
    assert build.returncode == 0, build.stdout + build.stderr

    def predict(address, *features, timeout=10):
        return run("bash", BUILD_SH, "run", "--address", address, "--timeout", timeout, *features)
    return predict


@pytest.fixture(scope="module")
def grpc_server():
    with start_server("lessons/03-grpc/server.py", ready=grpc_ready) as server:
        yield server


def parse(line):
    """'label=setosa class_index=0 probabilities=0.97,0.02,1.0E-6' -> dict."""
    fields = dict(part.split("=", 1) for part in line.split())
    return {"label": fields["label"], "class_index": int(fields["class_index"]),
            "probabilities": [float(p) for p in fields["probabilities"].split(",")]}


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_java_client_gets_the_models_answer(java_client, grpc_server, model, row):
    result = java_client(grpc_server.address, *row)
    assert result.returncode == 0, result.stderr

    expected = model.estimator.predict_proba([row])[0]
    best = int(expected.argmax())
    answer = parse(result.stdout.strip())
    assert answer["label"] == model.classes[best]
    assert answer["class_index"] == best
    # float on the wire (32 bits), float64 in-process: equal to float32 precision.
    assert answer["probabilities"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_wrong_number_of_features_is_invalid_argument(java_client, grpc_server):
    result = java_client(grpc_server.address, 5.1, 3.5, 1.4)
    assert result.returncode == INVALID_ARGUMENT, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "4 features" in result.stderr  # the server's message reaches the Java side


def test_the_deadline_is_sent(java_client, grpc_server):
    # 1 ms cannot even cover connecting from a fresh JVM: the call must end with DEADLINE_EXCEEDED.
    result = java_client(grpc_server.address, 5.1, 3.5, 1.4, 0.2, timeout=0.001)
    assert result.returncode == DEADLINE_EXCEEDED, result.stdout + result.stderr
    assert result.stderr.startswith("error: DEADLINE_EXCEEDED: ")


def test_no_server_is_unavailable(java_client):
    result = java_client(f"127.0.0.1:{free_port()}", 5.1, 3.5, 1.4, 0.2)
    assert result.returncode == UNAVAILABLE, result.stdout + result.stderr
    assert result.stderr.startswith("error: UNAVAILABLE: ")


def test_check_names_the_missing_debian_packages(tmp_path):
    # An empty jar folder stands for a machine without the Java gRPC libraries.
    result = run("bash", BUILD_SH, "check", env={"PATH": "/usr/bin:/bin", "JAVA_JARS": tmp_path})
    assert result.returncode == 3
    assert "missing Debian packages:" in result.stderr
    for package in ("libgrpc-java", "libprotobuf-java", "libnetty-java", "libperfmark-java",
                    "libguava-java", "libgeronimo-annotation-1.3-spec-java"):
        assert package in result.stderr
    # ...and the skip that follows says it in one line: what is missing, then what to install.
    reason = skip_reason(result.stderr)
    assert ("the gRPC Java jars are not installed, which the Java client needs: install them (Debian/Ubuntu: "
            "apt-get install ") in reason and "\n" not in reason
