"""Endpoints, hosted by the endpoint host (`python -m local_aws.endpoint_host`),
one process per deployed config, behind the runtime's InvokeEndpoint.

UpdateEndpoint is blue/green: the new config's host starts beside the old one and must
answer /ping and the configured probe request before traffic moves; requests already
sent to the old host finish before it stops, so no request fails during an update. A new host that
does not pass leaves the old one serving, and the endpoint's FailureReason says why,
as AWS's rollback does.

A host whose process dies is replaced, as SageMaker replaces an instance that fails its
health checks: a watch thread notices, starts a new host from the same config and moves
traffic to it once it answers; the endpoint stays InService, and meanwhile an invoke is
answered ServiceUnavailable (a retry may succeed), never a ValidationError.
"""

from __future__ import annotations

import http.client
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from . import s3_transfer
from ..endpoint_host import EndpointHost, HostStartError
from .exceptions import ModelError, ServiceUnavailable, ValidationError

if TYPE_CHECKING:
    from .config import Settings
    from .records import Endpoint
    from .state import SageMakerState

logger = Logger(service="local-sagemaker")

INVOKE_TIMEOUT = 60.0
WATCH_SECONDS = 1.0  # how often the hosts' processes are checked


@dataclass
class Host:
    """One endpoint host process, and the requests it is answering right now."""

    config_name: str
    variant_name: str
    server: EndpointHost
    workdir: Path
    inflight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = INVOKE_TIMEOUT) -> tuple[int, bytes, str]:
        connection = http.client.HTTPConnection(self.server.host, self.server.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/octet-stream")
        finally:
            connection.close()

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.server.log_tail().strip().splitlines()[-lines:])

    def wait_ready(self, timeout: float, probe: tuple[bytes, str] | None) -> None:
        """/ping answers 200, then the probe (a real request) answers 2xx; raises with the reason otherwise."""
        try:
            self.server.wait_healthy(timeout)
        except HostStartError as error:  # a FailureReason holds 1,024 characters: the last log lines only
            raise RuntimeError(f"the model server {error.what}: {self.log_tail()}") from None
        if probe is None:
            return
        body, content_type = probe
        status, answer, _ = self.request("POST", "/invocations", body,
                                         {"Content-Type": content_type, "Accept": "application/json"})
        if not 200 <= status < 300:
            raise RuntimeError(f"the model server answered a test request with HTTP {status}: "
                               f"{answer[:300].decode(errors='replace')}")

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Let requests in flight finish, then stop the process."""
        with self.idle:
            self.idle.wait_for(lambda: self.inflight == 0, timeout=drain_timeout)
        self.server.stop(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)  # its model (tens of MB); a restart fetches it again


class EndpointFleet:
    def __init__(self, settings: "Settings", state: "SageMakerState") -> None:
        self.settings = settings
        self.state = state
        self._hosts: dict[str, Host] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._watch = threading.Thread(target=self._watch_hosts, name="endpoint-host-watch", daemon=True)
        self._watch.start()

    # ----- the operations' side ----------------------------------------------------------

    def create(self, name: str) -> None:
        self._background(self._create, name)

    def update(self, name: str, config_name: str) -> None:
        self._background(self._update, name, config_name)

    def resume(self, endpoint: "Endpoint") -> None:
        """After a restart: serve the endpoint's current config again (an unfinished update is rolled back)."""
        def mark(e: "Endpoint") -> None:
            if e.status == "Updating":
                e.failure_reason = "The local SageMaker restarted during the update; the update was rolled back"
            e.status, e.pending_config_name = "Creating", None
        self.state.change_endpoint(endpoint.name, mark, announce=False)
        self.create(endpoint.name)

    def delete(self, name: str) -> None:
        with self._lock:
            host = self._hosts.pop(name, None)
        if host:
            host.stop()

    def wait(self, timeout: float | None = None) -> None:
        for thread in list(self._threads):
            thread.join(timeout)

    def shutdown(self) -> None:
        self._stopping.set()
        self._watch.join(self.settings.host_start_timeout)
        self.wait(timeout=self.settings.host_start_timeout)
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.stop(drain_timeout=5)

    def invoke(self, endpoint: "Endpoint", body: bytes, content_type: str, accept: str,
               custom_attributes: str | None = None) -> tuple[bytes, str, str]:
        """(body, content type, variant) from the host serving the endpoint now."""
        name = endpoint.name
        with self._lock:
            host = self._hosts.get(name)
            if host is None:
                raise ValidationError(f"Endpoint {name} of account {self.settings.account} is not in service "
                                          f"(status {endpoint.status}).")
            with host.idle:
                host.inflight += 1
        try:
            headers = {"Content-Type": content_type, "Accept": accept}
            if custom_attributes:
                headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
            status, answer, answer_type = host.request("POST", "/invocations", body, headers)
        except (ConnectionError, http.client.HTTPException) as error:  # the host died (its replacement is on its way)
            raise ServiceUnavailable(f"The endpoint {name} could not serve the request: {type(error).__name__}. "
                                     "Retry the request.") from None
        finally:
            with host.idle:
                host.inflight -= 1
                host.idle.notify_all()
        if not 200 <= status < 300:
            message = answer[:1000].decode(errors="replace")
            raise ModelError(
                f"Received client error ({status}) from primary with message \"{message}\". See "
                f"the endpoint's log for more information.", status, message,
                f"arn:aws:logs:{self.settings.region}:{self.settings.account}:log-group:/aws/sagemaker/Endpoints/{name}")
        return answer, answer_type, host.variant_name

    # ----- the work ----------------------------------------------------------------------

    def _background(self, target: Callable[..., None], *args: str) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"endpoint-{args[0]}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _create(self, name: str) -> None:
        config_name = self.state.endpoints[name].config_name
        try:
            host = self._launch(name, config_name)
        except Exception as error:  # noqa: BLE001 - the endpoint fails with the reason
            reason = str(error)[:1024]  # bound here: `error` is unbound when the except block ends
            logger.warning("endpoint failed to start", endpoint=name, reason=reason)
            self.state.change_endpoint(name, lambda e: (setattr(e, "status", "Failed"),
                                                        setattr(e, "failure_reason", reason)))
            return
        with self._lock:
            self._hosts[name] = host
        self.state.change_endpoint(name, lambda e: setattr(e, "status", "InService"))

    def _update(self, name: str, config_name: str) -> None:
        try:
            host = self._launch(name, config_name)
        except Exception as error:  # noqa: BLE001 - roll back: the old host never stopped serving
            logger.warning("endpoint update rolled back", endpoint=name, reason=str(error))
            reason = f"Failed to update endpoint to config {config_name}; rolled back to the previous config: {error}"
            self.state.change_endpoint(name, lambda e: (
                setattr(e, "status", "InService"), setattr(e, "pending_config_name", None),
                setattr(e, "failure_reason", reason[:1024])))
            return
        with self._lock:
            old, self._hosts[name] = self._hosts.get(name), host  # traffic moves here, atomically
        self.state.change_endpoint(name, lambda e: (
            setattr(e, "status", "InService"), setattr(e, "config_name", config_name),
            setattr(e, "pending_config_name", None), setattr(e, "failure_reason", None)))
        if old:
            old.stop()

    def _watch_hosts(self) -> None:
        while not self._stopping.wait(WATCH_SECONDS):
            with self._lock:
                dead = [(name, host) for name, host in self._hosts.items() if not host.server.running]
            for name, host in dead:
                if not self._stopping.is_set():
                    self._replace(name, host)

    def _replace(self, name: str, dead: Host) -> None:
        """A new host for the config the dead one served; traffic moves once it answers."""
        logger.warning("endpoint host died; replacing it", endpoint=name, config=dead.config_name,
                       log=dead.log_tail(2))
        dead.stop(drain_timeout=0)
        try:
            host = self._launch(name, dead.config_name)
        except Exception as error:  # noqa: BLE001 - the dead host stays listed: the next round tries again
            logger.warning("endpoint host replacement failed; trying again", endpoint=name, reason=str(error)[:300])
            return
        with self._lock:
            replaced = self._hosts.get(name) is dead
            if replaced:
                self._hosts[name] = host
        if not replaced:  # an update or a delete moved on meanwhile
            host.stop(drain_timeout=0)
            return
        logger.info("endpoint host replaced", endpoint=name, config=dead.config_name)

    def _launch(self, name: str, config_name: str) -> Host:
        variant, model = self.state.config_model(config_name)
        container = model.request.get("PrimaryContainer") or model.request["Containers"][0]
        workdir = self.settings.state_dir / "hosts" / name / f"{config_name}-{uuid.uuid4().hex[:8]}"
        # The host checks and unpacks the archive itself, as SageMaker's container does.
        archive = s3_transfer.download_object(s3_transfer.s3_client(self.settings.region), container["ModelDataUrl"],
                                      workdir / "model.tar.gz")
        log_path = self.settings.state_dir / "logs" / "endpoints" / f"{name}-{workdir.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Its scratch (the unpacked model) in its workdir too, which goes when it stops or at the next start.
        env = {**container.get("Environment", {}), "TMPDIR": str(workdir)}
        server = EndpointHost(archive, log_path=log_path, env=env).start()
        host = Host(config_name=config_name, variant_name=variant["VariantName"], server=server, workdir=workdir)
        try:
            host.wait_ready(self.settings.host_start_timeout, self.settings.health_probe)
        except Exception:
            host.stop(drain_timeout=0)
            raise
        return host
