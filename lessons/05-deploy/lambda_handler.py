"""Lesson 02's FastAPI app as an AWS Lambda function behind API Gateway, unchanged: Mangum adapts.

API Gateway does not speak HTTP to a Lambda function: it calls `handler(event, context)` with the
request described as a dict (the *event*), and expects a dict back. Mangum turns the event into
the ASGI call FastAPI expects, and FastAPI's response into that dict. It understands both API
Gateway flavours: HTTP APIs (payload format 2.0) and REST APIs (format 1.0), and ALB events too.

    Lambda setting "Handler": lambda_handler.handler
    Try it here:  python lessons/05-deploy/lambda_handler.py lessons/05-deploy/events/http-api-v2-predict.json
"""

import atexit
import json
import sys
from contextlib import ExitStack
from pathlib import Path

from mangum import Mangum
from mangum.protocols import LifespanCycle

from course import import_lesson

# In a deployment package, app.py sits beside this file and this is `import app as fastapi_app`.
# In the course it lives in lesson 02's folder, and the course's helper loads it from there.
fastapi_app = import_lesson("02-fastapi/app.py")

# Lambda imports this module once per container (its "init phase"), then calls `handler` for every
# request the container gets. So the app's start-up, which loads and checks the model, runs here, once:
# with lifespan="auto", Mangum would run it around every invocation (Kludex/mangum#342).
# "on": if the model fails its check, the init phase fails and Lambda reports that, rather than each call.
handler = Mangum(fastapi_app.app, lifespan="off")
container = ExitStack()
container.enter_context(LifespanCycle(fastapi_app.app, "on"))  # on the event loop Mangum set up for its calls
# Lambda freezes and ends containers without notice; where a process does exit (a local run, the tests),
# the app's shutdown half runs too.
atexit.register(container.close)


if __name__ == "__main__":
    # What `sam local invoke -e event.json` would do, without Docker or AWS.
    event = json.loads(Path(sys.argv[1]).read_text())
    print(json.dumps(handler(event, None), indent=2))
