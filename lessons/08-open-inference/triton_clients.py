"""One flower sent by NVIDIA's tritonclient three ways: HTTP with JSON tensors, HTTP with binary tensors, gRPC.

    .cache/mlserver-venv/bin/python lessons/08-open-inference/triton_clients.py 127.0.0.1:8000 127.0.0.1:8001

Client code nobody in this course wrote, with its defaults, against any Open Inference server: the
lesson's, MLServer, Triton, KServe. It runs in MLServer's virtualenv (`make mlserver`) because tritonclient
needs protobuf < 7 and the course's grpcio-tools needs protobuf >= 7.35 (see the README). It prints one
JSON object: per way of calling, the outputs as lists, or the error the server answered.
"""

import argparse
import json
import statistics
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

FLOWER = [[5.1, 3.5, 1.4, 0.2]]


def call_http(url, model, rows, outputs, binary):
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("input-0", list(np.shape(rows)), "FP64")
    tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float64), binary_data=binary)  # default: binary
    wanted = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in outputs] or None
    body, json_size = client.generate_request_body([tensor], outputs=wanted)  # what infer() sends, to count it
    return client, lambda: client.infer(model, [tensor], outputs=wanted), len(body)


def call_grpc(url, model, rows, outputs, binary=None):
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("input-0", list(np.shape(rows)), "FP64")
    tensor.set_data_from_numpy(np.asarray(rows, dtype=np.float64))  # always raw_input_contents
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] or None
    return client, lambda: client.infer(model, [tensor], outputs=wanted), None


WAYS = {"http-json": (call_http, False), "http-binary": (call_http, True), "grpc": (call_grpc, None)}


def run(http_url, grpc_url, model="iris", rows=FLOWER, outputs=(), repeat=20):
    results = {}
    for way, (call, binary) in WAYS.items():
        client, infer, request_bytes = call(grpc_url if way == "grpc" else http_url, model, rows, list(outputs), binary)
        try:
            metadata = client.get_model_metadata(model)
            result = infer()
            seconds = []
            for _ in range(repeat):
                start = time.perf_counter()
                infer()
                seconds.append(time.perf_counter() - start)
            response = result.get_response()
            names = [o["name"] for o in response["outputs"]] if way != "grpc" else [o.name for o in response.outputs]
            results[way] = {
                "outputs": {name: result.as_numpy(name).tolist() for name in names},
                "metadata_inputs": len(metadata["inputs"] if way != "grpc" else metadata.inputs),
                "request_bytes": request_bytes, "median_ms": 1000 * statistics.median(seconds)}
        except InferenceServerException as error:
            results[way] = {"error": error.message()}
        finally:
            client.close()
    return results


def decode(value):
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("http_url", help="host:port of the REST server")
    parser.add_argument("grpc_url", help="host:port of the gRPC server")
    parser.add_argument("--model", default="iris")
    parser.add_argument("--rows", type=json.loads, default=FLOWER, help="a JSON list of rows of 4 numbers")
    parser.add_argument("--outputs", default="", help="comma-separated output names (default: every output)")
    parser.add_argument("--repeat", type=int, default=20, help="calls timed per way (the median is printed)")
    args = parser.parse_args()
    results = run(args.http_url, args.grpc_url, args.model, args.rows, [o for o in args.outputs.split(",") if o],
                  args.repeat)
    print(json.dumps(results, default=lambda v: decode(v)))
