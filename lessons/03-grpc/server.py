"""The course model behind gRPC: the contract is protos/model.proto, not a URL and a JSON shape.

    python lessons/03-grpc/server.py      # listens on 127.0.0.1:50051 (env PORT, HOST, MODEL_PATH)
    python lessons/03-grpc/client.py      # in a second terminal

model_pb2.py and model_pb2_grpc.py are generated from the .proto by `make protos`; never edit them.
Besides ModelService the server runs two standard services every gRPC tool understands:
health checking (grpc.health.v1) and reflection (so grpcurl can list and call the methods).
"""

import math
import os
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import model_pb2
import model_pb2_grpc
from course.model import load_model

MODEL = load_model()  # MODEL_PATH, or the repo's trained model
MAX_BATCH = 1000
# After SIGTERM: keep serving DRAIN_SECONDS (calls already sent get picked up), then give the
# calls in progress GRACE_SECONDS to finish. Together well under docker stop's 10 s.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
GRACE_SECONDS = 5
SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name  # "ModelService"


def check_row(features, where=""):
    """A row the model can use, or ValueError saying what is wrong with it."""
    if len(features) != len(MODEL.features):
        raise ValueError(f"{where}expected {len(MODEL.features)} features in this order: "
                         f"{', '.join(MODEL.features)}; got {len(features)}")
    for name, value in zip(MODEL.features, features):
        if not math.isfinite(value):
            raise ValueError(f"{where}feature {name} is {value}; values must be finite numbers")
    return list(features)


def predict(rows):
    replies = []
    for probabilities in MODEL.estimator.predict_proba(rows):
        best = int(probabilities.argmax())
        replies.append(model_pb2.PredictReply(
            class_index=best,
            label=MODEL.classes[best],
            probabilities=probabilities.tolist(),
            prediction=best,  # deprecated float field, still filled: old clients read only this one
        ))
    return replies


class ModelService(model_pb2_grpc.ModelServiceServicer):
    def Predict(self, request, context):
        try:
            row = check_row(request.features)
        except ValueError as error:
            # abort() ends the call with this status; a bare exception would reach the client as UNKNOWN.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return predict([row])[0]

    def PredictBatch(self, request, context):
        count = len(request.instances)
        if not 1 <= count <= MAX_BATCH:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"a batch holds 1 to {MAX_BATCH} instances; got {count}")
        try:
            rows = [check_row(instance.features, where=f"instances[{i}]: ")
                    for i, instance in enumerate(request.instances)]
        except ValueError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return model_pb2.PredictBatchReply(predictions=predict(rows))


def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "50051")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10))
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)

    # Health: load balancers, Kubernetes probes and course.server.grpc_ready ask this service.
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):  # "" means "the server as a whole"
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    # Reflection: clients can ask the server which services and messages it has.
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    server.add_insecure_port(f"{host}:{port}")
    server.start()
    print(f"Serving {MODEL.metadata['name']} over gRPC on {host}:{port}", flush=True)

    def shut_down(signum, frame):
        # 1. Health says NOT_SERVING, so load balancers stop routing new calls here.
        # 2. Drain: calls already sent may still wait in gRPC's queue for a handler, and stop()
        #    would cancel those (grpc/grpc#41785), so keep picking them up for DRAIN_SECONDS.
        # 3. stop(): refuse new calls, give running ones GRACE_SECONDS; then wait_for_termination() returns.
        print(f"{signal.Signals(signum).name}: finishing in-flight calls, then stopping", flush=True)
        health_servicer.enter_graceful_shutdown()
        threading.Timer(DRAIN_SECONDS, server.stop, args=(GRACE_SECONDS,)).start()

    signal.signal(signal.SIGTERM, shut_down)  # docker stop, kubectl delete pod
    signal.signal(signal.SIGINT, shut_down)   # Ctrl+C
    server.wait_for_termination()
    print("Stopped", flush=True)


if __name__ == "__main__":
    serve()
