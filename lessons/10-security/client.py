"""Lesson 10: the client side of the secured gRPC server: a key in the metadata, over TLS or mutual TLS.

    python lessons/10-security/client.py 127.0.0.1:50051 --api-key <key>                       # plaintext
    python lessons/10-security/client.py 127.0.0.1:50051 --api-key <key> --ca ca.pem           # TLS
    python lessons/10-security/client.py 127.0.0.1:50051 --api-key <key> --ca ca.pem \\
        --cert client.pem --key client.key                                                      # mutual TLS
"""

import argparse
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import model_pb2
import model_pb2_grpc


def channel(address, ca=None, cert=None, key=None) -> grpc.Channel:
    """A plaintext channel, or, given the CA to trust (ca), a TLS one; with cert and key the client proves
    who it is too (mutual TLS). The server's certificate must name the address the client dials."""
    if ca is None:
        return grpc.insecure_channel(address)
    def read(path):
        return Path(path).read_bytes() if path else None

    return grpc.secure_channel(address, grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)))


def predict(chan, api_key, features, timeout=5):
    """One prediction; the key travels as `x-api-key` metadata (a header in HTTP/2), so only TLS keeps it secret."""
    stub = model_pb2_grpc.ModelServiceStub(chan)
    metadata = (("x-api-key", api_key),) if api_key else ()
    return stub.Predict(model_pb2.PredictRequest(features=features), metadata=metadata, timeout=timeout)


def serving(chan, timeout=1) -> bool:
    """The health check: no key needed."""
    try:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    except grpc.RpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def ready(ca=None, cert=None, key=None):
    """For course.server.start_server(ready=...): the health check over the channel the server expects."""
    def check(server) -> bool:
        with channel(server.address, ca, cert, key) as chan:
            return serving(chan)
    return check


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ca", help="the CA certificate that signed the server's (PEM); without it, plaintext")
    parser.add_argument("--cert", help="this client's certificate (PEM), for mutual TLS")
    parser.add_argument("--key", help="this client's private key (PEM), for mutual TLS")
    args = parser.parse_args()
    with channel(args.address, args.ca, args.cert, args.key) as chan:
        print(predict(chan, args.api_key, [5.1, 3.5, 1.4, 0.2]))
