"""Worked answer to the lesson 03 exercise: predictions for any number of rows.

PredictBatch takes 1 to 1000 instances, so a longer list is cut into batches of at most
`batch_size` rows, sent one after another, and the replies are put back together in order.
`timeout` is one deadline for the whole job, not per call: a caller who gives us 5 seconds
wants an answer (or an error) within 5 seconds, however many batches that takes.
"""

import time

from course import import_lesson

model_pb2 = import_lesson("03-grpc/model_pb2.py")  # generated from protos/model.proto

MAX_BATCH = 1000  # the server's limit: more in one call is INVALID_ARGUMENT


def predict_many(stub, rows, timeout=5.0, batch_size=MAX_BATCH):
    """One PredictReply per row, in the order of `rows`; [] for no rows (an empty batch is invalid)."""
    deadline = time.monotonic() + timeout
    replies = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        request = model_pb2.PredictBatchRequest(
            instances=[model_pb2.PredictRequest(features=row) for row in chunk])
        # Each call gets what is left of the deadline; if nothing is left, gRPC fails it
        # at once with DEADLINE_EXCEEDED instead of starting work nobody will wait for.
        replies.extend(stub.PredictBatch(request, timeout=deadline - time.monotonic()).predictions)
    return replies
