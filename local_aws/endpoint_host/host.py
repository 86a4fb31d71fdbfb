"""EndpointHost: start, health-check and stop `python -m local_aws.endpoint_host` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from local_aws.ports import free_port
from local_aws.process_record import record

REPO_ROOT = Path(__file__).resolve().parents[2]


class HostStartError(RuntimeError):
    """The host exited or never became healthy; the message ends with its log."""

    def __init__(self, what: str, log_tail: str) -> None:
        super().__init__(f"endpoint host {what}:\n{log_tail}")
        self.what = what  # "exited with 3", "not healthy after 120 s"


class EndpointHost:
    """One endpoint host process serving `model_tar` (a model.tar.gz or a model directory)."""

    def __init__(self, model_tar: Path, port: int | None = None, *, host: str = "127.0.0.1", workers: int = 1,
                 torch_threads: int | None = None, max_batch_size: int = 8, max_batch_wait_ms: float = 0.0,
                 log_path: Path | None = None, env: dict[str, str] | None = None):
        self.model_tar = Path(model_tar)
        self.host = host
        self.port = port or free_port(host)
        self.workers = workers
        self.torch_threads = torch_threads
        self.max_batch_size = max_batch_size
        self.max_batch_wait_ms = max_batch_wait_ms
        self.log_path = log_path
        self.env = env or {}  # on top of this process's environment (a SageMaker model's Environment)
        self._process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def pid(self) -> int | None:
        """The server's master process (its workers are its children)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Started, not stopped, and its master process has not exited."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "local_aws.endpoint_host", "--model", str(self.model_tar),
                   "--port", str(self.port), "--host", self.host, "--workers", str(self.workers),
                   "--max-batch-size", str(self.max_batch_size), "--max-batch-wait-ms", str(self.max_batch_wait_ms)]
        if self.torch_threads:
            command += ["--torch-threads", str(self.torch_threads)]
        return command

    def start(self) -> "EndpointHost":
        if self._process is not None:
            raise RuntimeError("already started")
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="endpoint-host-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "ab")
        env = {**os.environ, **self.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self._process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                         env=env, cwd=REPO_ROOT, start_new_session=True)
        record(self._process.pid, "endpoint host")
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path and self.log_path.exists() else ""

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=timeout) as answer:
                return answer.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_healthy(self, timeout: float = 120.0) -> None:
        """Block until /ping answers 200; HostStartError if the process dies or time runs out."""
        if self._process is None:
            raise RuntimeError("start() first")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise HostStartError(f"exited with {self._process.returncode}", self.log_tail())
            if self.ping(timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                return
            time.sleep(0.1)
        self.stop()
        raise HostStartError(f"not healthy after {timeout:.0f} s", self.log_tail())

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (gunicorn's graceful stop), then SIGKILL of the process group if it lingers."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "EndpointHost":
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
