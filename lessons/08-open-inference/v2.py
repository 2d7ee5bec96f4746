"""The iris model as the Open Inference Protocol (KServe V2) sees a model: named tensors in, named tensors out.

Both lesson servers import this file: rest_server.py speaks the protocol over HTTP/JSON (and the binary
tensor extension), grpc_server.py over gRPC. Everything here is about the model, nothing about a transport:
what it is called, what it takes and gives (its metadata), how a tensor's bytes become rows, and the errors
a client can fix.
"""

import numpy as np

from course.model import load_model

MODEL = load_model()  # MODEL_PATH, or the repo's trained model
NAME = "iris"  # the model's name on the wire: /v2/models/iris, ModelInferRequest.model_name
VERSION = MODEL.metadata["version"]
MAX_BATCH = 1000
LIMIT = 1e6  # as in every lesson: a million centimetres is no flower, yet float32 goes up to 3.4e38
INPUT = "input-0"  # one [n, 4] tensor, the name MLServer's and Triton's tabular runtimes use too

# The datatypes a client may send, and numpy's little-endian type for their bytes. Integers are converted.
ACCEPTED = {"FP64": "<f8", "FP32": "<f4", "INT64": "<i8", "INT32": "<i4", "INT16": "<i2", "INT8": "i1",
            "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2", "UINT8": "u1"}
OUTPUTS = {  # name -> (datatype, shape); all three come back unless the request names some
    "predict": ("INT64", [-1]),  # the class index, as MLServer's sklearn runtime answers it
    "probabilities": ("FP64", [-1, len(MODEL.classes)]),  # one per class, in class order
    "label": ("BYTES", [-1]),  # the class name: where a client finds the classes, on both transports
}
# Built from the model's metadata file: a new model with other features or classes gets new metadata.
METADATA = {
    "name": NAME, "versions": [VERSION], "platform": "sklearn",
    "inputs": [{"name": INPUT, "datatype": "FP64", "shape": [-1, len(MODEL.features)]}],
    "outputs": [{"name": name, "datatype": datatype, "shape": shape} for name, (datatype, shape) in OUTPUTS.items()],
    # Protocol parameters hold strings, numbers or booleans, not lists: hence comma-separated.
    "parameters": {"features": ",".join(MODEL.features), "classes": ",".join(MODEL.classes)},
}
SERVER_METADATA = {"name": "serving-course-lesson-08", "version": "1.0.0", "extensions": ["binary_tensor_data"]}


class BadRequest(ValueError):
    """The client's mistake, said so it can fix it: 400 over REST, INVALID_ARGUMENT over gRPC."""


class NotFound(LookupError):
    """No such model or version here: 404 over REST, NOT_FOUND over gRPC."""


def check_model(name: str, version: str = "") -> None:
    if name != NAME:
        raise NotFound(f"model '{name}' is not served here; this server serves '{NAME}'")
    if version not in ("", VERSION):
        raise NotFound(f"model '{NAME}' has no version '{version}'; its versions: {VERSION}")


def rows_from(name: str, datatype: str, shape, values) -> np.ndarray:
    """One input tensor as float64 rows for the model, or BadRequest naming what is wrong with it.

    `values` is what the transport carried: a (flat or nested) list of numbers, or the raw bytes.
    """
    if name != INPUT:
        raise BadRequest(f"unknown input '{name}': this model has one input, {INPUT}")
    if datatype not in ACCEPTED:
        raise BadRequest(f"{INPUT}: datatype {datatype} is not accepted; send FP32 or FP64 (INT types are converted)")
    width = len(MODEL.features)
    if len(shape) != 2 or shape[1] != width or not 1 <= shape[0] <= MAX_BATCH:
        raise BadRequest(f"{INPUT}: expected shape [n, {width}] with n from 1 to {MAX_BATCH}, one row per flower "
                         f"({', '.join(MODEL.features)}); got {list(shape)}")
    if isinstance(values, (bytes, bytearray, memoryview)):
        expected = shape[0] * width * np.dtype(ACCEPTED[datatype]).itemsize
        if len(values) != expected:
            raise BadRequest(f"{INPUT}: shape {list(shape)} of {datatype} takes {expected} bytes; got {len(values)}")
        rows = np.frombuffer(values, dtype=ACCEPTED[datatype]).astype(np.float64)
    else:
        try:  # nested lists must have the tensor's shape; a flat list only its number of elements
            rows = np.asarray(values)  # no dtype=float: that would turn "5.1" into 5.1
        except ValueError:  # ragged lists
            rows = np.asarray(None)
        if rows.dtype.kind not in "iuf":  # strings, booleans, null, integers too big for any number type
            raise BadRequest(f"{INPUT}: data must be numbers, as a flat or nested list")
        if rows.ndim > 1 and list(rows.shape) != list(shape) or rows.size != shape[0] * width:
            raise BadRequest(f"{INPUT}: shape {list(shape)} holds {shape[0] * width} numbers; the data has "
                             f"{rows.size}" + (f" in shape {list(rows.shape)}" if rows.ndim > 1 else ""))
    rows = rows.reshape(shape[0], width).astype(np.float64)
    bad = ~(np.abs(rows) <= LIMIT)  # True for NaN and infinities too
    if bad.any():
        row, column = map(int, np.argwhere(bad)[0])
        raise BadRequest(f"{INPUT}[{row}] {MODEL.features[column]}: expected a number from {-LIMIT:,.0f} "
                         f"to {LIMIT:,.0f}, got {rows[row, column]}")
    return rows


def infer(rows: np.ndarray, requested=()) -> list[tuple[str, str, list[int], np.ndarray]]:
    """(name, datatype, shape, values) for each requested output, all of them if none are named."""
    for name in requested:
        if name not in OUTPUTS:
            raise BadRequest(f"unknown output '{name}': this model's outputs are {', '.join(OUTPUTS)}")
    if len(set(requested)) < len(requested):  # each is answered in full: a name repeated 1,000 times made a 65 MB answer
        raise BadRequest(f"outputs: name each output once at most; got {len(requested)} names for {len(OUTPUTS)}")
    probabilities = MODEL.estimator.predict_proba(rows)  # the predicted class is the most probable one
    best = probabilities.argmax(axis=1)
    values = {"predict": best.astype(np.int64), "probabilities": probabilities,
              "label": np.asarray(MODEL.classes, dtype=object)[best]}
    return [(name, OUTPUTS[name][0], list(values[name].shape), values[name]) for name in requested or OUTPUTS]


def to_bytes(datatype: str, values: np.ndarray) -> bytes:
    """A tensor as the binary extension and gRPC's raw_output_contents carry it: little-endian, row-major.
    A BYTES element is its length (4 bytes, little-endian) followed by the bytes."""
    if datatype == "BYTES":
        return b"".join(len(s).to_bytes(4, "little") + s for s in (str(v).encode() for v in values.ravel()))
    return values.astype({"INT64": "<i8", "FP64": "<f8"}[datatype]).tobytes()
