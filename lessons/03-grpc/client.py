"""A small client for the lesson's gRPC server.

    python lessons/03-grpc/client.py                                  # one example flower
    python lessons/03-grpc/client.py --address 127.0.0.1:50051 6.7 3.0 5.2 2.3

or, from Python (the lesson notebook does this):

    from client import predict
    reply = predict(stub, [5.1, 3.5, 1.4, 0.2], timeout=1.0)

Every call carries a deadline: without one, a call to a server that hangs waits forever.
"""

import argparse
import sys

import grpc

import model_pb2
import model_pb2_grpc

# Feature order is the model metadata's: sepal_length, sepal_width, petal_length, petal_width.
EXAMPLE = [5.1, 3.5, 1.4, 0.2]


def predict(stub, features, timeout=1.0):
    """One row in, one PredictReply out. Raises grpc.RpcError (e.g. INVALID_ARGUMENT, DEADLINE_EXCEEDED)."""
    return stub.Predict(model_pb2.PredictRequest(features=features), timeout=timeout)


def predict_batch(stub, rows, timeout=5.0):
    """1 to 1000 rows in one call; returns one PredictReply per row, in order."""
    request = model_pb2.PredictBatchRequest(
        instances=[model_pb2.PredictRequest(features=row) for row in rows])
    return list(stub.PredictBatch(request, timeout=timeout).predictions)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Ask the lesson 03 gRPC server for one prediction.")
    parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the server")
    parser.add_argument("--timeout", type=float, default=1.0, help="deadline in seconds")
    parser.add_argument("features", nargs="*", type=float, default=EXAMPLE,
                        help="sepal_length sepal_width petal_length petal_width")
    args = parser.parse_args(argv)

    with grpc.insecure_channel(args.address) as channel:
        stub = model_pb2_grpc.ModelServiceStub(channel)
        try:
            reply = predict(stub, args.features, timeout=args.timeout)
        except grpc.RpcError as error:
            # The status code says what kind of failure it was; details say what exactly.
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    probabilities = ", ".join(f"{p:.3f}" for p in reply.probabilities)
    print(f"class_index={reply.class_index} label={reply.label} probabilities=[{probabilities}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
