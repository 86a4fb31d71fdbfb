"""Starting a training job's process: forked from a warm framework image, or as a fresh one.

`FrameworkImage` keeps one `zygote` process that has imported the framework (torch,
torchvision) and asks it for each job's process; `start_process` falls back to a plain
`subprocess.Popen` when the image is off or cannot answer. Either way the caller gets a
process with `pid`, `stdout` (the job's output and errors, as text lines), `poll()` and
`wait(timeout)` (raising `subprocess.TimeoutExpired`), in its own process group, which
ends itself if the service dies (`local_aws.owner_watch`) and is recorded for the next start
to end if it did not (`local_aws.process_record`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from aws_lambda_powertools import Logger

from .. import owner_watch
from ..process_record import record

logger = Logger(service="local-sagemaker")

REPO_ROOT = Path(__file__).resolve().parents[2]
MAX_MESSAGE = 1 << 20


class JobProcess(Protocol):
    pid: int
    stdout: IO[str] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class ImageUnavailable(RuntimeError):
    """The zygote is not running or did not answer: start the job as a fresh process."""


class ForkedProcess:
    """A job forked by the zygote; its supervisor there reports the pid and the exit code."""

    def __init__(self, argv: list[str], status: socket.socket, stdout: IO[str]) -> None:
        self.args = argv
        self.stdout = stdout
        self.returncode: int | None = None
        self._status = status
        self._exited = threading.Event()
        reply = status.recv(MAX_MESSAGE)
        if not reply:
            status.close()
            raise ImageUnavailable("the framework image did not start the job")
        self.pid = int(json.loads(reply)["pid"])
        record(self.pid, shlex.join(argv))
        threading.Thread(target=self._await_exit, name=f"job-{self.pid}", daemon=True).start()

    def _await_exit(self) -> None:
        try:
            reply = self._status.recv(MAX_MESSAGE)
        except OSError:
            reply = b""
        finally:
            self._status.close()
        # No report means the supervisor died (the image was killed): the job's fate is unknown.
        self.returncode = int(json.loads(reply)["returncode"]) if reply else -9
        self._exited.set()

    def poll(self) -> int | None:
        return self.returncode if self._exited.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        assert self.returncode is not None
        return self.returncode


class FrameworkImage:
    """One zygote with `preload` imported, started on first use, restarted if it dies."""

    def __init__(self, preload: tuple[str, ...], env: dict[str, str] | None = None,
                 start_timeout: float = 120.0) -> None:
        self.preload = preload
        self.env = env
        self.start_timeout = start_timeout
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    def spawn(self, argv: list[str], cwd: Path, env: dict[str, str]) -> ForkedProcess:
        request = json.dumps({"argv": argv, "cwd": str(cwd), "env": env}).encode()
        if len(request) > MAX_MESSAGE:
            raise ImageUnavailable("the job's environment is too large to hand to the framework image")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        read_end, write_end = os.pipe()
        try:
            with self._lock:
                control = self._running()
                try:
                    socket.send_fds(control, [request], [theirs.fileno(), write_end])
                except OSError as error:
                    self._stop_locked()
                    raise ImageUnavailable(f"the framework image is gone: {error}") from error
        except BaseException:
            ours.close()
            os.close(read_end)
            raise
        finally:
            theirs.close()
            os.close(write_end)
        stdout = open(read_end, encoding="utf-8", errors="replace", buffering=1)
        try:
            return ForkedProcess(argv, ours, stdout)
        except BaseException:
            stdout.close()
            raise

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _running(self) -> socket.socket:
        if self._control is not None and self._process is not None and self._process.poll() is None:
            return self._control
        self._stop_locked()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-u", "-m", "local_aws.sagemaker.zygote", "--fd", str(theirs.fileno()),
                   "--preload", ",".join(self.preload)]
        env = {**(self.env if self.env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
        # Its own session: a terminal's Ctrl-C reaches the service, which then stops the jobs and the image.
        self._process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, pass_fds=[theirs.fileno()],
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        record(self._process.pid, "framework image")
        theirs.close()
        self._control = ours
        ours.settimeout(self.start_timeout)
        try:
            ready = ours.recv(MAX_MESSAGE)
        except OSError:
            ready = b""
        ours.settimeout(None)
        if not ready:
            self._stop_locked()
            raise ImageUnavailable(f"the framework image did not start (preloading {', '.join(self.preload)})")
        logger.info("framework image ready", extra={"preload": list(self.preload), "pid": self._process.pid})
        return ours

    def _stop_locked(self) -> None:
        if self._control is not None:
            self._control.close()  # the zygote exits on seeing its socket close
            self._control = None
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None


def start_process(argv: list[str], cwd: Path, env: dict[str, str], image: FrameworkImage | None) -> JobProcess:
    """The job's process, forked from `image` when there is one that answers, else started afresh."""
    if image is not None and len(argv) >= 2 and argv[1].endswith(".py"):
        try:
            return image.spawn(argv, cwd, env)
        except ImageUnavailable as error:
            logger.warning("starting the job as a fresh process", extra={"reason": str(error)})
    # Under the owner watch, which runs the job as its child and ends its group if the service dies.
    watched = [sys.executable, "-I", owner_watch.__file__, *argv]
    process = subprocess.Popen(watched, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    record(process.pid, shlex.join(argv))
    return process


def terminate(process: JobProcess, grace: float = 10.0) -> None:
    """SIGTERM the job's process group (the script and its data loader workers), then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def time_limit(process: JobProcess, seconds: float | None) -> Iterator[threading.Event]:
    """Terminate `process` once `seconds` have passed (None or 0: never); the event says whether it had to."""
    expired = threading.Event()
    timer = None
    if seconds:
        def expire() -> None:
            expired.set()
            terminate(process)
        timer = threading.Timer(float(seconds), expire)
        timer.daemon = True
        timer.start()
    try:
        yield expired
    finally:
        if timer:
            timer.cancel()
