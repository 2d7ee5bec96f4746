"""Lesson 03: the gRPC server as a real process, called over real channels on loopback.

Every expected prediction comes from the in-process model, fed the same float32 values the
wire carries. Exact error details are pinned: they are part of the contract a client reads.
"""

import math
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from sklearn.datasets import load_iris

from course import LESSONS, REPO, import_lesson
from course.server import ServerFailedToStart, grpc_ready, start_server

LESSON = LESSONS / "03-grpc"
SERVER = "lessons/03-grpc/server.py"
model_pb2 = import_lesson("03-grpc/model_pb2.py")
model_pb2_grpc = import_lesson("03-grpc/model_pb2_grpc.py")

FEATURES = "sepal_length, sepal_width, petal_length, petal_width"
ROWS = load_iris().data.tolist()  # the 150 iris flowers, shipped with scikit-learn


client = import_lesson("03-grpc/client.py")


def expected(model, rows):
    """What the in-process model says about `rows` after the float32 trip over the wire."""
    wire = np.asarray(rows, dtype=np.float32).astype(np.float64)
    probabilities = model.estimator.predict_proba(wire)
    return [(int(p.argmax()), model.classes[int(p.argmax())], p) for p in probabilities]


def assert_replies_match(model, replies, rows):
    assert len(replies) == len(rows)
    for reply, (index, label, probabilities) in zip(replies, expected(model, rows)):
        assert (reply.class_index, reply.label) == (index, label)
        assert reply.prediction == float(index)  # the deprecated field, still filled for old clients
        assert list(reply.probabilities) == pytest.approx(probabilities.tolist(), abs=1e-5)
        assert sum(reply.probabilities) == pytest.approx(1, abs=1e-5)


@pytest.fixture(scope="module")
def server():
    with start_server(SERVER, ready=grpc_ready) as running:
        yield running


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel):
    return model_pb2_grpc.ModelServiceStub(channel)


def test_predict_matches_the_in_process_model_on_every_iris_row(stub, model):
    replies = [client.predict(stub, row, timeout=5) for row in ROWS]
    assert_replies_match(model, replies, ROWS)
    assert {reply.label for reply in replies} == set(model.classes)


def test_batch_gives_the_same_replies_as_single_calls(stub, model):
    batch = client.predict_batch(stub, ROWS, timeout=5)
    singles = [client.predict(stub, row, timeout=5) for row in ROWS]
    assert_replies_match(model, batch, ROWS)
    for one, other in zip(batch, singles):
        assert (one.class_index, one.label, one.prediction) == (other.class_index, other.label, other.prediction)
        assert list(one.probabilities) == pytest.approx(list(other.probabilities), abs=1e-6)


def test_the_largest_allowed_batch_works(stub, model):
    rows = [ROWS[i % len(ROWS)] for i in range(1000)]
    assert_replies_match(model, client.predict_batch(stub, rows, timeout=10), rows)


def batch(*rows):
    return model_pb2.PredictBatchRequest(instances=[model_pb2.PredictRequest(features=row) for row in rows])


