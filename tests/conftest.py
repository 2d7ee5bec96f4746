"""Shared fixtures, and the course's time budget: no notebook may take more than 30 s to run.

Also: a run leaves nothing behind (Hypothesis keeps its caches in a temporary folder, removed at the end), and
the summary says in one line per missing tool which lessons' tests were skipped and what to install.
"""

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from course import REPO
from course.model import load_model

# Hypothesis (tests/test_attacks_rest.py, tests/test_grpc_attacks.py, Schemathesis in a subprocess) writes caches
# to ./.hypothesis even with database=None: its Unicode tables and the constants it collects from the code under
# test. They go to a temporary folder instead, which this process removes at exit; subprocesses inherit it.
_HYPOTHESIS_HOME = (os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY")
                    or tempfile.mkdtemp(prefix="course-tests-hypothesis-"))
os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = _HYPOTHESIS_HOME
set_hypothesis_home_dir(_HYPOTHESIS_HOME)  # in case Hypothesis looked before this file was imported

# Jupyter kernels (nbval), IPython and matplotlib keep profiles, runtime files and caches in the home folder unless
# told otherwise: here they go to .cache/home (git ignores .cache/), so a test run leaves the home folder as it was.
for variable, folder in {"IPYTHONDIR": "ipython", "JUPYTER_CONFIG_DIR": "jupyter-config", "JUPYTER_DATA_DIR": "jupyter",
                         "JUPYTER_RUNTIME_DIR": "jupyter/runtime", "MPLCONFIGDIR": "matplotlib"}.items():
    os.environ.setdefault(variable, str(REPO / ".cache" / "home" / folder))

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


def pytest_unconfigure(config):
    if _HYPOTHESIS_HOME.startswith(os.path.join(tempfile.gettempdir(), "course-tests-hypothesis-")):
        shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)  # ours: made above, not one set by whoever ran us


# ---- what a machine without Docker, Prometheus, Java or wrk skipped, in one line per reason ---------------------
# Each skip's reason says what is missing and what to install: "wrk is not installed: install wrk (Debian/Ubuntu:
# apt-get install wrk; macOS: brew install wrk)". The same reason from several files is one line, naming the lessons.

LESSON_OF_TEST_FILE = {
    "test_lesson00.py": "00", "test_flask.py": "01", "test_fastapi.py": "02", "test_contract.py": "01-03",
    "test_grpc.py": "03", "test_grpc_attacks.py": "03", "test_attacks_rest.py": "00-02, 06, 09",
    "test_container.py": "04", "test_deploy.py": "05", "test_shutdown.py": "05", "test_monitoring.py": "06",
    "test_bench.py": "07", "test_java_client.py": "07", "test_make_start.py": "all",
    "test_security.py": "10", "test_security_attacks.py": "10",
    "test_open_inference.py": "08", "test_open_inference_conformance.py": "08",
    "test_throughput.py": "09", "test_ray_serve.py": "09", "test_attacks_lessons_08_10.py": "08, 10",
}


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
        terminalreporter.section("skipped, and what to install to run them (everything else ran)")
    for reason, lessons in sorted(by_reason.items()):
        which = f"lesson {', '.join(sorted(lessons))}" if all(lesson[0].isdigit() or lesson == "all"
                                                              for lesson in lessons) else ", ".join(sorted(lessons))
        terminalreporter.write_line(f"{counts[reason]} test(s) of {which}: {' '.join(reason.split())}", yellow=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    # Around pytest's own summary, so that these lines come after its list of every skip and failure: last.
    yield
    report_skipped_tools(terminalreporter)
    report_slow_notebooks(terminalreporter)
