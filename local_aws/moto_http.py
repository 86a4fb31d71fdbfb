"""moto's request handler with HTTP/1.1 keep-alive: one connection carries many requests.

werkzeug's development server, which moto's server mode uses, closes the connection
after every response, so every AWS call paid for a TCP connection, a new thread in
moto's process and the client's reconnection (measured on the stack's traffic: about
15% of the moto process's CPU and 8% of the handlers'). It closes because, in general,
it cannot tell where an unread request body ends. Here it can: a request with a
Content-Length has its body read to that length (what the application left unread is
discarded), so the next request starts where it should.

Requests the handler cannot delimit that way (a chunked body, a bad length) and any
error fall back to werkzeug's own behaviour: its answer, then the connection closed.
The application and its answers are moto's, unchanged; the response gets a
Content-Length where moto gave none (the body is complete before it is sent).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug.exceptions import InternalServerError
from werkzeug.wsgi import LimitedStream

_access_log = logging.getLogger("werkzeug")
_NO_BODY_STATUS = (204, 304)


class KeepAliveRequestHandler(MotoRequestHandler):
    """Serves requests on one connection until the client closes it (or asks to)."""

    # Headers and body go out in two writes; with Nagle's algorithm the second waits for
    # the client's delayed ACK (40 ms) once the connection is reused.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        open_connections(self.server).add(self.connection)

    def finish(self) -> None:
        open_connections(self.server).discard(self.connection)
        super().finish()

    def run_wsgi(self) -> None:
        length = self.headers.get("Content-Length")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if chunked or (length is not None and not length.strip().isdigit()):
            self.close_connection = True
            return super().run_wsgi()
        if self.headers.get("Expect", "").lower().strip(" \t") == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.environ = environ = self.make_environ()
        body = LimitedStream(self.rfile, int(length or 0))
        environ["wsgi.input"] = body
        try:
            status, headers, content = self._call(environ)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
            return
        except Exception as error:  # noqa: BLE001 - as werkzeug does: a 500, the error logged, then close
            _access_log.error("Error on request: %r", error, exc_info=True)
            self.close_connection = True
            status, headers, content = self._call(environ, InternalServerError())
        body.exhaust()
        self._send(status, headers, content)

    def _call(self, environ: dict[str, Any], app: Any = None) -> tuple[str, list[tuple[str, str]], bytes]:
        started: list[Any] = []
        written: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            started[:] = [status, headers]
            return written.append

        result = (app or self.server.app)(environ, start_response)
        try:
            written.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return started[0], started[1], b"".join(written)

    def _send(self, status: str, headers: list[tuple[str, str]], content: bytes) -> None:
        code_text, _, message = status.partition(" ")
        code = int(code_text)
        self.send_response(code, message)
        names = set()
        for name, value in headers:
            self.send_header(name, value)
            names.add(name.lower())
        if "content-length" not in names and self.command != "HEAD" and code >= 200 and code not in _NO_BODY_STATUS:
            self.send_header("Content-Length", str(len(content)))
        if self.close_connection and "connection" not in names:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)
        self.wfile.flush()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if _access_log.isEnabledFor(logging.INFO):  # the access line costs a URL decode per request
            super().log_request(code, size)


def open_connections(server: Any) -> set[socket.socket]:
    """The connections a server's handlers hold open, kept on the server."""
    connections = vars(server).get("open_connections")
    if connections is None:
        connections = server.open_connections = set()
    return connections


def close_open_connections(server: Any) -> None:
    """End the connections a stopped server still holds: their clients must not reach a stopped moto."""
    for connection in list(open_connections(server)):
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
