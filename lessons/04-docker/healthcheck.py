"""The image's HEALTHCHECK: exit 0 when the server in this container answers, 1 when it does not.

    python lessons/04-docker/healthcheck.py http    # GET /health on $PORT must return 200
    python lessons/04-docker/healthcheck.py grpc    # grpc.health.v1 Check on $PORT must say SERVING

Python instead of `curl`: the slim base image has no curl, and installing it would add
megabytes and one more program an attacker could use, for a check this short.
"""

import os
import sys
import urllib.request


def http_ok(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:  # refused, timed out, or an HTTP error status
        return False


def grpc_ok(port: str) -> bool:
    import grpc  # only the gRPC image needs these
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "http"
    check = {"http": http_ok, "grpc": grpc_ok}[kind]
    sys.exit(0 if check(os.environ.get("PORT", "8000")) else 1)
