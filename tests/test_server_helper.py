import sys
import textwrap

import psutil
import pytest

from course.server import BackgroundServer, ServerFailedToStart, free_port, start_server


def alive(pid):
    """Running, that is: a killed orphan may linger as a zombie until PID 1 reaps it. psutil tells on Linux, macOS
    and WSL alike, and raises (failing the test) where it cannot tell, instead of answering "not alive"."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_alive_tells_a_running_process_from_a_finished_one():
    with start_server([sys.executable, "-c", "import time; time.sleep(60)"], ready=lambda s: True) as server:
        assert alive(server.pid)
    assert not alive(server.pid)


def test_server_is_stopped_when_the_block_fails():
    with pytest.raises(ZeroDivisionError):
        with start_server([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"],
                          ready=lambda s: True) as server:
            pid = server.pid
            1 / 0
    assert not alive(pid)


def test_forked_children_are_stopped_too(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys, time, pathlib
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(tmp_path / 'child.pid')!r}).write_text(str(child.pid))
        time.sleep(60)
    """))
    pid_file = tmp_path / "child.pid"
    with start_server([sys.executable, str(script)], ready=lambda s: pid_file.exists()):
        pass
    child = int(pid_file.read_text())
    assert not alive(child)


def test_a_server_that_dies_reports_its_log():
    with pytest.raises(ServerFailedToStart) as error:
        start_server([sys.executable, "-c", "raise SystemExit('model file is missing')"], timeout=10)
    assert "model file is missing" in str(error.value)
    assert "exited with code 1" in str(error.value)


def test_a_server_that_never_gets_ready_times_out_and_is_stopped():
    server = BackgroundServer([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    with pytest.raises(ServerFailedToStart, match="not ready"):
        server.start()
    assert server.process.poll() is not None


def test_free_port_can_be_bound():
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
