"""moto in server mode on a local port, with its DynamoDB requests taken one at a time.

moto's DynamoDB backend is not safe under concurrent writes: TransactWriteItems
deep-copied the tables for its rollback while other threads changed them
("RuntimeError: dictionary changed size during iteration", a 500 to the client). The
dispatcher runs batches concurrently, as Lambda does, and every batch writes through
transactions, so DynamoDB requests are serialised here. Everything else (S3, SQS long
polls, EventBridge) stays concurrent. moto's patches (`local_aws.moto_patches`: SQS linear
in the queue's depth, routing memoised, DynamoDB lexing once per text and transactions
saving only the items they touch) make it cheaper per request with its answers unchanged.

`MotoServer` serves from threads of this process (tests) with werkzeug, as moto's own
server does (a connection per request), with moto as the process has it: the patches are
the process's to apply (`MotoPatches`), not a server's. `MotoProcess` runs it in its own
interpreter, `python -m local_aws.moto_server --port N`, patched, as the stack does: moto's
request handling is most of the stack's CPU time under load, and in the stack's process it
would hold the same GIL as the handlers that call it. There gunicorn serves it
(`local_aws.gunicorn_server`: one worker, since moto's state is one process's), for
HTTP/1.1 keep-alive: werkzeug's server closes the connection after every response, and
a connection per AWS call cost about 15% of the moto process's CPU and 8% of the
handlers' (a new TCP connection, a new thread in moto, the client's reconnection).

With a state directory (`--state-dir`, `MotoProcess(..., state_dir=...)`) the process is
durable: its worker starts with what the directory holds (`local_aws.moto_restore`, before
it serves) and every write it acknowledges is on disk first (`local_aws.moto_write_through`),
so a SIGKILL loses nothing and a stop needs no snapshot. A worker that dies is replaced by
one that restores again; without a state directory its death ends the process instead.
`MotoProcess` restarts a durable process that dies, on the same address and state directory, as
AWS's services recover by themselves: its clients see connection errors for the seconds the
restart takes, and messages that were in flight reappear once their visibility timeout ends.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

from .gunicorn_server import SingleWorkerServer
from .moto_configuration import replay
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
# Requests moto's worker serves at once. Each of the dispatcher's pollers keeps one
# ReceiveMessage open at a time, a long poll that holds a thread for its wait (1 s; a client
# may ask for 20): the stack runs 7 (2 on the training queue, one per EventBridge queue, and on
# the incoming queue 2 per instance the endpoint may scale to, 1 by default). The other threads
# answer everything else meanwhile, without waiting for a poll to end (uploads from 8 threads,
# the handlers' calls, SageMaker's jobs): at 64, more than half of them are free of polls up to
# 13 endpoint instances. An idle kept-alive connection holds none.
THREADS = 64
READY_PATH = "/moto-api/config"  # a read of moto's settings: answered once the worker serves


def serialise_dynamodb(app: Callable) -> Callable:
    lock = threading.Lock()

    def wrapped(environ: dict[str, Any], start_response) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with lock:
                return list(app(environ, start_response))  # the body is produced under the lock
        return app(environ, start_response)

    return wrapped


class _QuietRequestHandler(MotoRequestHandler):
    def log_request(self, *_: Any) -> None:
        """No access line per request (it costs a URL decode, and floods a test's output)."""


class MotoServer(ThreadedServer):
    """`MotoServer(host, port).start()`; `url`; `stop()`."""

    thread_name = "moto"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, application: Callable | None = None) -> None:
        """`application`: moto's, or one around it (the default: moto's own)."""
        application = application or DomainDispatcherApplication(create_backend_app)
        super().__init__(serialise_dynamodb(application), host, port, request_handler=_QuietRequestHandler)


class MotoProcess:
    """`MotoProcess(host, port, state_dir=...).start()`: moto in a child process; `url`; `stop()` ends it.

    The child leads a process group of its own (gunicorn's master and its worker), which ends
    itself if the stack dies (`local_aws.owner_watch`), and with a `state_dir` is started again
    if it dies first; a terminal's Ctrl-C does not reach it: the stack stops moto itself. With a `state_dir`,
    `restored` says what it found there at (the first) start.
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
        if self.state_dir is not None:  # a restart without one would be an empty moto, its clients none the wiser
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
        self._process = subprocess.Popen(command, cwd=root, start_new_session=True)
        record(self._process.pid, "moto")
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto exited with code {self._process.returncode} before it served")
            if self.answers(max(0.1, deadline - time.monotonic())):
                return
            if time.monotonic() > deadline:
                self._end_process()
                raise RuntimeError(f"moto did not serve on {self.url} within {timeout} s")
            time.sleep(0.1)

    def back_within(self, timeout: float, *, killed: int | None = None) -> float:
        """Seconds until moto answers again, from a process other than `killed` (its watch restarts a
        dead one); RuntimeError after `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if (killed is None or self.pid != killed) and self.answers(1.0):
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"moto did not answer on {self.url} within {timeout} s")

    def answers(self, timeout: float) -> bool:
        """Whether moto answers a request (the port accepts connections before the worker serves)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request("GET", READY_PATH)
            connection.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        if self._watch is not None:
            self._watch.join()
            self._watch = None
        self._end_process()

    def _end_process(self) -> None:
        if self._process is None:
            return
        self._process.terminate()  # gunicorn's graceful stop
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._process = None


def application(state_dir: Path | None) -> Callable:
    """moto's application as the process serves it, built in the worker that serves it.

    Patched for the worker's life (it serves nothing else); with a state directory, the
    state restored and `restored.json` written before the first request, and every write
    stored before its answer, through a store opened here, in the worker.
    """
    MotoPatches().apply()
    moto = DomainDispatcherApplication(create_backend_app)
    if state_dir is None:
        return serialise_dynamodb(moto)
    store = MotoStore(state_dir)
    restored = restore(store)
    for failure in replay(store.configuration(), moto):  # after the queues it names; not stored again
        logger.warning("configuration not restored", request=failure)
    (state_dir / RESTORED_FILE).write_text(json.dumps(restored))
    write_through = WriteThrough(moto, store)
    write_through.install(Patches())  # for the worker's life, as the patches above
    return serialise_dynamodb(write_through)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m local_aws.moto_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, help="keep moto's state here, every write on disk before its answer")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # until gunicorn's master takes its signals over
    die_with_owner()  # in the master, before it forks: it ends the group it leads, worker included
    SingleWorkerServer(lambda: application(args.state_dir), host=args.host, port=args.port, threads=THREADS,
                       replaceable=args.state_dir is not None, name="moto").run()


if __name__ == "__main__":
    main()
