"""Shared plumbing for the course: model loading, quizzes, and background servers.

Lessons import from here so that each lesson file only shows the idea it teaches.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
DEFAULT_MODEL_PATH = REPO / "models" / "iris.joblib"


def import_lesson(relative_path: str):
    """Import a lesson's file, e.g. `import_lesson("02-fastapi/app.py")`, to build on it.

    Lesson folders start with a digit, so `import` cannot name them; we load the file by path,
    once per process, under a module name derived from the path.
    """
    import importlib.util
    import sys

    name = "lesson_" + "".join(c if c.isalnum() else "_" for c in relative_path.removesuffix(".py"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LESSONS / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
