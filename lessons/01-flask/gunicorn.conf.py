"""gunicorn's settings for lesson 01's app, as a production server runs it. From the repository root:

    gunicorn -c lessons/01-flask/gunicorn.conf.py      # 127.0.0.1:5000 (env HOST, PORT, DRAIN_SECONDS)

Each setting below fixes a failure that the notebook shows with gunicorn's defaults.
"""

import os
import signal
import time

chdir = os.path.dirname(os.path.abspath(__file__))  # app.py's folder, wherever gunicorn is started from
wsgi_app = "app:app"
# The master imports app.py (and loads the model) once, before it forks: a worker that replaces a dead one is ready
# at once, and the workers share the model's memory until they write to it.
preload_app = True
bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"

# The default "sync" worker reads one request at a time: a client that sends half a body and stalls holds the
# whole worker (health checks included) until `timeout` kills it. A gthread worker gives each connection a
# thread, so a slow client holds one thread. Many slow clients need a buffering proxy in front (nginx).
worker_class = "gthread"
workers = 2
threads = 8

control_socket_disable = True  # gunicorn 25+ opens a control socket in ~/.gunicorn by default; we never use it

# A planned stop that loses nothing. gunicorn's own SIGTERM closes the listening socket at once, and the
# requests waiting in it are reset. So first: /health answers 503 (load balancers stop sending), keep
# serving DRAIN_SECONDS, and only then gunicorn's graceful stop, which finishes the requests in progress.
DRAIN_SECONDS = float(os.environ.get("DRAIN_SECONDS", "1"))
graceful_timeout = 5  # then in-flight requests get 5 s: all of it within docker stop's 10 s


def post_worker_init(worker):
    # In each worker, once app.py is loaded: SIGUSR2 from the master below means "answer /health with 503".
    signal.signal(signal.SIGUSR2, lambda signum, frame: worker.wsgi.config.update(DRAINING=True))


def when_ready(arbiter):
    stop = arbiter.handle_term  # raises StopIteration: gunicorn's graceful stop

    def drain_then_stop():
        arbiter.log.info("SIGTERM: /health answers 503; serving %s s more, then stopping", DRAIN_SECONDS)
        arbiter.kill_workers(signal.SIGUSR2)
        time.sleep(DRAIN_SECONDS)
        stop()

    arbiter.handle_term = drain_then_stop
