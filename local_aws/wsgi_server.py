"""A WSGI application served on a daemon thread (moto, the local SageMaker): start, url, stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, make_server


class ThreadedServer:
    """`ThreadedServer(app, host, port).start()`; `url`; `stop()`; or `serve_forever()` in this thread."""

    thread_name = "wsgi-server"

    def __init__(self, application: Callable, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self._server: BaseWSGIServer = make_server(host, port, application, threaded=True, **options)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
