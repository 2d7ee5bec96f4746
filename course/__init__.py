"""Shared plumbing for the course: model loading, quizzes, and background servers.

Lessons import from here so that each lesson file only shows the idea it teaches.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
DEFAULT_MODEL_PATH = REPO / "models" / "iris.joblib"


def import_lesson(relative_path: str):
    """The one way the course imports a lesson's file: `import_lesson("02-fastapi/app.py")`.

    Lesson folders start with a digit, so `import` cannot name them; the file is loaded by path, once per
    process, always under the same module name (`lesson_02_fastapi_app`). Its folder goes on `sys.path`
    first, as `python lessons/02-fastapi/app.py` would put it, so that the file's own imports of its
    neighbours work as they do when a learner runs it (`import model_pb2`, `import monitoring`). The
    generated gRPC stubs too: `import_lesson("03-grpc/model_pb2_grpc.py")`. A worked answer is named from the
    repository root: `import_lesson("solutions/03-grpc/batching.py")` (module `solutions_03_grpc_batching`).
    """
    import importlib.util
    import sys

    path = REPO / relative_path if relative_path.startswith("solutions/") else LESSONS / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"no lesson file {relative_path} (expected {path})")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    prefix = "" if relative_path.startswith("solutions/") else "lesson_"
    name = prefix + "".join(c if c.isalnum() else "_" for c in relative_path.removesuffix(".py"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
