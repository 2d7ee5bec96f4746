"""Lesson 06: lesson 03's gRPC server, with the same metrics as app.py, measured by a server interceptor.

    python lessons/06-monitoring/grpc_server.py   # gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:8001/metrics
                                                  # (env HOST, PORT, METRICS_PORT, MODEL_PATH)

An interceptor is gRPC's middleware: it wraps every method, so one class measures them all. Calls are
labelled by method ("/ModelService/Predict") and status code ("OK", "INVALID_ARGUMENT"), malformed
requests included. Prometheus scrapes over plain HTTP, so the metrics get a small HTTP server of their
own, on METRICS_PORT. Like lesson 03's, the server is an asyncio one (grpc.aio).
"""

import asyncio
import logging
import os
import signal
import sys
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from course import LESSONS, import_lesson

sys.path.insert(0, str(LESSONS / "03-grpc"))  # lesson 03's server does `import model_pb2`
lesson03 = import_lesson("03-grpc/server.py")
monitoring = import_lesson("06-monitoring/monitoring.py")
log = logging.getLogger("model_server")


class Metrics(grpc.aio.ServerInterceptor):
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


class ModelService(lesson03.ModelService):
    """Lesson 03's servicer; each reply also counts its classes and out-of-range inputs, as app.py does."""

    async def Predict(self, request, context):
        reply = await super().Predict(request, context)
        monitoring.observe([list(request.features)], [reply.label])
        return reply

    async def PredictBatch(self, request, context):
        reply = await super().PredictBatch(request, context)
        monitoring.observe([list(row.features) for row in request.instances], [p.label for p in reply.predictions])
        return reply


async def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "50051")
    metrics_port = int(os.environ.get("METRICS_PORT", "8001"))
    monitoring.log_json()
    # Metrics first: it wraps lesson 03's RefuseBadRequests, so refused requests are counted, unparseable ones too.
    server = grpc.aio.server(interceptors=[Metrics(), lesson03.RefuseBadRequests()])
    lesson03.model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    health_servicer = health.aio.HealthServicer()  # lesson 03 explains health, reflection and the drain
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", lesson03.SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (lesson03.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    server.add_insecure_port(f"{host}:{port}")
    start_http_server(metrics_port, addr=host)  # GET /metrics, answered by a thread of its own
    await server.start()
    log.info(f"Serving {monitoring.METADATA['name']} over gRPC on {host}:{port}, metrics on port {metrics_port}")

    async def shut_down(signum):
        log.info(f"{signum.name}: finishing in-flight calls, then stopping")
        await health_servicer.enter_graceful_shutdown()
        await asyncio.sleep(lesson03.DRAIN_SECONDS)
        await server.stop(lesson03.GRACE_SECONDS)

    stopping = set()

    def on_signal(signum):
        stopping.add(asyncio.create_task(server.stop(0) if stopping else shut_down(signum)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, on_signal, signum)
    await server.wait_for_termination()
    log.info("Stopped")


if __name__ == "__main__":
    asyncio.run(serve())
