# Worked answer to lesson 04's exercise: lessons/04-docker/mistakes.Dockerfile, fixed.
# Single-stage on purpose, to show that each fix stands on its own; the lesson's Dockerfile adds a
# second stage so that its final image starts clean. From the repository root:
#
#   docker build -f solutions/04-docker/fixed.Dockerfile -t iris-api:fixed .

# Was `python:latest`: a pinned tag builds the same thing next month.
FROM python:3.11-slim
# Was: `COPY . .` then the course's whole requirements.txt, with pip's cache kept. Now the serving
# requirements alone, pinned, installed before any code is copied, without a cache, into a venv.
# These two lines are the same as in the lesson's Dockerfile, so Docker reuses its cached layer:
# the answer builds in seconds once the lesson's image is built.
COPY lessons/04-docker/requirements.txt /opt/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --no-compile -r /opt/requirements.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools
# The lesson slims this environment and compiles only what the server imports. Simpler here:
# no test suites, and bytecode for everything, which the server's user could not write later.
RUN find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && python -m compileall -q /opt/venv/lib
# Was: root. Now a user that owns nothing, with a numeric UID for Kubernetes' runAsNonRoot.
RUN useradd --system -l --uid 10001 --no-create-home --shell /usr/sbin/nologin app
# Was: API_TOKEN baked in, readable by anyone with the image. The server does not need it; one
# that did would get it when it starts: docker run -e API_TOKEN ...
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /app
# Was: everything, .venv and notebooks included. Now only what the server reads.
COPY models/iris.joblib models/iris.json models/
COPY course/__init__.py course/errors.py course/model.py course/
COPY lessons/02-fastapi/app.py lessons/02-fastapi/
USER 10001:10001
EXPOSE 8000
# Was the shell form: /bin/sh as PID 1 would swallow docker stop's SIGTERM.
CMD ["python", "lessons/02-fastapi/app.py"]
