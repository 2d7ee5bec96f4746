"""Lesson 06: lesson 02's FastAPI server, measured (Prometheus metrics at /metrics) and logged (JSON lines).

    python lessons/06-monitoring/app.py     # http://127.0.0.1:8000 (env HOST, PORT, MODEL_PATH, LOG_FEATURES)
    curl http://127.0.0.1:8000/metrics

Routes, validation and errors are lesson 02's, line for line (a test keeps them in step); what this file adds is
marked "lesson 06". Every request gets one JSON log line with a request id (the X-Request-ID header's, or a new one),
echoed in the response, so a client's complaint leads to the server's line. monitoring.py defines the metrics.
"""

import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from contextvars import ContextVar
from operator import attrgetter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

import monitoring  # lesson 06: the metrics and the JSON log format, beside this file
from course.errors import ERRORS, LimitBody, add_error_handlers
from course.model import load_model

MAX_BATCH = 1000
# Any finite float is a number, but near 1e308 the model's scaling overflows and it answers NaN.
# A million centimetres (10 km) is no flower either, so values must lie within +-LIMIT.
LIMIT = 1e6
# After SIGTERM, /health answers 503 for this long while load balancers stop sending, then uvicorn drains.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))

# lesson 06: feature values stay out of the logs unless LOG_FEATURES=1: for a real model they can be personal data
# (a patient's results, an applicant's income), and logs are kept longer, copied to more places and read by more
# people than the data store is. The counters of monitoring.py keep what monitoring needs, without them.
LOG_FEATURES = os.environ.get("LOG_FEATURES") == "1"
REQUEST_ID = re.compile(r"[\w.:-]{1,64}")  # a client's id is echoed and logged: short and plain, or we make one
this_request = ContextVar("this_request")  # this request's log line, so that predict_rows can add to it
log = logging.getLogger("model_server")


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


@asynccontextmanager
async def lifespan(app: FastAPI):
    model = load_model()  # MODEL_PATH, or the repo's trained model
    if sorted(model.features) != sorted(Features.model_fields):
        raise RuntimeError(f"the model expects {model.features}, but Features declares {list(Features.model_fields)}")
    ml["model"] = model
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
    probabilities = model.estimator.predict_proba(rows)
    predictions = [Prediction(prediction=best, label=model.classes[best], probabilities=p)
                   for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]
    observe(rows, [p.label for p in predictions])  # lesson 06
    return predictions


def observe(rows, labels):
    """lesson 06: count the classes and out-of-range inputs, and put the labels on this request's log line."""
    monitoring.observe(rows, labels)
    line = this_request.get({})
    if LOG_FEATURES:
        line["features"] = rows
    if len(labels) == 1:
        line["label"] = labels[0]
    else:  # a batch holds up to 1000 rows: the counts keep its line short
        line["labels"] = dict(Counter(labels))


@app.middleware("http")
async def measure_and_log(request: Request, call_next):
    """lesson 06: every request counted, timed and logged as one JSON line, with its request id."""
    request_id = request.headers.get("x-request-id", "")
    if not REQUEST_ID.fullmatch(request_id):
        request_id = uuid.uuid4().hex
    line = {"request_id": request_id, "method": request.method, "path": request.url.path}
    this_request.set(line)  # the dict is shared, even with the worker thread of a plain `def` route
    error = None
    start = time.perf_counter()
    with monitoring.IN_PROGRESS.track_inprogress():
        try:
            response = await call_next(request)
        except Exception as exc:  # a bug, or a broken model. Answered here, so its trace is logged once: below
            error = exc
            response = JSONResponse({"detail": "internal server error", "request_id": request_id}, 500)
    seconds = time.perf_counter() - start
    # The label is the route's template, never the raw path: every distinct label value is a new time series,
    # and clients choose paths (try /predict/1, /predict/2, ...). Paths no route knows share one label.
    route = request.scope.get("route")
    endpoint = route.path if route else "unmatched"
    monitoring.REQUESTS.labels(endpoint, response.status_code).inc()
    monitoring.LATENCY.labels(endpoint).observe(seconds)
    response.headers["X-Request-ID"] = request_id
    line.update(status=response.status_code, latency_ms=round(seconds * 1000, 3))
    log.log(logging.ERROR if error else logging.INFO, "request", exc_info=error, extra={"fields": line})
    return response


@app.get("/metrics", include_in_schema=False)
def metrics():
    # lesson 06: Prometheus' text format, every metric of this process as it is now. Prometheus keeps the history.
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


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
    monitoring.log_json()  # lesson 06: every log line of the process as JSON, uvicorn's too (log_config=None)
    # access_log=False: our line above replaces uvicorn's plain-text access line.
    config = uvicorn.Config(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                            log_config=None, access_log=False)
    DrainFirst(config).run()
