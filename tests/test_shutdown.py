"""A planned stop loses no request and exits 0: every production server of the course, under load.

course/shutdown.py (lesson 05's measurement) runs 64 clients against each server, a readiness poller that
makes them stop sending as a load balancer would, and SIGTERM after 0.5 s. Each server runs with
DRAIN_SECONDS=1: the poller needed up to 0.22 s to see "not ready" under this load (the health check waits
its turn behind the clients' requests), so 1 s leaves a margin on a busy machine; the notebook uses 0.5 s.
"""

import signal
import sys
import textwrap

import pytest

from course import shutdown
from course.server import BackgroundServer

DRAIN_SECONDS = 1.0
# Past the drain, uvicorn and the gRPC servers took under 0.7 s to close and finish, gunicorn up to 2.6 s
# (its workers notice the stop at their next 1 s poll). 4 s tells slow from hung.
EXIT_BOUND = DRAIN_SECONDS + 4


@pytest.mark.parametrize("name", shutdown.PRODUCTION)
def test_a_planned_stop_loses_nothing_and_exits_0(name):
    server = shutdown.start(name, DRAIN_SECONDS)
    result = shutdown.measure(server, shutdown.SERVERS[name][1])
    report = f"{name}: {result}\n{server.log()[-3000:]}"
    assert result.sent >= shutdown.CLIENTS, report  # enough load that a stop which drops requests shows it
    assert result.lost == 0 and result.answered == result.sent, report
    # Readiness failed first, while the server was still serving: that is what told the clients to stop.
    assert result.not_ready_after is not None and 0 <= result.not_ready_after < DRAIN_SECONDS, report
    assert result.exit_code == 0, report
    assert result.seconds_to_exit is not None and result.seconds_to_exit < EXIT_BOUND, report


def test_the_development_server_cannot_promise_it():
    # Flask's development server has no SIGTERM handler: the signal kills it with its requests in flight.
    # Measured 10 times before writing this: 64 to 66 lost each time, as the 64 clients are always waiting
    # on it (it answers ~600 a second); so "some are lost" is what always happens, not a lucky draw.
    result = shutdown.measure(shutdown.start("Flask dev server (01)", DRAIN_SECONDS), "rest")
    assert result.exit_code == -signal.SIGTERM, result  # 143 in a container: killed, not exited
    assert result.lost > 0, result
    assert "wrong answer" not in result.reasons, result  # cut off, not answered wrongly


def test_a_wrong_answer_counts_as_lost(tmp_path):
    # The measurement compares every answer with the in-process model, so a server that answers
    # 200 with slightly wrong probabilities loses everything it is sent.
    script = tmp_path / "off_by_a_bit.py"
    script.write_text(textwrap.dedent("""
        import json, os
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer({"status": "ok"})
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.answer({"prediction": 0, "label": "setosa", "probabilities": [0.999, 0.001, 0.0]})
            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            def log_message(self, *args):
                pass

        ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
    """))
    server = BackgroundServer([sys.executable, str(script)]).start()
    result = shutdown.measure(server, "rest")
    assert result.sent > 0 and result.answered == 0 and result.reasons["wrong answer"] > 0, result
