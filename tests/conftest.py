"""Shared fixtures, and the course's time budget: no notebook may take more than 30 s to run."""

import time
from collections import defaultdict
from pathlib import Path

import pytest

from course import REPO
from course.model import load_model

NOTEBOOK_BUDGET_SECONDS = 30
_notebook_seconds: dict[str, float] = defaultdict(float)


@pytest.fixture(scope="session")
def model():
    return load_model()


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _notebook_seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    slow = {nb: s for nb, s in _notebook_seconds.items() if s > NOTEBOOK_BUDGET_SECONDS}
    for nb, seconds in sorted(slow.items()):
        terminalreporter.write_line(f"NOTEBOOK OVER BUDGET: {nb} took {seconds:.1f} s "
                                    f"(limit {NOTEBOOK_BUDGET_SECONDS} s)", red=True)


def pytest_sessionfinish(session):
    if any(s > NOTEBOOK_BUDGET_SECONDS for s in _notebook_seconds.values()) and session.exitstatus == 0:
        session.exitstatus = 1
