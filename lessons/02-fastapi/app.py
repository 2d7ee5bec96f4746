"""Lesson 02: the iris model behind FastAPI, with types that validate and document the API.

    python lessons/02-fastapi/app.py       # or, from this folder: uvicorn app:app
    open http://127.0.0.1:8000/docs         # Swagger UI, generated from the classes below
    ENGINE=onnxruntime python lessons/02-fastapi/app.py   # the same model, run by onnxruntime (see ENGINE)

The same contract as lesson 01's Flask app (same routes, same JSON, same status codes, the same
error text), but pydantic does the checking that Flask made us write by hand.
"""

import os
import threading
from contextlib import asynccontextmanager
from operator import attrgetter

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from course.errors import ERRORS, LimitBody, add_error_handlers
from course.model import load_model

MAX_BATCH = 1000
# Any finite float is a number, but near 1e308 the model's scaling overflows and it answers NaN.
# A million centimetres (10 km) is no flower either, so values must lie within +-LIMIT.
LIMIT = 1e6
# After SIGTERM, /health answers 503 for this long while load balancers stop sending, then uvicorn drains.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
# Which library runs the model. scikit-learn checks its input on every call, and on one row that is most of the call;
# onnxruntime runs the same pipeline, converted at start-up, without those checks (the notebook measures both).
ENGINE = os.environ.get("ENGINE", "sklearn")


class Features(BaseModel):
    """One flower, measured in centimetres. Every feature is required; key order does not matter."""

    # strict: 5 and 5.1 are numbers, "5.1" and true are not. No NaN or Infinity, no unknown keys.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    sepal_length: float = Field(ge=-LIMIT, le=LIMIT, description="Sepal length in cm", examples=[5.1])
    sepal_width: float = Field(ge=-LIMIT, le=LIMIT, description="Sepal width in cm", examples=[3.5])
    petal_length: float = Field(ge=-LIMIT, le=LIMIT, description="Petal length in cm", examples=[1.4])
    petal_width: float = Field(ge=-LIMIT, le=LIMIT, description="Petal width in cm", examples=[0.2])


class Prediction(BaseModel):
    prediction: int = Field(description="Index of the most probable class in GET /model's classes", examples=[0])
    label: str = Field(description="Name of that class", examples=["setosa"])
    probabilities: list[float] = Field(description="One probability per class, in class order; they sum to 1",
                                       examples=[[0.979, 0.021, 0.0]])


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Features] = Field(min_length=1, max_length=MAX_BATCH, description="1 to 1000 flowers")


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="One prediction per instance, in the same order")


ml = {}  # filled once at start-up, read by every request


def onnxruntime_predict_proba(model):
    # Imported here, not above: the default engine, and lesson 04's image of this server, do without them.
    import numpy as np
    import onnxruntime
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import DoubleTensorType

    # float64 in, as scikit-learn computes: the probabilities agree with it to ~1e-16, not to float32's 7 digits.
    graph = to_onnx(model.estimator, initial_types=[("features", DoubleTensorType([None, len(model.features)]))],
                    options={"zipmap": False})
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda rows: session.run(["probabilities"], {"features": np.array(rows, dtype=np.float64)})[0]


@asynccontextmanager
async def lifespan(app: FastAPI):
    model = load_model()  # MODEL_PATH, or the repo's trained model
    if sorted(model.features) != sorted(Features.model_fields):
        raise RuntimeError(f"the model expects {model.features}, but Features declares {list(Features.model_fields)}")
    if ENGINE not in ("sklearn", "onnxruntime"):
        raise RuntimeError(f"ENGINE={ENGINE!r}: expected sklearn (the default) or onnxruntime")
    ml["model"] = model
    ml["predict_proba"] = model.estimator.predict_proba if ENGINE == "sklearn" else onnxruntime_predict_proba(model)
    ml["row"] = attrgetter(*model.features)  # a Features object -> its values in the model's order
    ml["info"] = {key: model.metadata[key] for key in ("name", "version", "features", "classes", "feature_ranges")}
    ml["draining"] = False
    yield
    ml.clear()


# FastAPI's own /docs page loads Swagger UI from a CDN, and is blank offline; FastAPIOffline serves those files itself.
app = FastAPIOffline(title="Iris classifier", version="1.0.0", lifespan=lifespan)
app.add_middleware(LimitBody)  # 413 for a body over 1 MiB, while it arrives
# 415, 400 and 422 as lesson 01 answers them: one sentence naming the problem (lesson 02's notebook shows why).
add_error_handlers(app, Features, limit=LIMIT, max_batch=MAX_BATCH)


def predict_rows(rows: list) -> list[Prediction]:
    model = ml["model"]
    # One predict_proba call: the predicted class is the most probable one, so no predict() too.
    probabilities = ml["predict_proba"](rows)
    return [Prediction(prediction=best, label=model.classes[best], probabilities=p)
            for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]


@app.get("/health", responses={503: {"description": "Shutting down: send requests elsewhere"}})
async def health():
    # Readiness: serving means the lifespan has loaded the model; after SIGTERM it is 503 (see DrainFirst).
    if ml["draining"]:
        return JSONResponse({"status": "shutting down"}, 503)
    return {"status": "ok"}


@app.get("/model")
async def model_info():
    return ml["info"]


@app.post("/predict", responses=ERRORS)
async def predict(features: Features) -> Prediction:
    # `async def` runs on the event loop: one row costs the model less than a hand-off to a worker
    # thread would. It blocks the loop while it runs, so only for short work (lesson 02's notebook measures).
    return predict_rows([ml["row"](features)])[0]


@app.post("/predict/batch", responses=ERRORS)
def predict_batch(batch: BatchRequest) -> BatchPrediction:
    # A plain `def` runs in a worker thread: up to 1000 rows, and other requests are served meanwhile.
    row = ml["row"]
    return BatchPrediction(predictions=predict_rows([row(x) for x in batch.instances]))


class DrainFirst(uvicorn.Server):
    """uvicorn with a planned stop that loses nothing: readiness first, a pause, then uvicorn's own drain."""

    def handle_exit(self, sig, frame):
        if ml.get("draining"):  # a second Ctrl+C or SIGTERM: stop now
            self.should_exit = self.force_exit = True
        else:
            ml["draining"] = True  # /health answers 503: load balancers stop sending new requests here
            # Then uvicorn stops accepting, finishes the requests in flight, and run() returns: exit code 0.
            threading.Timer(DRAIN_SECONDS, setattr, (self, "should_exit", True)).start()


if __name__ == "__main__":
    # access_log=False: no log line per request, which is work on every request. Start-up, shutdown and
    # errors are still logged; lesson 06 adds metrics and structured request logs.
    config = uvicorn.Config(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                            access_log=False)
    DrainFirst(config).run()