GOOD = [5.1, 3.5, 1.4, 0.2]
RANGE = "expected a number from -1,000,000 to 1,000,000"  # the same words as the REST lessons
BAD_REQUESTS = {
    "no features": ("Predict", model_pb2.PredictRequest(),
                    f"expected 4 features in this order: {FEATURES}; got 0"),
    "3 features": ("Predict", model_pb2.PredictRequest(features=[5.1, 3.5, 1.4]),
                   f"expected 4 features in this order: {FEATURES}; got 3"),
    "5 features": ("Predict", model_pb2.PredictRequest(features=GOOD + [1.0]),
                   f"expected 4 features in this order: {FEATURES}; got 5"),
    "NaN": ("Predict", model_pb2.PredictRequest(features=[5.1, math.nan, 1.4, 0.2]),
            f"sepal_width: {RANGE}, got nan"),
    "Infinity": ("Predict", model_pb2.PredictRequest(features=[5.1, 3.5, math.inf, 0.2]),
                 f"petal_length: {RANGE}, got inf"),
    "-Infinity": ("Predict", model_pb2.PredictRequest(features=[-math.inf, 3.5, 1.4, 0.2]),
                  f"sepal_length: {RANGE}, got -inf"),
    # Finite, and still no flower: the review's examples, once answered virginica and [0, 0, 1].
    "ten kilometres": ("Predict", model_pb2.PredictRequest(features=[1e7, 3.5, 1.4, 0.2]),
                       f"sepal_length: {RANGE}, got 10000000.0"),
    "the largest float32": ("Predict", model_pb2.PredictRequest(features=[3.4e38] * 4),
                            f"sepal_length: {RANGE}, got 3.3999999521443642e+38"),
    "just over the limit": ("Predict", model_pb2.PredictRequest(features=[5.1, 3.5, 1.4, -1_000_064.0]),
                            f"petal_width: {RANGE}, got -1000064.0"),
    "empty batch": ("PredictBatch", batch(), "a batch holds 1 to 1000 instances; got 0"),
    "oversized batch": ("PredictBatch", batch(*[GOOD] * 1001), "a batch holds 1 to 1000 instances; got 1001"),
    "short row in a batch": ("PredictBatch", batch(GOOD, GOOD, [1.0, 2.0, 3.0], GOOD),
                             f"instances[2]: expected 4 features in this order: {FEATURES}; got 3"),
    "NaN in a batch": ("PredictBatch", batch(*[GOOD] * 7, [5.1, 3.5, 1.4, math.nan]),
                       f"instances[7]: petal_width: {RANGE}, got nan"),
    "too large in a batch": ("PredictBatch", batch(GOOD, [5.1, 2e6, 1.4, 0.2]),
                             f"instances[1]: sepal_width: {RANGE}, got 2000000.0"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(stub, model, case):
    method, request, details = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request, timeout=5)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == details
    assert_replies_match(model, [client.predict(stub, GOOD, timeout=5)], [GOOD])


def test_a_message_over_the_4_mb_limit_is_refused_by_grpc_itself(stub, model):
    with pytest.raises(grpc.RpcError) as error:
        stub.Predict(model_pb2.PredictRequest(features=[1.0] * 1_100_000), timeout=5)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.value.details()
    assert_replies_match(model, [client.predict(stub, GOOD, timeout=5)], [GOOD])


@pytest.mark.parametrize("service", ["", "ModelService"])
def test_health_is_serving(channel, service):
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_of_an_unknown_service_is_not_found(channel):
    with pytest.raises(grpc.RpcError) as error:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="Nope"), timeout=5)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_services_and_the_contract(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    assert sorted(database.get_services()) == [
        "ModelService", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    pool = DescriptorPool(database)
    methods = pool.FindServiceByName("ModelService").methods
    assert [(m.name, m.input_type.name, m.output_type.name) for m in methods] == [
        ("Predict", "PredictRequest", "PredictReply"),
        ("PredictBatch", "PredictBatchRequest", "PredictBatchReply")]
    reply = pool.FindMessageTypeByName("PredictReply")
    assert {f.name: f.number for f in reply.fields} == {
        "prediction": 1, "label": 2, "probabilities": 3, "class_index": 4}
    assert reply.fields_by_name["prediction"].GetOptions().deprecated


def test_a_deadline_shorter_than_the_work_fails_and_the_server_keeps_serving(stub, model):
    rows = [ROWS[i % len(ROWS)] for i in range(1000)]  # takes the server well over 1 ms
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        client.predict_batch(stub, rows, timeout=0.001)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 1
    assert_replies_match(model, client.predict_batch(stub, rows, timeout=10), rows)


def test_a_deadline_ends_a_call_to_a_server_that_never_answers():
    # A socket that accepts connections and then says nothing: a hung server.
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        with grpc.insecure_channel(f"127.0.0.1:{hung.getsockname()[1]}") as channel:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                client.predict(model_pb2_grpc.ModelServiceStub(channel), GOOD, timeout=0.5)
            waited = time.monotonic() - started
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.45 < waited < 3


def test_sigterm_lets_every_call_in_flight_finish_then_exits_0(model):
    rows = [ROWS[i % len(ROWS)] for i in range(200)]  # a few ms of work per call, so they queue up
    request = batch(*rows)
    calls = 50
    results, finished_at = [None] * calls, [None] * calls
    all_started, first_done = threading.Barrier(calls + 1), threading.Event()
    health_seen = []

    with start_server(SERVER, ready=grpc_ready) as server, grpc.insecure_channel(server.address) as channel:
        stub, health = model_pb2_grpc.ModelServiceStub(channel), health_pb2_grpc.HealthStub(channel)
        stub.PredictBatch(request, timeout=5)  # connect first, so no call waits for the connection

        def call(i):
            all_started.wait()
            try:
                results[i] = stub.PredictBatch(request, timeout=20)
            except grpc.RpcError as error:
                results[i] = error.code()
            finished_at[i] = time.monotonic()
            first_done.set()

        def watch_health():
            for _ in range(100):  # bounded; the drain lasts 1 s
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service="ModelService"), timeout=2).status
                except grpc.RpcError as error:
                    health_seen.append(error.code().name)
                    return
                health_seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
                if health_seen[-1] == "NOT_SERVING":
                    return
                time.sleep(0.01)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(calls)]
        for thread in threads:
            thread.start()
        all_started.wait()
        assert first_done.wait(10)  # the server is busy with our calls now
        signalled_at = time.monotonic()
        server.signal(signal.SIGTERM)
        threads.append(threading.Thread(target=watch_health))
        threads[-1].start()
        for thread in threads:
            thread.join(20)
        exit_code = server.process.wait(15)

        assert Counter(type(r).__name__ for r in results) == {"PredictBatchReply": calls}, results
        for reply in results:
            assert_replies_match(model, reply.predictions, rows)
        # Not a test that cannot fail: most calls were still running or queued when SIGTERM came.
        assert sum(t > signalled_at for t in finished_at) >= calls // 2
        # Load balancers asking the health service were told to go elsewhere before it stopped.
        assert health_seen[-1] == "NOT_SERVING", health_seen
        assert exit_code == 0, server.log()
        assert "SIGTERM: finishing in-flight calls" in server.log()

        with pytest.raises(grpc.RpcError) as error:  # and then it is really gone
            client.predict(stub, GOOD, timeout=2)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_script_prints_the_model_answer(server, model):
    (index, label, probabilities), = expected(model, [client.EXAMPLE])
    shown = ", ".join(f"{p:.3f}" for p in probabilities)
    run = subprocess.run([sys.executable, str(LESSON / "client.py"), "--address", server.address],
                         capture_output=True, text=True, timeout=30)
    assert (run.returncode, run.stdout, run.stderr) == (
        0, f"class_index={index} label={label} probabilities=[{shown}]\n", "")


