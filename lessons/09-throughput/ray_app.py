"""Lesson 09: the iris model as a Ray Serve application, batched by @serve.batch, scaled by replicas.

    make ray                                                        # once: Ray's own virtualenv, .cache/ray-venv
    .cache/ray-venv/bin/python lessons/09-throughput/ray_app.py     # http://127.0.0.1:8000 (env HOST, PORT)

This starts a one-machine Ray cluster, then Serve: an HTTP proxy actor, and replica actors of IrisClassifier.
On a real cluster you do not run this file: `serve run ray_app:app`, or KubeRay's RayService (rayservice.yaml
beside this file) deploys `app` onto many machines. POST /predict takes and answers lesson 02's JSON, checked by
lesson 02's Features; Ray Serve does the batching that server.py does by hand.
"""

import os
import secrets

# Ray's processes listen on this machine's network address, so that other machines can join the cluster. Alone on
# one machine, they had better stay on 127.0.0.1: this says so (Ray reads it on import; the name is historical).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray guards a new local cluster with a token, which it otherwise writes to ~/.ray/auth_token: this run's own instead.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

import signal  # noqa: E402  (after the line above, like the other imports)
from operator import attrgetter  # noqa: E402

from fastapi import FastAPI  # noqa: E402
from ray import cloudpickle, serve  # noqa: E402

from course import import_lesson  # noqa: E402
from course.errors import add_error_handlers  # noqa: E402
from course.model import load_model  # noqa: E402

api = import_lesson("02-fastapi/app.py")  # lesson 02: Features, Prediction, its limits
# Ray ships the deployment and its FastAPI routes to other processes by pickling them, by reference to their module
# when it can: import_lesson's module names exist in this process only, so lesson 02's classes travel by value.
cloudpickle.register_pickle_by_value(api)
web = FastAPI(title="Iris classifier on Ray Serve")
add_error_handlers(web, api.Features, limit=api.LIMIT, max_batch=api.MAX_BATCH)


@serve.deployment(
    # Replicas come and go with the load: Serve counts the requests each replica holds (queued or running)
    # and adds a replica when they pass the target, up to max_replicas; each replica is a process (an actor).
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
    max_ongoing_requests=128,  # per replica: more requests than this wait in the proxy, not in the replica
    ray_actor_options={"num_cpus": 1},  # so Ray places at most one replica per core
    # A replica that is told to stop finishes its requests first, checking every 0.2 s (default 2 s) whether they are
    # done, and for 10 s at most (default 20 s).
    graceful_shutdown_wait_loop_s=0.2,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(web)
class IrisClassifier:
    def __init__(self):
        self.model = load_model()  # MODEL_PATH, or the repo's trained model: once per replica
        self.row = attrgetter(*self.model.features)

    @web.get("/health")
    async def health(self):  # answered by a replica: ready means the model is loaded somewhere
        return {"status": "ok"}

    @web.post("/predict")
    async def predict(self, features: api.Features) -> api.Prediction:
        return await self.predict_rows(self.row(features))

    # Calls made while a batch is running are queued and handed over as one list: up to 64, waiting 2 ms at most.
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict_rows(self, rows: list) -> list:
        probabilities = self.model.estimator.predict_proba(rows)
        return [api.Prediction(prediction=best, label=self.model.classes[best], probabilities=p)
                for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]


app = IrisClassifier.bind()  # what `serve run ray_app:app` and the RayService's import_path name


def main():
    import ray

    # A one-machine cluster, with no dashboard (a web UI and its processes); RAY_TMPDIR says where Ray keeps its
    # sockets and logs (default /tmp/ray).
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    signal.signal(signal.SIGTERM, stop)  # SIGTERM (docker stop, kubelet, BackgroundServer) acts like Ctrl+C
    try:
        serve.start(http_options={"host": os.environ.get("HOST", "127.0.0.1"),
                                  "port": int(os.environ.get("PORT", "8000"))})
        serve.run(app, blocking=True)  # until Ctrl+C or SIGTERM
    except KeyboardInterrupt:
        pass
    finally:  # stop Serve, then every process ray.init started: nothing is left running
        serve.shutdown()
        ray.shutdown()


def stop(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Ray pickles the deployment to send it to the replica processes, and they import the module it came from.
    # Run as a script this file is __main__, which no other process can import: so it imports itself by name.
    import ray_app

    ray_app.main()
