"""Lesson 06: what the model servers measure, and how they log. Shared by app.py (REST) and grpc_server.py.

Both servers export the same metric names, so one set of alert rules (alerts.yml) covers both.
"""

import json
import logging
import sys
from collections import Counter as Tally
from datetime import datetime, timezone

import numpy as np
from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics

from course.model import read_metadata

disable_created_metrics()  # no `*_created` line beside every counter: half the output, and nothing we use

# The four golden signals. Traffic and errors: REQUESTS by status. Latency: LATENCY. Saturation: IN_PROGRESS,
# and the process_* metrics (CPU seconds, memory) that prometheus_client exports by itself.
REQUESTS = Counter("requests", "Requests answered, by endpoint and status code", ["endpoint", "status"])
LATENCY = Histogram("request_duration_seconds", "Time to answer a request, by endpoint", ["endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
IN_PROGRESS = Gauge("requests_in_progress", "Requests being answered right now")

# What only a model server can tell: what it predicts, and whether its inputs still look like its training data.
PREDICTIONS = Counter("predictions", "Predictions made, by predicted class", ["label"])
OUT_OF_RANGE = Counter("out_of_range_values", "Feature values outside the range seen in training", ["feature"])
MODEL = Info("model", "The model being served")

METADATA = read_metadata()  # MODEL_PATH's metadata; load_model() checks the artifact against its sha256
FEATURES = METADATA["features"]
# float32: what gRPC carries. A training maximum such as 7.9 arrives as 7.9000001, and must still be in range.
LOW, HIGH = np.array([METADATA["feature_ranges"][name] for name in FEATURES], dtype=np.float32).T

MODEL.info({key: METADATA[key] for key in ("name", "version", "sha256")})
# Every series starts at 0 rather than appearing at its first event: rate() and alerts need a value before it.
for label in METADATA["classes"]:
    PREDICTIONS.labels(label)
for name in FEATURES:
    OUT_OF_RANGE.labels(name)


def observe(rows, labels):
    """Count the predicted classes, and each feature value outside its training range (rows in FEATURES order)."""
    for label, count in Tally(labels).items():
        PREDICTIONS.labels(label).inc(count)
    values = np.asarray(rows, dtype=np.float32)
    outside = ((values < LOW) | (values > HIGH)).sum(axis=0)
    for name, count in zip(FEATURES, outside.tolist()):
        if count:
            OUT_OF_RANGE.labels(name).inc(count)


class JsonLines(logging.Formatter):
    """One JSON object per line: log collectors (Loki, CloudWatch, Elasticsearch) parse it without a regex."""

    def format(self, record):
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                **getattr(record, "fields", {})}
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)  # the whole stack trace, inside this one line
        return json.dumps(line, default=str)


def log_json(level=logging.INFO):
    """Send every log record of the process, the web server's and warnings included, to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.captureWarnings(True)
