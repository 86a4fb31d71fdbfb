"""The WSGI application: SageMaker's container contract, `GET /ping` and `POST /invocations`."""

from __future__ import annotations

import json
from http import HTTPStatus
from collections.abc import Callable, Iterable

from local_aws.endpoint_host.handler import Answer, Handler, error_answer

# SageMaker caps a real-time payload at 6 MB; read a little more so input_fn can say 413.
MAX_READ_BYTES = 6 * 1024 * 1024 + 1


def _headers(environ: dict) -> dict[str, str]:
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    return headers


def _read_body(environ: dict) -> bytes | None:
    """The request body; None when it is longer than MAX_READ_BYTES."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_READ_BYTES:
        return None
    return environ["wsgi.input"].read(length) if length else b""


def make_app(handler: Handler) -> Callable:
    healthy = json.dumps({"status": "healthy"}).encode()

    def route(environ: dict) -> Answer:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path == "/ping":
            return Answer(200, healthy) if method in ("GET", "HEAD") else error_answer(405, "use GET /ping")
        if path == "/invocations":
            if method != "POST":
                return error_answer(405, "use POST /invocations")
            body = _read_body(environ)
            if body is None:
                return error_answer(413, f"body larger than {MAX_READ_BYTES - 1} bytes")
            return handler.invoke(body, environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT"), _headers(environ))
        return error_answer(404, f"no route {method} {path}; the endpoint serves GET /ping and POST /invocations")

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        answer = route(environ)
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}",
                       [("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))])
        return [answer.body]

    return app
