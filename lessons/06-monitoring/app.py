"""Lesson 06: lesson 02's FastAPI server, measured (Prometheus metrics at /metrics) and logged (JSON lines).

    python lessons/06-monitoring/app.py     # http://127.0.0.1:8000 (env HOST, PORT, MODEL_PATH, LOG_FEATURES)
    curl http://127.0.0.1:8000/metrics

Routes, validation and errors are lesson 02's, unchanged: this file only adds observation around them.
Every request gets one log line with a request id, taken from the X-Request-ID header or made up, and
echoed in the response's X-Request-ID header, so a client's complaint leads to the server's line.
"""

import logging
import os
import re
import time
import uuid
from collections import Counter
from contextvars import ContextVar

import uvicorn
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from course import import_lesson

lesson02 = import_lesson("02-fastapi/app.py")
monitoring = import_lesson("06-monitoring/monitoring.py")
app = lesson02.app
log = logging.getLogger("model_server")

# Feature values stay out of the logs unless LOG_FEATURES=1: for a real model they can be personal data
# (a patient's results, an applicant's income), and logs are kept longer, copied to more places and read by
# more people than the data store is. The counters of monitoring.py keep what monitoring needs, without them.
LOG_FEATURES = os.environ.get("LOG_FEATURES") == "1"
REQUEST_ID = re.compile(r"[\w.:-]{1,64}")  # a client's id is echoed and logged: short and plain, or we make one
this_request = ContextVar("this_request")  # this request's log line, so that predict_rows can add to it

predict_rows = lesson02.predict_rows


def observed_predict_rows(rows):
    """Lesson 02's predict_rows, plus counters (classes, out-of-range values) and the labels for the log line."""
    line = this_request.get({})
    if LOG_FEATURES:
        line["features"] = rows
    predictions = predict_rows(rows)
    labels = [p.label for p in predictions]
    monitoring.observe(rows, labels)
    if len(labels) == 1:
        line["label"] = labels[0]
    else:  # a batch holds up to 1000 rows: the counts keep its line short
        line["labels"] = dict(Counter(labels))
    return predictions


# Lesson 02's two predict routes look `predict_rows` up by name each time they run: replacing the name puts
# every prediction, single or batch, through the function above. In your own server, write it in place.
lesson02.predict_rows = observed_predict_rows


@app.middleware("http")
async def measure_and_log(request: Request, call_next):
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
    # Prometheus' text format: every metric of this process, as it is right now. Prometheus keeps the history.
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def main():
    monitoring.log_json()
    # log_config=None: uvicorn's own lines (start, stop) go through our JSON handler too.
    # access_log=False: our line above replaces uvicorn's plain-text access line.
    config = uvicorn.Config(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                            log_config=None, access_log=False)
    lesson02.DrainFirst(config).run()  # lesson 02's planned stop: /health 503, drain, exit 0


if __name__ == "__main__":
    main()
