"""Lesson 06: lesson 03's gRPC server, with the same metrics as app.py, measured by a server interceptor.

    python lessons/06-monitoring/grpc_server.py   # gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:8001/metrics
                                                  # (env HOST, PORT, METRICS_PORT, MODEL_PATH)

An interceptor is gRPC's middleware: it wraps every method, so one class measures them all. Calls are
labelled by method ("/ModelService/Predict") and status code ("OK", "INVALID_ARGUMENT"). Prometheus
scrapes over plain HTTP, so the metrics get a small HTTP server of their own, on METRICS_PORT.
"""

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from course import LESSONS, import_lesson

sys.path.insert(0, str(LESSONS / "03-grpc"))  # lesson 03's server does `import model_pb2`
lesson03 = import_lesson("03-grpc/server.py")
monitoring = import_lesson("06-monitoring/monitoring.py")
log = logging.getLogger("model_server")


class Metrics(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)  # what gRPC would run for this method
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED) and streams (health's Watch) are not measured
        method, behaviour = handler_call_details.method, handler.unary_unary

        def measured(request, context):
            code = grpc.StatusCode.UNKNOWN  # what the client gets when a method raises anything but abort()
            start = time.perf_counter()
            try:
                with monitoring.IN_PROGRESS.track_inprogress():
                    reply = behaviour(request, context)
                code = context.code() or grpc.StatusCode.OK
                return reply
            except Exception:
                code = context.code() or code  # context.abort() sets the code, then raises
                raise
            finally:
                monitoring.REQUESTS.labels(method, code.name).inc()
                monitoring.LATENCY.labels(method).observe(time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(measured, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


class ModelService(lesson03.ModelService):
    """Lesson 03's servicer; each reply also counts its classes and out-of-range inputs, as app.py does."""

    def Predict(self, request, context):
        reply = super().Predict(request, context)
        monitoring.observe([list(request.features)], [reply.label])
        return reply

    def PredictBatch(self, request, context):
        reply = super().PredictBatch(request, context)
        monitoring.observe([list(row.features) for row in request.instances], [p.label for p in reply.predictions])
        return reply


def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "50051")
    metrics_port = int(os.environ.get("METRICS_PORT", "8001"))
    monitoring.log_json()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=10), interceptors=[Metrics()])
    lesson03.model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    health_servicer = health.HealthServicer()  # lesson 03 explains health, reflection and the drain
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", lesson03.SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{host}:{port}")
    start_http_server(metrics_port, addr=host)  # GET /metrics, answered by a thread of its own
    server.start()
    log.info(f"Serving {monitoring.METADATA['name']} over gRPC on {host}:{port}, metrics on port {metrics_port}")

    def shut_down(signum, frame):
        log.info(f"{signal.Signals(signum).name}: finishing in-flight calls, then stopping")
        health_servicer.enter_graceful_shutdown()
        threading.Timer(lesson03.DRAIN_SECONDS, server.stop, args=(lesson03.GRACE_SECONDS,)).start()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    server.wait_for_termination()
    log.info("Stopped")


if __name__ == "__main__":
    serve()
