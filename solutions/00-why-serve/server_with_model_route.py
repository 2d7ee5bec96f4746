"""Exercise 00, worked answer: the lesson's standard-library server plus `GET /model`.

    python solutions/00-why-serve/server_with_model_route.py

Rather than copying the lesson's server, we reuse its handler and add one route.
"""

import os
from http.server import ThreadingHTTPServer

from course import import_lesson

lesson = import_lesson("00-why-serve/server.py")

PUBLIC_METADATA = ("name", "version", "features", "classes")


class HandlerWithModelRoute(lesson.PredictHandler):
    def do_GET(self):
        if self.path == "/model":
            return self.reply(200, {key: lesson.MODEL.metadata[key] for key in PUBLIC_METADATA})
        super().do_GET()


if __name__ == "__main__":
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    print(f"Serving {lesson.MODEL.metadata['name']} with GET /model on http://{host}:{port}", flush=True)
    ThreadingHTTPServer((host, port), HandlerWithModelRoute).serve_forever()
