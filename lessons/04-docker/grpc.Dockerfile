# Lesson 03's gRPC server in a container image: the same recipe as ./Dockerfile, line for line,
# with the gRPC libraries instead of FastAPI's, and the gRPC health check instead of GET /health.
#
#   docker build -f lessons/04-docker/grpc.Dockerfile -t iris-grpc:1.0.0 .
#   docker run --rm -p 50051:50051 iris-grpc:1.0.0
#
# A separate image, not the HTTP image with another command: each one carries only its own
# server's libraries, and its own port, HEALTHCHECK and CMD, so `docker run` needs no arguments.

FROM python:3.11-slim AS build
COPY lessons/04-docker/requirements-grpc.txt /opt/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps --no-compile -r /opt/requirements.txt \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools
# The test suites and C sources go, as in ./Dockerfile.
RUN find /opt/venv -depth -type d -name tests -exec rm -rf {} + \
    && find /opt/venv -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.c' \
         -o -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.a' -o -name '*.pyi' \) -delete \
    && du -sh /opt/venv

FROM python:3.11-slim
RUN useradd --system -l --uid 10001 --no-create-home --shell /usr/sbin/nologin app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_PATH=/app/models/iris.joblib \
    HOST=0.0.0.0 \
    PORT=50051
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY models/iris.joblib models/iris.json models/
COPY course/__init__.py course/model.py course/
COPY lessons/04-docker/healthcheck.py lessons/04-docker/start_once.py lessons/04-docker/
# The generated stubs come along: the server imports them from its own folder.
COPY lessons/03-grpc/server.py lessons/03-grpc/model_pb2.py lessons/03-grpc/model_pb2_grpc.py lessons/03-grpc/
RUN python lessons/04-docker/start_once.py grpc lessons/03-grpc/server.py
USER 10001:10001
RUN python -W error -c "from course.model import load_model; load_model()"
EXPOSE 50051
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "lessons/04-docker/healthcheck.py", "grpc"]
CMD ["python", "lessons/03-grpc/server.py"]
