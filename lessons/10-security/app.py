"""Lesson 10: lesson 02's FastAPI server, secured: API keys, a rate limit per key, TLS, limits, a signed model.

    API_KEYS=<key1>,<key2> python lessons/10-security/app.py       # or API_KEYS_FILE=<file, one key per line>
    # TLS: add TLS_CERT=server.pem TLS_KEY=server.key (and TLS_CLIENT_CA=ca.pem to require client certificates),
    # or, from this folder: uvicorn app:app --ssl-certfile server.pem --ssl-keyfile server.key
    curl -H "X-API-Key: <key1>" -H 'Content-Type: application/json' -d '{...}' http://127.0.0.1:8000/predict

Lesson 02's app.py, line for line (tests/test_security.py keeps them in step), with what this lesson adds marked
"lesson 10"; security.py holds what the REST and gRPC servers share. The contract is lesson 02's, except that
every route but /health (and the docs) needs a key. Env: HOST, PORT, MODEL_PATH, DRAIN_SECONDS as in lesson 02;
API_KEYS or API_KEYS_FILE, RATE_PER_SECOND, RATE_BURST, BODY_SECONDS, TLS_CERT, TLS_KEY, TLS_CLIENT_CA and
MODEL_PUBLIC_KEY (see the README).
"""

import asyncio
import math
import os
import ssl
import threading
from contextlib import asynccontextmanager
from operator import attrgetter

import uvicorn
from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from course.errors import ERRORS, Error, LimitBody, add_error_handlers
from security import ApiKeys, fingerprint, load_signed_model, log, log_json, rate_limit_from_env

MAX_BATCH = 1000
# Any finite float is a number, but near 1e308 the model's scaling overflows and it answers NaN.
# A million centimetres (10 km) is no flower either, so values must lie within +-LIMIT.
LIMIT = 1e6
# After SIGTERM, /health answers 503 for this long while load balancers stop sending, then uvicorn drains.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
# lesson 10: a client that trickles its body holds a connection and a request slot; after this long it gets 408.
BODY_SECONDS = float(os.environ.get("BODY_SECONDS", "10"))

log_json()  # lesson 10: JSON lines (lesson 06), uvicorn's too; keys never appear in them, only fingerprints
KEYS = ApiKeys()  # lesson 10: from the environment or a mounted file, never from code
RATE = rate_limit_from_env()  # lesson 10


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


# lesson 10: the answers this lesson adds, documented in /docs beside lesson 02's 400/413/415/422.
SECURED = {**ERRORS, **{status: {"model": Error, "description": text} for status, text in {
    401: "No API key", 403: "The API key is not valid", 408: f"The body took over {BODY_SECONDS:g} s to arrive",
    429: "Too many requests for this key: wait Retry-After seconds"}.items()}}
ml = {}  # filled once at start-up, read by every request


@asynccontextmanager
async def lifespan(app: FastAPI):
    model = load_signed_model()  # lesson 10: the metadata's signature, then lesson 00's sha256
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


class BodyDeadline:
    """lesson 10, ASGI middleware: 408 when the body is not all there BODY_SECONDS after the request began."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        deadline = asyncio.get_running_loop().time() + BODY_SECONDS

        async def receive_in_time():
            try:
                return await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise HTTPException(408, f"the body did not arrive within {BODY_SECONDS:g} s") from None
        # Requests only: the lifespan's receive() waits until shutdown, and a 408 there failed the lifespan.
        await self.app(scope, receive_in_time if scope["type"] == "http" else receive, send)


app.add_middleware(BodyDeadline)  # lesson 10
app.add_middleware(LimitBody)  # 413 for a body over 1 MiB, while it arrives
# 415, 400 and 422 as lesson 01 answers them: one sentence naming the problem (lesson 02's notebook shows why).
add_error_handlers(app, Features, limit=LIMIT, max_batch=MAX_BATCH)

# lesson 10: FastAPI's security scheme: /docs shows a lock on each route that uses it, and an "Authorize" button.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="One of the server's API keys")


async def caller(request: Request, key: str | None = Security(api_key_header)) -> str:
    """lesson 10: who is calling (a key fingerprint), or 401 / 403 / 429. Never logs the key itself."""
    where = {"path": request.url.path, "client": request.client.host if request.client else None}
    if not key:
        log.warning("refused: no API key", extra={"fields": {"status": 401, **where}})
        raise HTTPException(401, "missing API key: send it in the X-API-Key header",
                            headers={"WWW-Authenticate": "APIKey"})
    name = KEYS.identify(key)
    if name is None:  # a typo, or a key rotated out: its fingerprint says which, safely
        log.warning("refused: API key not valid", extra={"fields": {"status": 403, "key": fingerprint(key), **where}})
        raise HTTPException(403, "the API key is not valid")
    if wait := RATE.wait(name):
        log.warning("refused: rate limit", extra={"fields": {"status": 429, "key": name, **where}})
        raise HTTPException(429, f"too many requests for this API key; retry in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    return name


def predict_rows(rows: list) -> list[Prediction]:
    model = ml["model"]
    # One predict_proba call: the predicted class is the most probable one, so no predict() too.
    probabilities = model.estimator.predict_proba(rows)
    return [Prediction(prediction=best, label=model.classes[best], probabilities=p)
            for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]


@app.get("/health", responses={503: {"description": "Shutting down: send requests elsewhere"}})
async def health():
    # Readiness: serving means the lifespan has loaded the model; after SIGTERM it is 503 (see DrainFirst).
    # lesson 10: open, for probes that send no key; it says "ok" or "shutting down", no version, no path.
    if ml["draining"]:
        return JSONResponse({"status": "shutting down"}, 503)
    return {"status": "ok"}


@app.get("/model", dependencies=[Security(caller)], responses=SECURED)  # lesson 10: a key
async def model_info():
    return ml["info"]


@app.post("/predict", dependencies=[Security(caller)], responses=SECURED)  # lesson 10: a key
async def predict(features: Features) -> Prediction:
    # `async def` runs on the event loop: one row costs the model less than a hand-off to a worker
    # thread would. It blocks the loop while it runs, so only for short work (lesson 02's notebook measures).
    return predict_rows([ml["row"](features)])[0]


@app.post("/predict/batch", dependencies=[Security(caller)], responses=SECURED)  # lesson 10
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
    env = os.environ.get
    # lesson 10: TLS when given a certificate and its key; with TLS_CLIENT_CA, clients need a certificate it signed.
    tls = {"ssl_certfile": env("TLS_CERT"), "ssl_keyfile": env("TLS_KEY"), "ssl_ca_certs": env("TLS_CLIENT_CA"),
           "ssl_cert_reqs": ssl.CERT_REQUIRED if env("TLS_CLIENT_CA") else ssl.CERT_NONE}
    config = uvicorn.Config(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                            log_config=None, access_log=False, server_header=False, **tls)  # lesson 10
    DrainFirst(config).run()
