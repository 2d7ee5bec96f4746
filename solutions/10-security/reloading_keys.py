"""Lesson 10, exercise: revoke or add an API key without restarting the server.

Kubernetes rewrites the files of a mounted Secret in place (within about a minute of the Secret's update), but
lesson 10's servers read API_KEYS_FILE once, at start. ReloadingApiKeys reads it again when it changes:

    KEYS = ReloadingApiKeys()      # in app.py or grpc_server.py, instead of KEYS = ApiKeys()

A file that becomes unusable (emptied, or holding a short key) while the server runs keeps the keys it had and
logs an error: a half-finished edit must not lock every client out, nor let anyone in.
tests/test_security.py checks it on real files.
"""

import os
import time
from pathlib import Path

from course import import_lesson

security = import_lesson("10-security/security.py")


class ReloadingApiKeys(security.ApiKeys):
    """ApiKeys that re-reads API_KEYS_FILE when its modification time changes, looking at most every `every` s."""

    def __init__(self, environ=os.environ, every: float = 1.0):
        super().__init__(environ)
        self.environ, self.every = environ, every
        self.path = Path(environ["API_KEYS_FILE"])
        self.looked, self.seen = time.monotonic(), self.path.stat().st_mtime_ns

    def identify(self, candidate: str) -> str | None:
        if time.monotonic() - self.looked >= self.every:  # a stat() per request would be wasted work
            self.looked = time.monotonic()
            # stat() follows symbolic links: the kubelet swaps a link to a new folder, the file's time changes.
            changed = self.path.stat().st_mtime_ns
            if changed != self.seen:
                self.seen = changed
                try:
                    self.digests = security.ApiKeys(self.environ).digests
                except SystemExit as unusable:
                    security.log.error("API keys NOT reloaded; keeping the previous ones",
                                       extra={"fields": {"reason": str(unusable)}})
        return super().identify(candidate)
