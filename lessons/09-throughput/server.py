"""Lesson 09: lesson 02's API with dynamic batching: requests that arrive together share one model call.

    python lessons/09-throughput/server.py    # http://127.0.0.1:8000 (env HOST, PORT, MODEL_PATH, DRAIN_SECONDS,
                                              #  MAX_BATCH_SIZE, MAX_WAIT_MS, WORKERS)
    curl http://127.0.0.1:8000/metrics        # batch sizes and queue waits, as Prometheus histograms

Routes, validation and errors are lesson 02's: its classes and routes are imported and registered here, with the
course's error contract (course/errors.py), so the contract is the same by construction. What is new is POST /predict:
instead of calling the model, a request puts its row in the Batcher's queue and waits; one task takes up to
MAX_BATCH_SIZE rows from the queue, waiting at most MAX_WAIT_MS for more to arrive, and makes ONE predict_proba call
for all of them. On this model a call costs about the same for 1 row as for 64 (the notebook measures it), so under
load each row gets much cheaper.
"""

import asyncio
import gc
import logging
import os
import socket
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from uvicorn.supervisors import Multiprocess

from course import import_lesson
from course.errors import ERRORS, LimitBody, add_error_handlers

api = import_lesson("02-fastapi/app.py")  # lesson 02: Features, Prediction, its routes, start-up and DrainFirst

# The two knobs of every dynamic batcher (Triton, MLServer, Ray Serve and BentoML have the same two).
MAX_BATCH_SIZE = int(os.environ.get("MAX_BATCH_SIZE", "64"))  # rows per model call, at most
# How long the first request of a batch may wait for company. It is what batching costs a lone request.
MAX_WAIT_MS = float(os.environ.get("MAX_WAIT_MS", "2"))

BATCH_SIZE = Histogram("batch_size_rows", "Rows per model call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
QUEUE_WAIT = Histogram("batch_queue_wait_seconds", "Time a request waited in the queue before its model call",
                       buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
log = logging.getLogger("batcher")


class Batcher:
    """A queue of rows and one task that answers them in batches: `await batcher(row)` -> that row's Prediction."""

    def __init__(self, max_size: int, max_wait_seconds: float):
        self.max_size, self.max_wait = max_size, max_wait_seconds
        self.queue = asyncio.Queue()

    async def __call__(self, row):
        future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((row, future, time.perf_counter()))
        return await future  # set by run(): this row's answer, or the batch's error

    async def run(self):
        while True:
            batch = [await self.queue.get()]  # sleeps until a request comes: no polling when idle
            deadline = batch[0][2] + self.max_wait
            while len(batch) < self.max_size:
                if self.queue.empty():  # wait for company, but never past the first request's deadline
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), deadline - time.perf_counter()))
                    except TimeoutError:
                        break
                else:
                    batch.append(self.queue.get_nowait())
            batch = [item for item in batch if not item[1].done()]  # done: its caller was cancelled meanwhile
            if batch:
                self.observe(batch)
                self.answer(batch)

    def observe(self, batch):
        started = time.perf_counter()
        for _, _, queued in batch:
            QUEUE_WAIT.observe(started - queued)
        BATCH_SIZE.observe(len(batch))

    def answer(self, batch):
        try:
            # On the event loop, like lesson 02's /predict: a call of 64 rows takes well under a millisecond.
            predictions = api.predict_rows([row for row, _, _ in batch])
        except Exception:
            # Every caller of this batch gets an answer, an error one: nobody waits forever, and the loop goes on.
            log.exception("the model failed on a batch of %d rows", len(batch))
            detail = f"the model failed on this request's batch of {len(batch)}; the server log has the error"
            for _, future, _ in batch:
                future.set_exception(HTTPException(500, detail))
            return
        for (_, future, _), prediction in zip(batch, predictions):
            future.set_result(prediction)


batcher = Batcher(MAX_BATCH_SIZE, MAX_WAIT_MS / 1000)


@asynccontextmanager
async def lifespan(app: FastAPI):
    async with api.lifespan(app):  # lesson 02's start-up: the model, checked, in api.ml
        # Everything loaded so far lives as long as the process. Frozen, full garbage collections stop walking it,
        # and each of them blocks every request meanwhile (the notebook times one, frozen and not).
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(batcher.run())
        yield
        # uvicorn stops here only once every request in flight has its answer: the queue is empty by now.
        task.cancel()


app = FastAPIOffline(title="Iris classifier, batched", version="1.0.0", lifespan=lifespan)
app.add_middleware(LimitBody)  # the course's error contract, installed as lesson 02 installs it
add_error_handlers(app, api.Features, limit=api.LIMIT, max_batch=api.MAX_BATCH)
app.get("/health", responses={503: {"description": "Shutting down: send requests elsewhere"}})(api.health)
app.get("/model")(api.model_info)
# A request that is a batch already gains nothing from waiting for others: lesson 02's route, unchanged.
app.post("/predict/batch", responses=ERRORS)(api.predict_batch)


@app.post("/predict", responses=ERRORS)
async def predict(features: api.Features) -> api.Prediction:
    return await batcher(api.ml["row"](features))


@app.get("/metrics", include_in_schema=False)
def metrics():
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)  # lesson 06's format


if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    workers = int(os.environ.get("WORKERS", "1"))
    # uvicorn parses HTTP with httptools, in C, when it is installed (requirements.txt): see the README for the gain.
    if workers == 1:  # DrainFirst is lesson 02's SIGTERM story: readiness 503, a pause, then uvicorn's drain
        api.DrainFirst(uvicorn.Config(app, host=host, port=port, access_log=False)).run()
    else:
        # A process per core, sharing one listening socket. `uvicorn --workers` binds that socket without saying it
        # is TCP, so asyncio leaves Nagle's algorithm on, and every answer on a kept-alive connection waits ~40 ms for
        # the client's delayed ACK (uvicorn issue #3149; the notebook measures it). Made here with IPPROTO_TCP, the
        # workers' connections get TCP_NODELAY. Each worker stops as uvicorn does: in-flight requests first.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.set_inheritable(True)
        # Each worker is a new Python process that runs this file again (multiprocessing's spawn): "__main__:app" is
        # this file's `app` in there.
        config = uvicorn.Config("__main__:app", host=host, port=port, access_log=False, workers=workers)
        Multiprocess(config, sockets=[sock]).run()
