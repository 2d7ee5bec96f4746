"""`make start` opens a working course: run its exact Jupyter command and ask the server for the lessons."""

import shlex
import shutil
import subprocess

import pytest
import requests

from course import REPO
from course.server import BackgroundServer, free_port, http_ready

TOKEN = "course-test-token"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed: install make "
                    "(Debian/Ubuntu: apt-get install make; macOS: xcode-select --install)")
def test_make_start_serves_jupyter_lab_on_the_lessons():
    dry_run = subprocess.run(["make", "-n", "start"], cwd=REPO, capture_output=True, text=True, check=True)
    # The recipe is one command split over lines with backslashes.
    recipe = dry_run.stdout.replace("\\\n", " ")
    jupyter_command = [line for line in recipe.splitlines() if "jupyter lab" in line][-1]
    port = free_port()
    command = shlex.split(jupyter_command) + [
        "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}"]
    with BackgroundServer(command, port=port, ready=http_ready("/api"), timeout=60) as jupyter:
        auth = {"Authorization": f"token {TOKEN}"}
        lessons = requests.get(f"{jupyter.url}/api/contents/lessons", headers=auth).json()
        names = {entry["name"] for entry in lessons["content"]}
        assert "00-why-serve" in names
        notebook = requests.get(f"{jupyter.url}/api/contents/lessons/00-why-serve/notebook.ipynb", headers=auth)
        assert notebook.json()["type"] == "notebook"
        assert requests.get(f"{jupyter.url}/lab", headers=auth).status_code == 200
