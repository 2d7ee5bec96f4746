"""Lesson 08: the iris model over the Open Inference Protocol's gRPC API (inference.GRPCInferenceService).

    python lessons/08-open-inference/grpc_server.py    # 127.0.0.1:8001 (env HOST, PORT, MODEL_PATH, DRAIN_SECONDS)

inference_pb2*.py are generated from protos/inference.proto by `make protos`; never edit them. The model
side is v2.py, shared with rest_server.py. As in lesson 03: grpc.aio, the standard health service (for
probes and course.server.grpc_ready), and every mistake of the client answered INVALID_ARGUMENT or
NOT_FOUND with a sentence, never a server error.
"""

import asyncio
import os
import signal

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import inference_pb2 as pb
import inference_pb2_grpc
import v2

DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))  # NOT_SERVING this long after SIGTERM, then stop
GRACE_SECONDS = 5  # for the calls still running when the server stops
# Where each datatype's values travel when a request uses typed `contents` instead of raw bytes.
CONTENTS = {"FP64": "fp64_contents", "FP32": "fp32_contents", "INT64": "int64_contents", "UINT64": "uint64_contents",
            **dict.fromkeys(["INT32", "INT16", "INT8"], "int_contents"),
            **dict.fromkeys(["UINT32", "UINT16", "UINT8"], "uint_contents"), "BYTES": "bytes_contents"}
state = {"draining": False}


class InferenceService(inference_pb2_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=not state["draining"])

    async def ModelReady(self, request, context):
        v2.check_model(request.name, request.version)
        return pb.ModelReadyResponse(ready=not state["draining"])

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**v2.SERVER_METADATA)

    async def ModelMetadata(self, request, context):
        v2.check_model(request.name, request.version)
        tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(**t) for t in v2.METADATA[key]]
                   for key in ("inputs", "outputs")}  # no `parameters` in the gRPC message: see the README
        return pb.ModelMetadataResponse(name=v2.NAME, versions=v2.METADATA["versions"],
                                        platform=v2.METADATA["platform"], **tensors)

    async def ModelInfer(self, request, context):
        v2.check_model(request.model_name, request.model_version)
        if len(request.inputs) != 1:
            raise v2.BadRequest(f"inputs: expected one tensor, {v2.INPUT}; got {len(request.inputs)}")
        tensor, raw = request.inputs[0], request.raw_input_contents
        if raw and (len(raw) != 1 or tensor.HasField("contents")):
            raise v2.BadRequest(f"raw_input_contents: expected one entry, for {v2.INPUT}, and no `contents`")
        if raw:  # the bytes, as tritonclient sends them
            values = raw[0]
        elif tensor.datatype in CONTENTS:
            values = list(getattr(tensor.contents, CONTENTS[tensor.datatype]))
        else:
            values = []  # rows_from names the datatype it does not accept
        rows = v2.rows_from(tensor.name, tensor.datatype, list(tensor.shape), values)
        reply = pb.ModelInferResponse(model_name=v2.NAME, model_version=v2.VERSION, id=request.id)
        for name, datatype, shape, result in v2.infer(rows, [o.name for o in request.outputs]):
            output = reply.outputs.add(name=name, datatype=datatype, shape=shape)
            if raw:  # answer in the form the client asked in: raw bytes for raw bytes
                reply.raw_output_contents.append(v2.to_bytes(datatype, result))
            elif datatype == "BYTES":
                output.contents.bytes_contents.extend(str(v).encode() for v in result.ravel())
            else:
                getattr(output.contents, CONTENTS[datatype]).extend(np.ravel(result).tolist())
        return reply


class RefuseBadRequests(grpc.aio.ServerInterceptor):
    """Methods get the raw bytes and parse them here (lesson 03's idiom): bytes that do not parse,
    v2.BadRequest and v2.NotFound become INVALID_ARGUMENT or NOT_FOUND with their message."""

    async def intercept_service(self, continuation, call_details):
        handler = await continuation(call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown methods (UNIMPLEMENTED) and the health service's Watch stream
        parse, method = handler.request_deserializer, handler.unary_unary
        message = parse.__self__.__name__

        async def parse_then_call(data, context):
            try:
                return await method(parse(data), context)
            except DecodeError:
                code, details = grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid {message}"
            except v2.BadRequest as error:
                code, details = grpc.StatusCode.INVALID_ARGUMENT, str(error)
            except v2.NotFound as error:
                code, details = grpc.StatusCode.NOT_FOUND, str(error)
            context.set_code(code)
            context.set_details(details)

        return grpc.unary_unary_rpc_method_handler(parse_then_call, response_serializer=handler.response_serializer)


async def serve():
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8001")
    server = grpc.aio.server(interceptors=[RefuseBadRequests()])
    inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(), server)
    health_servicer = health.aio.HealthServicer()  # what Kubernetes' grpc probe and load balancers ask
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"Serving {v2.NAME} over the Open Inference Protocol (gRPC) on {host}:{port}", flush=True)

    async def shut_down(signum):
        print(f"{signum.name}: finishing in-flight calls, then stopping", flush=True)
        state["draining"] = True  # ServerReady false, as health's NOT_SERVING
        await health_servicer.enter_graceful_shutdown()
        await asyncio.sleep(DRAIN_SECONDS)  # serve while load balancers notice (lesson 03 says why)
        await server.stop(GRACE_SECONDS)

    stopping = set()

    def on_signal(signum):  # the first signal stops gracefully; a second one at once
        stopping.add(asyncio.create_task(server.stop(0) if stopping else shut_down(signum)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, on_signal, signum)
    await server.wait_for_termination()
    print("Stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(serve())
