"""`python -m local_aws up` as a child process, for the demo, the benchmark and the tests.

    with StackProcess(state_dir, overrides={"MAX_TRAINING_JOBS": "1"}) as stack:
        stack.client("s3").put_object(...); stack.api("/models/live")

The child picks free ports and writes them to `<state_dir>/stack.json` once it is
ready; `stop()` sends SIGINT (Ctrl-C) and waits for the clean stop, killing the whole
process group only if it does not come.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from ..owner_watch import OWNER_ENV, owner_token
from ..process_record import end_recorded
from .stack import PROCESS_FILE, STACK_FILE
from .stage import FAKE_CREDENTIALS, REPO_ROOT


class StackError(RuntimeError):
    """The stack did not start, or an API call failed."""


class StackProcess:
    def __init__(self, state_dir: Path, *, overrides: dict[str, str] | None = None,
                 schedule_seconds: float | None = None, log_path: Path | None = None,
                 concurrency: int | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.overrides = overrides or {}
        self.schedule_seconds = schedule_seconds
        self.concurrency = concurrency
        self.log_path = log_path or self.state_dir.parent / f"{self.state_dir.name}.log"
        self.process: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "local_aws", "up", "--state-dir", str(self.state_dir),
                   "--ports", "moto=0,sagemaker=0,api=0", "--stop-with-owner"]
        for name, value in self.overrides.items():
            command += ["--set", f"{name}={value}"]
        if self.schedule_seconds:
            command += ["--schedule-seconds", str(self.schedule_seconds)]
        if self.concurrency:
            command += ["--concurrency", str(self.concurrency)]
        return command

    def start(self, timeout: float = 120.0) -> "StackProcess":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_ENDPOINT_URL")}
        env[OWNER_ENV] = owner_token()  # the stack stops once this process is gone, however it ended
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        path = self.state_dir / STACK_FILE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StackError(f"the stack exited with {self.process.returncode}; see {self.log_path}:\n"
                                 + self.log_tail())
            if path.exists():
                info = json.loads(path.read_text())
                if info.get("pid") == self.process.pid:
                    self.info = info
                    return self
            time.sleep(0.2)
        self.kill()
        raise StackError(f"the stack was not up after {timeout} s; see {self.log_path}:\n" + self.log_tail())

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    # --- talking to it --------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        return self.info["urls"]

    @property
    def bucket(self) -> str:
        return self.info["bucket"]

    def environment(self) -> dict[str, str]:
        """What a shell needs for the aws CLI or boto3 to reach this stack."""
        return {**FAKE_CREDENTIALS, "AWS_DEFAULT_REGION": self.info["region"], "AWS_ENDPOINT_URL": self.urls["moto"],
                "AWS_ENDPOINT_URL_SAGEMAKER": self.urls["sagemaker"],
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.urls["sagemaker"]}

    def client(self, service: str) -> Any:
        url = self.urls["sagemaker"] if service.startswith("sagemaker") else self.urls["moto"]
        return boto3.client(service, endpoint_url=url, region_name=self.info["region"],
                            aws_access_key_id="testing", aws_secret_access_key="testing", aws_session_token="testing")

    def api(self, path: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """(status, JSON body) of an HTTP API call."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.urls["api"] + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def predictions(self) -> list[dict[str, Any]]:
        """Every stored prediction: all pages of `GET /predictions`."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            status, page = self.api("/predictions?limit=100" + (f"&cursor={cursor}" if cursor else ""))
            if status != 200:
                raise StackError(f"GET /predictions answered {status}: {page}")
            items += page["items"]
            cursor = page.get("next")
            if not cursor:
                return items

    # --- stopping -------------------------------------------------------------------------

    def stop(self, timeout: float = 120.0) -> int | None:
        """Ctrl-C, then wait for the clean stop; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise StackError(f"the stack did not stop within {timeout} s (killed); see {self.log_path}") from None

    def kill(self) -> None:
        """SIGKILL the stack's whole process group (its own session), then what it recorded starting
        (endpoint hosts, training processes: each in a session of its own)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        end_recorded(self.state_dir / PROCESS_FILE)

    def __enter__(self) -> "StackProcess":
        return self.start()

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            self.kill()
