"""moto in server mode on a local port, with its DynamoDB requests taken one at a time.

moto's DynamoDB backend is not safe under concurrent writes: TransactWriteItems
deep-copied the tables for its rollback while other threads changed them
("RuntimeError: dictionary changed size during iteration", a 500 to the client). The
dispatcher runs batches concurrently, as Lambda does, and every batch writes through
transactions, so DynamoDB requests are serialised here. Everything else (S3, SQS long
polls, EventBridge) stays concurrent. Connections are kept alive between requests
(`local_aws.moto_http`), and moto's patches (`local_aws.moto_patches`: SQS linear in the
queue's depth, routing memoised, DynamoDB lexing once per text and transactions saving
only the items they touch) make it cheaper per request with its answers unchanged.

`MotoServer` serves from threads of this process (tests), with moto as the process has
it: the patches are the process's to apply (`MotoPatches`), not a server's. `MotoProcess`
runs it in its own interpreter, `python -m local_aws.moto_server --port N`, patched, as
the stack does: moto's request handling is most of the stack's CPU time under load, and
in the stack's process it would hold the same GIL as the handlers that call it.

With a state directory (`--state-dir`, `MotoProcess(..., state_dir=...)`) the process is
durable: it starts with what the directory holds (`local_aws.moto_restore`, before it
listens) and every write it acknowledges is on disk first (`local_aws.moto_write_through`),
so a SIGKILL loses nothing and a stop needs no snapshot. `MotoProcess` restarts a process
that dies, on the same address and state directory, as AWS's services recover by themselves:
its clients see connection errors for the seconds the restart takes, and messages that were
in flight reappear once their visibility timeout ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

from .moto_configuration import replay
from .moto_http import KeepAliveRequestHandler, close_open_connections, open_connections
from .moto_patches import MotoPatches
from .moto_restore import restore
from .moto_store import MotoStore
from .moto_write_through import WriteThrough
from .owner_watch import die_with_owner
from .patching import Patches
from .process_record import record
from .wsgi_server import ThreadedServer

logger = Logger(service="local-aws")

RESTORED_FILE = "restored.json"  # in the state directory: what the last start found there
WATCH_SECONDS = 0.5  # how often `MotoProcess` checks that its process is alive


def serialise_dynamodb(app: Callable) -> Callable:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))  # the body is produced under the lock
        return app(environ, start_response)

    return wrapped


class MotoServer(ThreadedServer):
    """`MotoServer(host, port).start()`; `url`; `stop()`."""

    thread_name = "moto"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, application: Callable | None = None) -> None:
        """`application`: moto's, or one around it (the default: moto's own)."""
        application = application or DomainDispatcherApplication(create_backend_app)
        super().__init__(serialise_dynamodb(application), host, port, request_handler=KeepAliveRequestHandler)
        open_connections(self._server)

    def stop(self) -> None:
        super().stop()
        close_open_connections(self._server)


class MotoProcess:
    """`MotoProcess(host, port, state_dir=...).start()`: moto in a child process; `url`; `stop()` ends it.

    The child ignores Ctrl-C (a terminal sends it to the whole process group): the stack
    stops moto itself. It ends itself if the stack dies (`local_aws.owner_watch`), and is
    started again if it dies first. With a `state_dir`, `restored` says what it found there
    at (the first) start.
    """

    def __init__(self, host: str, port: int, state_dir: Path | None = None) -> None:
        self.host, self.port, self.state_dir = host, port, state_dir
        self.restored: dict[str, int] = {}
        self._process: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 60.0) -> "MotoProcess":
        self._spawn(timeout)
        self.restored = self._read_restored()
        self._watch = threading.Thread(target=self._keep_alive, args=(timeout,), name="moto-watch", daemon=True)
        self._watch.start()
        return self

    def _read_restored(self) -> dict[str, int]:
        return json.loads((self.state_dir / RESTORED_FILE).read_text()) if self.state_dir is not None else {}

    def _keep_alive(self, timeout: float) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            process = self._process
            if process is None or process.poll() is None:
                continue
            logger.warning("moto died; restarting it", url=self.url, exit_code=process.returncode)
            started = time.monotonic()
            try:
                self._spawn(timeout)
            except RuntimeError as error:  # the next round tries again
                logger.warning("moto did not restart", url=self.url, reason=str(error))
                continue
            logger.info("moto restarted", url=self.url, seconds=round(time.monotonic() - started, 2),
                        restored=self._read_restored())

    def _spawn(self, timeout: float) -> None:
        root = Path(__file__).resolve().parent.parent
        command = [sys.executable, "-m", "local_aws.moto_server", "--host", self.host, "--port", str(self.port)]
        if self.state_dir is not None:
            command += ["--state-dir", str(self.state_dir)]
            (self.state_dir / RESTORED_FILE).unlink(missing_ok=True)
        self._process = subprocess.Popen(command, cwd=root)
        record(self._process.pid, "moto")
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto exited with code {self._process.returncode} before it listened")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self._end_process()
                    raise RuntimeError(f"moto did not listen on {self.url} within {timeout} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.join()
            self._watch = None
        self._end_process()

    def _end_process(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_aws.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, help="keep moto's state here, every write on disk before its answer")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request
    MotoPatches().apply()  # for the process's life: it serves nothing else
    application = DomainDispatcherApplication(create_backend_app)
    if args.state_dir is not None:
        store = MotoStore(args.state_dir)
        restored = restore(store)  # before the server listens: no client sees a half-restored moto
        for failure in replay(store.configuration(), application):  # after the queues it names
            logger.warning("configuration not restored", request=failure)
        (args.state_dir / RESTORED_FILE).write_text(json.dumps(restored))
        write_through = WriteThrough(application, store)
        write_through.install(Patches())  # for the process's life, as the patches above
        server = MotoServer(args.host, args.port, write_through)
    else:
        server = MotoServer(args.host, args.port, application)
    die_with_owner()
    server.serve_forever()


if __name__ == "__main__":
    main()
