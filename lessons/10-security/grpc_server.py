"""Lesson 10: lesson 03's gRPC server, secured: an API key in metadata, a rate limit per key, TLS or mutual TLS.

    API_KEYS=<key1>,<key2> python lessons/10-security/grpc_server.py    # plaintext: on loopback only
    # TLS: add TLS_CERT=server.pem TLS_KEY=server.key; mutual TLS: and TLS_CLIENT_CA=ca.pem
    python lessons/10-security/client.py --api-key <key1>              # in a second terminal

Lesson 03's server.py line for line, plus what is marked "lesson 10" (a test keeps them in step); security.py holds
what it shares with app.py. Health stays open for probes; reflection needs a key: it maps every method for an attacker.
"""

import asyncio
import os
import signal
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import model_pb2
import model_pb2_grpc
from security import ApiKeys, fingerprint, load_signed_model, log, log_json, rate_limit_from_env

log_json()  # lesson 10: JSON lines; keys never appear in them, only fingerprints
KEYS, RATE = ApiKeys(), rate_limit_from_env()  # lesson 10
MODEL = load_signed_model()  # lesson 10: the metadata's signature, then lesson 00's sha256
MAX_BATCH = 1000
LIMIT = 1e6  # as in lessons 01 and 02: a million centimetres is no flower, yet float32 goes up to 3.4e38
# After SIGTERM: keep serving DRAIN_SECONDS while load balancers notice NOT_SERVING, then give the
# calls in progress GRACE_SECONDS to finish. Together well under docker stop's 10 s.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
GRACE_SECONDS = 5
# lesson 10: bigger messages get RESOURCE_EXHAUSTED before our code runs (gRPC's default: 4 MiB). As lesson 02's body.
MAX_MESSAGE_BYTES = 1024 * 1024
OPEN_METHODS = "/grpc.health.v1.Health/"  # lesson 10: Check and Watch need no key
SERVICE_NAME = model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name  # "ModelService"


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
    return replies


class ModelService(model_pb2_grpc.ModelServiceServicer):
    async def Predict(self, request, context):
        return predict([check_row(request.features)])[0]

    async def PredictBatch(self, request, context):
        if not 1 <= len(request.instances) <= MAX_BATCH:
            raise BadRequest(f"a batch holds 1 to {MAX_BATCH} instances; got {len(request.instances)}")
        rows = [check_row(row.features, where=f"instances[{i}]: ") for i, row in enumerate(request.instances)]
        return model_pb2.PredictBatchReply(predictions=predict(rows))


def refuse(handler, code, details, trailers=()):
    """lesson 10: a handler of the same kind as `handler` (unary or stream) that only answers `code`."""
    async def abort(request, context):
        context.set_trailing_metadata(trailers)
        await context.abort(code, details)

    kind = ("unary_" if handler.unary_unary or handler.unary_stream else "stream_") + \
           ("unary" if handler.unary_unary or handler.stream_unary else "stream")
    return getattr(grpc, f"{kind}_rpc_method_handler")(abort)


class RequireKey(grpc.aio.ServerInterceptor):
    """lesson 10: every method but health needs a valid key in the `x-api-key` metadata, then a token."""

    async def intercept_service(self, continuation, call_details):
        handler = await continuation(call_details)
        if handler is None or call_details.method.startswith(OPEN_METHODS):
            return handler  # unknown methods stay UNIMPLEMENTED; health stays open
        key, where = dict(call_details.invocation_metadata or ()).get("x-api-key"), {"method": call_details.method}
        if not key:
            log.warning("refused: no API key", extra={"fields": {"code": "UNAUTHENTICATED", **where}})
            return refuse(handler, grpc.StatusCode.UNAUTHENTICATED, "missing API key: send it as x-api-key metadata")
        if (name := KEYS.identify(key)) is None:
            log.warning("refused: API key not valid",
                        extra={"fields": {"code": "PERMISSION_DENIED", "key": fingerprint(key), **where}})
            return refuse(handler, grpc.StatusCode.PERMISSION_DENIED, "the API key is not valid")
        if wait := RATE.wait(name):
            log.warning("refused: rate limit", extra={"fields": {"code": "RESOURCE_EXHAUSTED", "key": name, **where}})
            return refuse(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many requests for this API key; retry in {wait:.2f} s",
                          trailers=(("retry-after-ms", str(int(wait * 1000) + 1)),))
        return handler


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


def credentials():
    """lesson 10: TLS with TLS_CERT and TLS_KEY; mutual TLS (client certificates signed by TLS_CLIENT_CA) too."""
    cert, key, client_ca = (os.environ.get(name) for name in ("TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"))
    if not cert:
        return None
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())],
                                       root_certificates=Path(client_ca).read_bytes() if client_ca else None,
                                       require_client_auth=bool(client_ca))


async def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "50051")
    # lesson 10: RequireKey first, so nothing of a caller without a key is parsed; and a maximum message size.
    server = grpc.aio.server(interceptors=[RequireKey(), RefuseBadRequests()],
                             options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)

    # Health: load balancers, Kubernetes probes and course.server.grpc_ready ask this service.
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):  # "" means "the server as a whole"
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    # Reflection: clients can ask the server which services and messages it has.
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    tls = credentials()  # lesson 10
    if tls:
        server.add_secure_port(f"{host}:{port}", tls)
    else:  # lesson 10: only on loopback, or behind a proxy that does TLS (see the README)
        server.add_insecure_port(f"{host}:{port}")
    await server.start()
    mode = "mutual TLS" if os.environ.get("TLS_CLIENT_CA") else "TLS" if tls else "plaintext"
    log.info(f"Serving {MODEL.metadata['name']} over gRPC ({mode}) on {host}:{port}")  # lesson 10: JSON

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