def test_client_script_reports_the_status_code_and_details(server):
    run = subprocess.run([sys.executable, str(LESSON / "client.py"), "--address", server.address, "1", "2", "3"],
                         capture_output=True, text=True, timeout=30)
    assert (run.returncode, run.stdout, run.stderr) == (
        1, "", f"INVALID_ARGUMENT: expected 4 features in this order: {FEATURES}; got 3\n")


SEED_PROTO = """
syntax = "proto3";

service ModelService {
  rpc Predict (PredictRequest) returns (PredictReply);
}

message PredictRequest {
  repeated float features = 1;
}

message PredictReply {
  float prediction = 1;
}
"""


def test_a_client_built_from_the_original_proto_still_works(server, model, tmp_path):
    (tmp_path / "model.proto").write_text(SEED_PROTO)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", str(tmp_path / "model.proto")], check=True)
    old_client = textwrap.dedent(f"""
        import grpc, model_pb2, model_pb2_grpc
        with grpc.insecure_channel({server.address!r}) as channel:
            stub = model_pb2_grpc.ModelServiceStub(channel)
            for row in {ROWS[::10]!r}:
                print(stub.Predict(model_pb2.PredictRequest(features=row), timeout=5).prediction)
    """)
    run = subprocess.run([sys.executable, "-c", old_client], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(float(index)) for index, _, _ in expected(model, ROWS[::10])]


def test_the_server_loads_the_model_from_model_path(tmp_path):
    with pytest.raises(ServerFailedToStart, match="missing.joblib does not exist"):
        start_server(SERVER, ready=grpc_ready, env={"MODEL_PATH": str(tmp_path / "missing.joblib")})


def test_committed_stubs_are_generated_from_the_current_proto(tmp_path):
    # The same command as `make protos`, into a temporary folder.
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iprotos", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", "protos/model.proto"],
                   cwd=REPO, check=True)
    for lesson in ["03-grpc", "06-monitoring", "10-security"]:
        for name in ["model_pb2.py", "model_pb2_grpc.py", "model_pb2.pyi"]:
            assert (tmp_path / name).read_bytes() == (LESSONS / lesson / name).read_bytes(), \
                f"lessons/{lesson}/{name} is out of date with protos/model.proto: run `make protos`"


def test_solution_predicts_any_number_of_rows_in_batches(stub, model):
    predict_many = import_lesson("solutions/03-grpc/batching.py").predict_many
    rows = [ROWS[i % len(ROWS)] for i in range(2500)]  # three calls: 1000 + 1000 + 500
    assert_replies_match(model, predict_many(stub, rows, timeout=10), rows)
    assert predict_many(stub, [], timeout=1) == []
    assert_replies_match(model, predict_many(stub, ROWS[:7], timeout=5, batch_size=3), ROWS[:7])
    with pytest.raises(grpc.RpcError) as error:
        predict_many(stub, rows, timeout=0.000001)
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
