"""The course's own documents agree with each other: each lesson's time is said in its README, and the course
README's table and the lesson's notebook repeat it, never another figure."""

import json
import re

import pytest

from course import LESSONS, REPO

LESSON_FOLDERS = sorted(path.name for path in LESSONS.iterdir() if (path / "README.md").exists())
MINUTES = re.compile(r"[Aa]bout (\d+) minutes")


def lesson_minutes(folder):
    found = MINUTES.search((LESSONS / folder / "README.md").read_text())
    assert found, f"lessons/{folder}/README.md does not say how long the lesson takes ('About N minutes')"
    return int(found.group(1))


@pytest.mark.parametrize("folder", LESSON_FOLDERS)
def test_the_course_readme_gives_each_lesson_the_time_its_readme_gives(folder):
    number = folder[:2] if folder[:2].isdigit() else folder  # "recap" has no number: it stays the last
    row = re.search(rf"^\| {number} \|.*\| (\d+) min \|$", (REPO / "README.md").read_text(), re.M)
    assert row, f"README.md has no table row for lesson {number}"
    assert int(row.group(1)) == lesson_minutes(folder)


@pytest.mark.parametrize("folder", LESSON_FOLDERS)
def test_a_notebook_that_says_how_long_it_takes_agrees_with_its_readme(folder):
    notebook = LESSONS / folder / "notebook.ipynb"
    text = " ".join("".join(cell["source"]) for cell in json.loads(notebook.read_text())["cells"]
                    if cell["cell_type"] == "markdown")
    for said in re.findall(r"About (\d+) minutes", text):  # the lesson's own time; "about 4 minutes" is a step's
        assert int(said) == lesson_minutes(folder), f"{notebook.name} says {said} minutes"


def test_the_recap_is_the_last_row_of_the_course_readme():
    rows = re.findall(r"^\| (\w+) \| \[", (REPO / "README.md").read_text(), re.M)
    assert rows[-1] == "recap" and rows[:-1] == sorted(rows[:-1]), rows
