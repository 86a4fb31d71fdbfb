"""A WSGI application whose state lives in one process, served by gunicorn from this one.

One `gthread` worker: the state is the worker's, so there is exactly one. Its application is
built in the worker after the fork (`build`, gunicorn's `load` without preload), so whatever
it opens (a SQLite connection, threads) is its own, and everything it restores is in place
before the worker accepts its first connection. gunicorn does the HTTP: keep-alive (an idle
connection waits in the worker's poller, not on a thread) and chunked bodies; TCP_NODELAY is
set on the listener (`gunicorn.sock.TCPSocket`), which accepted connections inherit. A body
the application left unread is read to its end here (`drain_unread_body`): gunicorn itself
discards at most 64 KiB of one and closes the connection beyond that, after an answer that
promised to keep it, so the client's next request on it would fail. That expects the
application's answer complete when it returns, as moto's (Flask's) is: not a stream that
reads the request's body as it goes.

A worker that dies (a crash, the OOM killer, gunicorn's timeout) is replaced only where
`replaceable`: a replacement builds the application again, which brings the state back
only if it lives on disk. Otherwise the master stops on the death, so whoever started it
sees the server gone instead of a server that has silently forgotten everything.

Stopping: SIGTERM to the master, gunicorn's graceful stop (requests in flight are answered,
kept-alive connections closed; at most `GRACEFUL_SECONDS`, then SIGKILL). The master and its
worker ignore SIGINT: a terminal's Ctrl-C is for whoever started the server, which stops it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.errors import HaltServer

WSGIApplication = Callable[[dict[str, Any], Callable], Any]

# Longer than any pause between one client's calls, so a connection is reused, not reopened;
# an idle kept-alive connection costs the worker no thread.
KEEPALIVE_SECONDS = 300
GRACEFUL_SECONDS = 3
DRAIN_CHUNK = 64 * 1024
# The worker's first heartbeat comes after `build`: restoring a large state must not count as a hang.
BOOT_SECONDS = 600


class SingleWorkerServer(BaseApplication):
    """`SingleWorkerServer(build, host=..., port=..., threads=..., replaceable=...).run()`, until SIGTERM."""

    def __init__(self, build: Callable[[], WSGIApplication], *, host: str, port: int, threads: int,
                 replaceable: bool, name: str) -> None:
        self._build = build
        self._settings: dict[str, Any] = {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "keepalive": KEEPALIVE_SECONDS,
            "timeout": BOOT_SECONDS,
            "graceful_timeout": GRACEFUL_SECONDS,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
            "proc_name": name,
            # No bound on the request line, as werkzeug's: an S3 key (1,024 bytes, each percent-
            # encoded in 3) in a presigned URL comes near gunicorn's default of 4,094 bytes.
            "limit_request_line": 0,
            # gunicorn 27 otherwise serves a control socket at one path per user, which every
            # other gunicorn of the user's (an endpoint host, another stack) would contend for.
            "control_socket_disable": True,
            # A header with "_" in its name (an S3 metadata key) maps to environ as werkzeug maps it,
            # as "-" would; gunicorn's default drops it, silently losing what the client sent.
            "header_map": "dangerous",
            "when_ready": _ignore_sigint_in_master,
            "post_worker_init": _ignore_sigint_in_worker,
        }
        if not replaceable:
            self._settings["pre_fork"] = _refuse_a_replacement
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._settings.items():
            self.cfg.set(key, value)

    def load(self) -> WSGIApplication:
        return drain_unread_body(self._build())  # in the worker, after the fork


def drain_unread_body(app: WSGIApplication) -> WSGIApplication:
    """`app`, with what it left of each request's body read before its answer goes out."""
    def drained(environ: dict[str, Any], start_response: Callable) -> Any:
        answer = app(environ, start_response)
        while environ["wsgi.input"].read(DRAIN_CHUNK):
            pass
        return answer

    return drained


def _ignore_sigint_in_master(server: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # after gunicorn installed its own handlers


def _ignore_sigint_in_worker(worker: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _refuse_a_replacement(server: Any, worker: Any) -> None:
    if worker.age > 1:  # the first worker has died: its state went with it
        raise HaltServer("the worker died, and with it the state a replacement would not have", 1)
