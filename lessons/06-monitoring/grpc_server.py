"""Lesson 06: lesson 03's gRPC server, with the same metrics as app.py, measured by a server interceptor.

    python lessons/06-monitoring/grpc_server.py   # gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:8001/metrics
                                                  # (env HOST, PORT, METRICS_PORT, MODEL_PATH, DRAIN_SECONDS)

Lesson 03's server.py, line for line (a test keeps them in step), with what this lesson adds marked "lesson 06".
An interceptor is gRPC's middleware: it wraps every method, so one class measures them all. Calls are labelled by
method ("/ModelService/Predict") and status code ("OK", "INVALID_ARGUMENT"), malformed requests included.
Prometheus scrapes over plain HTTP, so the metrics get a small HTTP server of their own, on METRICS_PORT.
model_pb2*.py are generated from protos/model.proto into this folder too, by `make protos`.
"""

import asyncio
import logging
import os
import signal
import time

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

import model_pb2
import model_pb2_grpc
import monitoring  # lesson 06: the metrics and the JSON log format, shared with app.py
from course.model import load_model

MODEL = load_model()  # MODEL_PATH, or the repo's trained model
MAX_BATCH = 1000
LIMIT = 1e6  # as in lessons 01 and 02: a million centimetres is no flower, yet float32 goes up to 3.4e38
# After SIGTERM: keep serving DRAIN_SECONDS while load balancers notice NOT_SERVING, then give the
# calls in progress GRACE_SECONDS to finish. Together well under docker stop's 10 s.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
GRACE_SECONDS = 5
SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name  # "ModelService"
log = logging.getLogger("model_server")  # lesson 06


class BadRequest(Exception):
    """The client's mistake, in words it can act on: RefuseBadRequests answers it INVALID_ARGUMENT."""


def check_row(features, where=""):
    """A row the model can use, or BadRequest saying what is wrong with it, in the REST lessons' words."""
    if len(features) != len(MODEL.features):
        raise BadRequest(f"{where}expected {len(MODEL.features)} features in this order: "
                         f"{', '.join(MODEL.features)}; got {len(features)}")
    for name, value in zip(MODEL.features, features):
        if not -LIMIT <= value <= LIMIT:  # False for NaN too
            raise BadRequest(f"{where}{name}: expected a number from {-LIMIT:,.0f} to {LIMIT:,.0f}, got {value}")
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
    monitoring.observe(rows, [reply.label for reply in replies])  # lesson 06: classes and out-of-range inputs
    return replies


class ModelService(model_pb2_grpc.ModelServiceServicer):
    async def Predict(self, request, context):
        return predict([check_row(request.features)])[0]

    async def PredictBatch(self, request, context):
        if not 1 <= len(request.instances) <= MAX_BATCH:
            raise BadRequest(f"a batch holds 1 to {MAX_BATCH} instances; got {len(request.instances)}")
        rows = [check_row(row.features, where=f"instances[{i}]: ") for i, row in enumerate(request.instances)]
        return model_pb2.PredictBatchReply(predictions=predict(rows))


class RefuseBadRequests(grpc.aio.ServerInterceptor):
    """Every mistake of the client is INVALID_ARGUMENT with a message: bytes that do not parse, and BadRequest.

    gRPC parses a request before the method runs, and answers bytes it cannot parse with INTERNAL
    "Exception deserializing request!", a server error; so methods get the raw bytes, parsed here.
    Any other exception is a bug of ours: gRPC logs it and answers UNKNOWN.
    """

    async def intercept_service(self, continuation, call_details):
        handler = await continuation(call_details)  # what gRPC would run for this method
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED) and streams (reflection, health's Watch)
        parse, method = handler.request_deserializer, handler.unary_unary
        message = parse.__self__.__name__  # parse is a message class's FromString: PredictRequest.FromString

        async def parse_then_call(data, context):
            try:
                return await method(parse(data), context)
            except DecodeError:
                details = f"the request is not a valid {message} (protobuf could not parse it)"
            except BadRequest as error:
                details = str(error)
            # A status and no reply: gRPC sends it once every interceptor is done. (`await context.abort()`
            # would send it at once, and the client could see it before lesson 06's metrics count it.)
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details(details)

        return grpc.unary_unary_rpc_method_handler(parse_then_call, response_serializer=handler.response_serializer)


class Metrics(grpc.aio.ServerInterceptor):
    """lesson 06: every call counted and timed, by method and status code."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)  # what gRPC would run for this method
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED) and streams (health's Watch) are not measured
        method, behaviour = handler_call_details.method, handler.unary_unary

        async def measured(request, context):
            code = grpc.StatusCode.UNKNOWN  # what the client gets when a method raises anything but abort()
            start = time.perf_counter()
            try:
                with monitoring.IN_PROGRESS.track_inprogress():
                    reply = await behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return reply
            except Exception:
                code = context.code() or code  # context.abort() (health's NOT_FOUND) sets the code, then raises
                raise
            finally:
                monitoring.REQUESTS.labels(method, code.name).inc()
                monitoring.LATENCY.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(measured, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


async def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "50051")
    metrics_port = int(os.environ.get("METRICS_PORT", "8001"))  # lesson 06
    monitoring.log_json()  # lesson 06
    # lesson 06: Metrics first, so it wraps RefuseBadRequests and counts refused requests, unparseable ones too.
    server = grpc.aio.server(interceptors=[Metrics(), RefuseBadRequests()])
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)

    # Health: load balancers, Kubernetes probes and course.server.grpc_ready ask this service.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):  # "" means "the server as a whole"
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    # Reflection: clients can ask the server which services and messages it has.
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    server.add_insecure_port(f"{host}:{port}")
    start_http_server(metrics_port, addr=host)  # lesson 06: GET /metrics, answered by a thread of its own
    await server.start()
    log.info(f"Serving {MODEL.metadata['name']} over gRPC on {host}:{port}, metrics on port {metrics_port}")

    async def shut_down(signum):
        log.info(f"{signum.name}: finishing in-flight calls, then stopping")
        await health_servicer.enter_graceful_shutdown()  # NOT_SERVING: load balancers send new calls elsewhere
        # While they notice, calls keep coming: serve them. stop() now would CANCEL those still queued
        # inside gRPC, a status clients do not retry (grpc/grpc#41785).
        await asyncio.sleep(DRAIN_SECONDS)
        await server.stop(GRACE_SECONDS)  # refuse new calls (UNAVAILABLE); running ones get GRACE_SECONDS

    stopping = set()  # the loop keeps only weak references to tasks

    def on_signal(signum):
        # The first signal stops gracefully; a second one (an impatient Ctrl+C) stops at once.
        stopping.add(asyncio.create_task(server.stop(0) if stopping else shut_down(signum)))

    for signum in (signal.SIGTERM, signal.SIGINT):  # docker stop and kubectl delete pod; Ctrl+C
        asyncio.get_running_loop().add_signal_handler(signum, on_signal, signum)
    await server.wait_for_termination()
    log.info("Stopped")


if __name__ == "__main__":
    asyncio.run(serve())
