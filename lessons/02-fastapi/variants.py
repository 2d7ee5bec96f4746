"""app.py plus the two endpoints written the other way round, for the measurement in the notebook.

    python lessons/02-fastapi/variants.py      # or, from this folder: uvicorn variants:app

POST /variants/predict is /predict as a plain `def`; POST /variants/predict/batch is /predict/batch
as an `async def`. Same models, same start-up, same answers: only where the model runs changes.
Serving both styles from one process lets the notebook compare them under the same conditions.
"""

import os

import uvicorn

from app import BatchPrediction, BatchRequest, Features, Prediction, app, ml, predict_rows


@app.post("/variants/predict")
def predict_in_thread(features: Features) -> Prediction:
    # FastAPI hands a `def` to a worker thread, and the result back to the event loop.
    return predict_rows([ml["row"](features)])[0]


@app.post("/variants/predict/batch")
async def predict_batch_on_loop(batch: BatchRequest) -> BatchPrediction:
    # Nothing is awaited: until all rows are predicted, the event loop serves no one else.
    row = ml["row"]
    return BatchPrediction(predictions=predict_rows([row(x) for x in batch.instances]))


if __name__ == "__main__":
    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000")),
                access_log=False)
