"""HTTP for the local SageMaker: one threaded server answers both the control plane
(POST / with X-Amz-Target) and the runtime (POST /endpoints/<name>/invocations), so
AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME can name the same URL.
`GET /_local/training-jobs/<name>/log` returns a job's log (what CloudWatch would hold).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from ..wsgi_server import ThreadedServer
from .config import Settings
from .exceptions import ResourceNotFound
from .backend import SageMakerBackend
from .responses import Reply, SageMakerResponses, error_reply

INVOCATIONS = re.compile(r"^/endpoints/([^/]+)/invocations$")
LOG = re.compile(r"^/_local/training-jobs/([^/]+)/log$")


def wsgi_app(responses: SageMakerResponses):
    def app(environ: dict[str, Any], start_response) -> Iterable[bytes]:
        request = Request(environ)
        reply = route(responses, request)
        return Response(reply.body, status=reply.status, headers=reply.headers)(environ, start_response)
    return app


def route(responses: SageMakerResponses, request: Request) -> Reply:
    invocation = INVOCATIONS.match(request.path)
    if request.method == "POST" and invocation:
        return responses.invoke_endpoint(invocation.group(1), request.get_data(), dict(request.headers))
    if request.method == "POST" and request.headers.get("X-Amz-Target"):
        return responses.control_plane(request.headers["X-Amz-Target"], request.get_data())
    log = LOG.match(request.path)
    if request.method == "GET" and log:
        try:
            return Reply(200, responses.backend.training_job_log(log.group(1)).encode(),
                         {"Content-Type": "text/plain; charset=utf-8"})
        except ResourceNotFound as error:
            return error_reply(error)
    if request.method == "GET" and request.path in ("/", "/ping"):
        return Reply(200, b"local SageMaker\n", {"Content-Type": "text/plain"})
    return Reply(404, b'{"__type": "UnknownOperationException", "message": "no such route"}',
                 {"Content-Type": "application/json"})


class LocalSageMaker(ThreadedServer):
    """The service in-process: `with LocalSageMaker(settings, port=0) as sm: sm.url`."""

    thread_name = "local-sagemaker"

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0, publish=None) -> None:
        self.backend = SageMakerBackend(settings, publish=publish)
        super().__init__(wsgi_app(SageMakerResponses(self.backend)), host, port)

    def stop(self) -> None:
        """Stop serving, then the work: running jobs are stopped, endpoint hosts shut down."""
        super().stop()
        self.backend.shutdown()
