"""Lesson 09's exercise, a worked answer: a failed batch fails only the request that broke it.

    python lessons/09-throughput/fragile_model.py /tmp/fragile      # a model that fails on negative lengths
    MODEL_PATH=/tmp/fragile/iris.joblib MAX_WAIT_MS=500 python solutions/09-throughput/server.py

The lesson's server, with its batcher replaced by one whose answer() retries a failed batch one row at a time.

What the retry costs: when a batch fails, one model call per row on top of the failed one. On this model a call for
one row costs about what a call for the whole batch did (notebook, section 1), so a failed batch of 40 costs about
40 calls instead of 1, once. That is cheap while failures are rare; a row that fails on every call costs its batch
this every time, which is why the failure is logged (and, in lesson 06's style, worth counting and alerting on).
Nothing is retried when a batch of one fails: its error is already that row's.
"""

import os

import uvicorn

from course import import_lesson

lesson = import_lesson("09-throughput/server.py")


class RetryAlone(lesson.Batcher):
    def answer(self, batch):
        if len(batch) == 1:
            return super().answer(batch)  # alone: an answer, or an error that is this row's own
        try:
            predictions = lesson.api.predict_rows([row for row, _, _ in batch])
        except Exception:
            lesson.log.warning("a batch of %d rows failed: retrying its rows one at a time", len(batch))
            for item in batch:
                super().answer([item])  # the lesson's answer() for a batch of one
            return
        for (_, future, _), prediction in zip(batch, predictions):
            future.set_result(prediction)


# The route and the lifespan look `batcher` up when they run: replacing it before the server starts is enough.
lesson.batcher = RetryAlone(lesson.MAX_BATCH_SIZE, lesson.MAX_WAIT_MS / 1000)

if __name__ == "__main__":
    config = uvicorn.Config(lesson.app, host=os.environ.get("HOST", "127.0.0.1"),
                            port=int(os.environ.get("PORT", "8000")), access_log=False)
    lesson.api.DrainFirst(config).run()
