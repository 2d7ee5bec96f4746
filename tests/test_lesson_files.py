"""A later lesson's server that repeats an earlier one stays in step with it: the test pins the difference to the
lines that are meant to differ, so an edit to lesson 02 that lesson 06 misses fails here, not in a learner's hands."""

from pathlib import Path

from course import LESSONS, REPO


def code(path):
    """A lesson file without its module docstring, as lines."""
    text = (LESSONS / path).read_text()
    return text[text.index('"""', 3) + 3:].splitlines()


# Lesson 02's ENGINE switch (scikit-learn, or onnxruntime on the converted pipeline). The written-out servers of lessons
# 06 and 10 leave it out, to stay readable top to bottom: they run the model with scikit-learn, lesson 02's default.
ENGINE_SWITCH = [
    "# Which library runs the model. scikit-learn checks its input on every call, and on one row that is most of the "
    "call;",
    "# onnxruntime runs the same pipeline, converted at start-up, without those checks (the notebook measures both).",
    'ENGINE = os.environ.get("ENGINE", "sklearn")',
    "def onnxruntime_predict_proba(model):",
    "    # Imported here, not above: the default engine, and lesson 04's image of this server, do without them.",
    "    import numpy as np",
    "    import onnxruntime",
    "    from skl2onnx import to_onnx",
    "    from skl2onnx.common.data_types import DoubleTensorType",
    "    # float64 in, as scikit-learn computes: the probabilities agree with it to ~1e-16, not to float32's 7 digits.",
    '    graph = to_onnx(model.estimator, initial_types=[("features", DoubleTensorType([None, len(model.features)]))],',
    '                    options={"zipmap": False})',
    '    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])',
    '    return lambda rows: session.run(["probabilities"], {"features": np.array(rows, dtype=np.float64)})[0]',
    '    if ENGINE not in ("sklearn", "onnxruntime"):',
    '        raise RuntimeError(f"ENGINE={ENGINE!r}: expected sklearn (the default) or onnxruntime")',
    '    ml["predict_proba"] = model.estimator.predict_proba if ENGINE == "sklearn" else onnxruntime_predict_proba(model)',
    '    probabilities = ml["predict_proba"](rows)',
]


def test_lesson_06_rest_server_is_lesson_02_plus_its_monitoring():
    lesson02, lesson06 = code("02-fastapi/app.py"), code("06-monitoring/app.py")
    assert all(line in lesson02 for line in ENGINE_SWITCH)
    # What lesson 06 replaces: two imports (it needs Request and Response too), predict_rows' return (it observes
    # first), and the start-up (JSON logs, uvicorn's own log config off).
    assert [line for line in lesson02 if line not in lesson06 and line not in ENGINE_SWITCH] == [
        "from fastapi import FastAPI",
        "from fastapi.responses import JSONResponse",
        "    return [Prediction(prediction=best, label=model.classes[best], probabilities=p)",
        "            for best, p in zip(probabilities.argmax(axis=1).tolist(), probabilities.tolist())]",
        "    # access_log=False: no log line per request, which is work on every request. Start-up, shutdown and",
        "    # errors are still logged; lesson 06 adds metrics and structured request logs.",
        "                            access_log=False)",
    ]
    # Everything else of lesson 02 is there, in lesson 02's order.
    kept = [line for line in lesson02 if line in lesson06 and line.strip()]  # blank lines say nothing of order
    remaining = iter(lesson06)
    assert all(line in remaining for line in kept), "lesson 06 has lesson 02's lines in another order"
    assert len(kept) > 80
    added = [line for line in lesson06 if line not in lesson02]
    assert any("monitoring.REQUESTS" in line for line in added) and any("def metrics" in line for line in added)
    assert "import_lesson" not in "\n".join(lesson06), "lesson 06 is a complete file, not a patch of lesson 02"


def test_no_lesson_server_reaches_into_another_lessons_folder_at_run_time():
    for path in ["02-fastapi/app.py", "06-monitoring/app.py", "03-grpc/server.py", "06-monitoring/grpc_server.py",
                 "01-flask/app.py"]:
        assert "sys.path.insert" not in (LESSONS / path).read_text(), path


def test_lesson_06_grpc_server_is_lesson_03_plus_its_monitoring():
    lesson03, lesson06 = code("03-grpc/server.py"), code("06-monitoring/grpc_server.py")
    # What lesson 06 replaces: the interceptors (Metrics joins), and print() by JSON log lines.
    assert [line for line in lesson03 if line not in lesson06] == [
        "    server = grpc.aio.server(interceptors=[RefuseBadRequests()])",
        "    print(f\"Serving {MODEL.metadata['name']} over gRPC on {host}:{port}\", flush=True)",
        '        print(f"{signum.name}: finishing in-flight calls, then stopping", flush=True)',
        '    print("Stopped", flush=True)',
    ]
    kept = [line for line in lesson03 if line in lesson06]
    remaining = iter(lesson06)
    assert all(line in remaining for line in kept), "lesson 06 has lesson 03's lines in another order"
    added = "\n".join(line for line in lesson06 if line not in lesson03)
    assert "class Metrics" in added and "start_http_server" in added and "import_lesson" not in added


def test_lesson_files_are_imported_one_way_under_one_name():
    """`course.import_lesson` is the only loader of lesson and solution files (tests, notebooks, solutions, course/):
    no second loader that would run a lesson module again under another name, no `sys.path` edits. The exception is
    start_once.py, which runs inside the image with the standard library only, as a learner's script would."""
    allowed = {REPO / "course/__init__.py", LESSONS / "04-docker/start_once.py"}
    offenders = []
    for folder in ("lessons", "solutions", "tests", "course", "tools"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in {".py", ".ipynb"} or path.name.endswith(("_pb2.py", "_pb2_grpc.py")) \
                    or path in allowed or path == Path(__file__) or ".ipynb_checkpoints" in path.parts:
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(REPO)}: {needle}" for needle in
                          ("spec_from_file_location", "sys.path.insert", "sys.path.append") if needle in text]
    assert not offenders, offenders


def test_lesson_09_builds_on_lesson_02_without_changing_it():
    """Lesson 09's server imports lesson 02's app and registers its pieces on an app of its own; it never assigns to
    lesson 02's module (the run-time patching lesson 06 used to do)."""
    import re
    for path in ["09-throughput/server.py", "09-throughput/ray_app.py"]:
        text = (LESSONS / path).read_text()
        assert 'import_lesson("02-fastapi/app.py")' in text
        assert not re.search(r"^\s*api\.[\w.\[\]\"']+\s*=[^=]", text, re.M), path
        assert "setattr(api" not in text, path
