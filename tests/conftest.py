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


def report_slow_notebooks(terminalreporter):
    slow = {nb: s for nb, s in _notebook_seconds.items() if s > NOTEBOOK_BUDGET_SECONDS}
    for nb, seconds in sorted(slow.items()):
        terminalreporter.write_line(f"NOTEBOOK OVER BUDGET: {nb} took {seconds:.1f} s "
                                    f"(limit {NOTEBOOK_BUDGET_SECONDS} s)", red=True)


def pytest_sessionfinish(session):
    if any(s > NOTEBOOK_BUDGET_SECONDS for s in _notebook_seconds.values()) and session.exitstatus == 0:
        session.exitstatus = 1


# ---- what a machine without Docker, Prometheus, Java or wrk skipped, in one line per reason ---------------------

LESSON_OF_TEST_FILE = {"test_container.py": "04", "test_deploy.py": "05", "test_monitoring.py": "06",
                       "test_bench.py": "07", "test_java_client.py": "07", "test_make_start.py": "all"}


def report_skipped_tools(terminalreporter):
    by_reason: dict[str, set[str]] = defaultdict(set)
    counts: dict[str, int] = defaultdict(int)
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        test_file = Path(report.nodeid.split("::")[0]).name
        by_reason[reason].add(LESSON_OF_TEST_FILE.get(test_file, test_file))
        counts[reason] += 1
    if by_reason:
        terminalreporter.section("skipped because a tool is missing (everything else ran)")
    for reason, lessons in sorted(by_reason.items()):
        terminalreporter.write_line(f"{counts[reason]} test(s) of lesson {', '.join(sorted(lessons))}: {reason}")


def pytest_terminal_summary(terminalreporter):
    report_skipped_tools(terminalreporter)
    report_slow_notebooks(terminalreporter)
