"""moto in server mode on a local port, with its DynamoDB requests taken one at a time.

moto's DynamoDB backend is not safe under concurrent writes: TransactWriteItems
deep-copies the tables for its rollback while other threads change them
("RuntimeError: dictionary changed size during iteration", a 500 to the client). The
dispatcher runs batches concurrently, as Lambda does, and every batch writes through
transactions, so DynamoDB requests are serialised here. Everything else (S3, SQS long
polls, EventBridge) stays concurrent. moto's SQS is made linear in the queue's depth
first (`local_aws.moto_sqs`): a deep queue otherwise costs quadratic time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from .moto_sqs import make_sqs_linear


def serialise_dynamodb(app: Callable) -> Callable:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))  # the body is produced under the lock
        return app(environ, start_response)

    return wrapped


class MotoServer:
    """`MotoServer(host, port).start()`; `url`; `stop()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        make_sqs_linear()
        application = serialise_dynamodb(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(host, port, application, threaded=True,
                                                   request_handler=MotoRequestHandler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "MotoServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(10)
