"""Shared plumbing for the course: model loading, quizzes, and background servers.

Lessons import from here so that each lesson file only shows the idea it teaches.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
DEFAULT_MODEL_PATH = REPO / "models" / "iris.joblib"
