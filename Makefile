# The course's two commands: `make start` (set up, open Jupyter) and `make test` (set up, run every test).
# Everything else here is a step of those two, or a lesson's own target.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
MODEL := models/iris.joblib
STUBS := lessons/03-grpc/model_pb2.py lessons/03-grpc/model_pb2_grpc.py lessons/03-grpc/model_pb2.pyi

.PHONY: start test setup model protos outputs clean java mlserver

# Jupyter refuses to run as root unless told; root is normal in a container or a fresh WSL.
start: setup
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/lessons \
		$(if $(filter 0,$(shell id -u)),--allow-root)

test: setup
	$(BIN)/python -m pytest

setup: $(VENV)/.installed $(MODEL)

# Reinstalls only when requirements.txt changes, so a second `make start` is quick.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

model: $(MODEL)
$(MODEL): models/train.py $(VENV)/.installed
	$(BIN)/python models/train.py

# gRPC stubs are generated from protos/model.proto into each lesson that serves it, and from protos/inference.proto
# (the Open Inference Protocol) into lesson 08, and committed (tests check they are current).
protos: $(VENV)/.installed
	for lesson in lessons/03-grpc lessons/06-monitoring lessons/10-security; do \
		$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=$$lesson \
			--pyi_out=$$lesson --grpc_python_out=$$lesson protos/model.proto || exit 1; done
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=lessons/08-open-inference \
		--pyi_out=lessons/08-open-inference --grpc_python_out=lessons/08-open-inference protos/inference.proto

# Re-run every notebook in place so the committed outputs match the code.
outputs: setup
	for nb in lessons/*/*.ipynb solutions/*/*.ipynb; do \
		$(BIN)/jupyter nbconvert --to notebook --execute --inplace "$$nb" || exit 1; done

# Lesson 07: the Java gRPC client (lessons/07-choosing/java/), built from Debian packages only (see .ci/run).
java: setup
	tools/java-client.sh
	$(BIN)/python -m pytest tests/test_java_client.py

# Lessons 07 and 08: MLServer in its own virtualenv (.cache/mlserver-venv), the yardstick of `make bench`.
mlserver:
	tools/engine-venv.sh mlserver

# Lesson 09: Ray Serve in its own virtualenv (.cache/ray-venv; a few minutes and ~700 MB the first time).
.PHONY: ray
ray:
	tools/engine-venv.sh ray

# Lessons 07-09: every lesson server measured on this machine, with MLServer as the yardstick (about 8 minutes).
# Fails if the FastAPI lesson server, or lesson 08's V2 REST server, answers fewer single-row requests per second
# than MLServer, or if lesson 09's targets against MLServer's better configuration are missed (it prints which).
.PHONY: bench
bench: setup mlserver
	$(BIN)/python -m course.bench
	$(BIN)/python -m course.bench_throughput

clean:
	rm -rf $(VENV) models/*.joblib models/*.json .pytest_cache

# Lesson 04: build both images with Docker, or with Podman + Buildah where no Docker daemon runs
# (course/containers.py). The first build takes minutes and the network (base image, pip); the next
# ones take seconds, from the cache, offline too. Offline, a first build stops with one line saying what it needed.
.PHONY: image
image: setup
	$(BIN)/python -m course.containers build http grpc
