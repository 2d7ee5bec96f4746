"""Worked answer to the lesson 08 exercise: the binary tensor extension with nothing but requests and numpy.

`infer_binary(url, rows)` sends the rows as FP32 bytes after a small JSON header and asks for the
probabilities back as bytes too, exactly as tritonclient does by default. The body is the JSON, then each
tensor's bytes; the header Inference-Header-Content-Length says where the JSON ends, and each tensor's
`binary_data_size` how many of the following bytes are its own. A server that does not speak the
extension (MLServer 1.7.1) answers an error, which is raised with the server's own words.
"""

import json

import numpy as np
import requests

HEADER = "Inference-Header-Content-Length"


def binary_request(rows) -> tuple[bytes, dict]:
    """The body and headers of a V2 infer request carrying `rows` as little-endian FP32."""
    data = np.asarray(rows, dtype="<f4")
    header = json.dumps({
        "inputs": [{"name": "input-0", "datatype": "FP32", "shape": list(data.shape),
                    "parameters": {"binary_data_size": data.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }).encode()
    return header + data.tobytes(), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def infer_binary(url: str, rows, model: str = "iris", timeout: float = 5) -> np.ndarray:
    """The model's probabilities for `rows` (one row per flower), as an array of shape [len(rows), classes]."""
    body, headers = binary_request(rows)
    answer = requests.post(f"{url}/v2/models/{model}/infer", data=body, headers=headers, timeout=timeout)
    if answer.status_code != 200:
        raise RuntimeError(f"{answer.status_code} from the server: {answer.text[:300]}")
    json_length = int(answer.headers.get(HEADER, len(answer.content)))  # absent: every output came as JSON
    output = json.loads(answer.content[:json_length])["outputs"][0]
    size = output.get("parameters", {}).get("binary_data_size")
    if size is None:
        return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
    dtype = {"FP64": "<f8", "FP32": "<f4"}[output["datatype"]]
    return np.frombuffer(answer.content[json_length:json_length + size], dtype=dtype).reshape(output["shape"])
