"""The chaos run: the pipeline at work while its processes are killed (SIGKILL) at random.

    report = ChaosRun(work_dir, digits_dir, kills=4, seed=7).run()
    report.failures  # the invariants that did not hold; report.figures() for the numbers

With a seeded `random.Random`: a stack on a fresh state directory, a labelled burst of the
digits (ending with `_COMMIT`) that becomes run 1 (tuning, final training, gate, deploy),
bursts of images into `incoming/` all along (every PUT answered 200 is kept), and once a
model is LIVE a second labelled burst, run 2, which updates the endpoint blue/green (the
short form, `update=False`, leaves it out). A
prober invokes the endpoint twice a second from its first InService. Meanwhile, at random
moments, one random component among those alive is killed: moto, the stack's own process
(the local SageMaker and the dispatcher live in it), a training job's process, an endpoint
host (gunicorn's master or its worker). What does not come back by itself is restarted
(the stack, as a new `StackProcess` on the same state directory, once no process of the
dead one is left); the time until the component answers again is kept. A run that a kill
failed is asked for again (`POST /runs`) until a model is LIVE and the second burst's data
is deployed or judged: at most once per kill, plus two.

Then, once everything has settled, the invariants (`Report.failures` lists each broken one):
every acknowledged upload has its object; every image under `incoming/` has exactly one
prediction, OK or FAILED with a reason; each labelled burst became exactly one run and no
run is left unfinished; the live model is the one the endpoint serves; every failed probe
falls while the endpoint's own host was down (a host killed until one answers again, the
stack's process down until its endpoint answers again), and none during a blue/green update.
"""

from __future__ import annotations

import io
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil
from aws_lambda_powertools import Logger
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .budget import SCHEDULE_SECONDS, SMALL_BUDGET
from .launcher import StackError, StackProcess

logger = Logger(service="chaos")

TERMINAL_RUNS = ("DEPLOYED", "REJECTED", "FAILED", "REFUSED")
PHASES = ("run 1", "run 2", "serving")  # the kills are spread over them, in this order
COMPONENTS = ("moto", "stack", "training job", "endpoint host")
NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=60)
PROBE_SECONDS = 0.5
UPLOAD_SECONDS = 3.0
# Runs asked for (a burst's, then by hand) beyond one per kill before the scenario gives up on a model:
# each kill fails at most one run, and kills may follow each other faster than a run can end.
SPARE_RUNS = 2


@dataclass
class Kill:
    component: str
    phase: str
    pid: int
    at: float  # monotonic
    restart_seconds: float | None = None  # until it answered again (None: nothing to restart)
    recovered_at: float | None = None
    endpoint_down: bool = False  # it took the endpoint's host down (until `recovered_at`)


@dataclass
class Report:
    kills: list[Kill] = field(default_factory=list)
    probe_failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, error code)
    probes: int = 0
    acknowledged: set[str] = field(default_factory=set)
    bursts: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        restarts: dict[str, list[float]] = {}
        for kill in self.kills:
            if kill.restart_seconds is not None:
                restarts.setdefault(kill.component, []).append(round(kill.restart_seconds, 1))
        windows = [round(k.recovered_at - k.at, 1) for k in self.kills if k.endpoint_down and k.recovered_at]
        return {
            "seconds": round(self.seconds, 1),
            "kills": len(self.kills),
            "kills_by_component": dict(Counter(k.component for k in self.kills)),
            "kills_by_phase": dict(Counter(k.phase for k in self.kills)),
            "restart_seconds": {name: {"max": max(times), "mean": round(sum(times) / len(times), 1), "all": times}
                                for name, times in restarts.items()},
            "endpoint_unavailable_windows_seconds": windows,
            "probes": self.probes,
            "probe_failures": len(self.probe_failures),
            "acknowledged_uploads": len(self.acknowledged),
            "bursts": self.bursts,
            "runs": [{k: r.get(k) for k in ("run_id", "trigger", "status", "reason")} for r in self.runs],
            "invariants": "all held" if not self.failures else self.failures,
        }


def _png(path: Path) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


class ChaosRun:
    def __init__(self, work_dir: Path, digits: Path, *, kills: int, seed: int,
                 gap_seconds: tuple[float, float] = (20.0, 60.0), settle_timeout: float = 900.0,
                 update: bool = True) -> None:
        """`digits`: labelled images in the <label>/<file> layout (`python -m training.demo_data digits`).
        `update=False` leaves out run 2 (the blue/green update): the short form, a third of the time."""
        self.work_dir = Path(work_dir)
        self.state_dir = self.work_dir / "state"
        self.kills_wanted = kills
        self.phases = PHASES if update else tuple(p for p in PHASES if p != "run 2")
        self.rng = random.Random(seed)
        self.gap_seconds = gap_seconds
        self.settle_timeout = settle_timeout
        files = sorted(Path(digits).rglob("*.png"))
        self.rng.shuffle(files)
        self.bursts = [{f"training-data/{p.parent.name}/{p.name}": p for p in files[:450]},
                       {f"training-data/{p.parent.name}/{p.name}": p for p in files[450:600]}]
        self.queries = files[600:]
        self.probe_image = _png(files[-1])
        self.report = Report()
        self.phase = "starting"
        self.stack: StackProcess | None = None
        self._stack_lock = threading.Lock()  # held while the stack is being replaced
        self._done = threading.Event()
        self._endpoint: str | None = None
        self._clients: dict[tuple[int, str], Any] = {}  # per stack (its ports change) and service

    # ----- the stack, as the scenario's threads see it ------------------------------------

    def _start_stack(self) -> StackProcess:
        stack = StackProcess(self.state_dir, overrides=SMALL_BUDGET, schedule_seconds=SCHEDULE_SECONDS,
                             log_path=self.work_dir / "stack.log")
        return stack.start(timeout=300)

    def _current(self) -> StackProcess:
        with self._stack_lock:
            assert self.stack is not None
            return self.stack

    def _client(self, service: str) -> Any:
        """A client of the current stack, without retries: the run sees every error."""
        stack = self._current()
        key = (stack.process.pid, service)
        if key not in self._clients:
            url = stack.urls["sagemaker"] if service.startswith("sagemaker") else stack.urls["moto"]
            self._clients[key] = boto3.client(service, endpoint_url=url, region_name=stack.info["region"],
                                              config=NO_RETRIES, aws_access_key_id="testing",
                                              aws_secret_access_key="testing")
        return self._clients[key]

    def _api(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
        """The HTTP API, with an outage (connection refused, a 5xx) as status 0."""
        try:
            status, answer = self._current().api(path, method, body, timeout=30)
        except (OSError, ValueError):
            return 0, None
        return (0, None) if status >= 500 else (status, answer)

    def _wait(self, check: Callable[[], Any], timeout: float, what: str, every: float = 2.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except (OSError, StackError, BotoCoreError, ClientError):  # an outage the kills cause
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s")
            time.sleep(every)

    # ----- the run --------------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        self.stack = self._start_stack()
        threads = [threading.Thread(target=self._upload_loop, name="uploads", daemon=True),
                   threading.Thread(target=self._probe_loop, name="prober", daemon=True)]
        killer = threading.Thread(target=self._kill_loop, name="killer", daemon=True)
        for thread in (*threads, killer):
            thread.start()
        try:
            self._scenario()
            killer.join()
            self._done.set()
            for thread in threads:
                thread.join(60)
            self._check_invariants()
        except TimeoutError as error:
            self._done.set()
            self.report.failures.append(str(error))
        finally:
            self._done.set()
            self.report.seconds = time.monotonic() - started
            self._current().__exit__()
        return self.report

    def _scenario(self) -> None:
        self.phase = "run 1"
        self._burst(0)
        self._until_settled_run(set(), lambda live: live is not None, "a LIVE model")
        first = self._live()
        if "run 2" in self.phases:
            self._update(first)
        self.phase = "serving"
        # The kills left land while images are classified.
        while len(self.report.kills) < self.kills_wanted and not self._done.is_set():
            time.sleep(1)

    def _update(self, first: dict[str, Any] | None) -> None:
        self.phase = "run 2"
        before = {r["run_id"] for r in self._wait(self._runs, 300, "the runs")}
        self._burst(1)
        self._until_settled_run(before, lambda live: live is not None and live["model_version"] != first["model_version"],
                                "the second model judged", second_data=True)

    def _burst(self, index: int) -> None:
        files = self.bursts[index]
        pending = dict(files)
        while pending:
            for key, path in list(pending.items()):
                try:
                    self._client("s3").put_object(Bucket=self._current().bucket, Key=key, Body=path.read_bytes())
                    pending.pop(key)
                except (OSError, BotoCoreError, ClientError):
                    time.sleep(1)
        self._wait(lambda: self._client("s3").put_object(Bucket=self._current().bucket,
                                                         Key="training-data/_COMMIT", Body=b""),
                   300, "the _COMMIT marker")
        self.report.bursts += 1
        logger.info("labelled burst uploaded", burst=index + 1, images=len(files))

    def _live(self) -> dict[str, Any] | None:
        status, body = self._api("/models/live")
        return body if status == 200 else None

    def _runs(self) -> list[dict[str, Any]] | None:
        status, body = self._api("/runs")
        return body.get("items", []) if status == 200 else None

    def _until_settled_run(self, before: set[str], good: Callable[[dict[str, Any] | None], bool], what: str,
                           second_data: bool = False) -> None:
        """Wait for the burst's run (one not in `before`) and every other to settle; while `good(live)` does
        not hold, ask for another run (a kill failed it)."""
        def settled() -> list[dict[str, Any]] | None:
            runs = self._settled_runs()
            new = [r for r in runs or [] if r.get("trigger") == "data" and r["run_id"] not in before]
            return runs if new else None

        attempts = self.kills_wanted + SPARE_RUNS
        for _ in range(attempts):
            runs = self._wait(settled, 1200, f"{what}: the runs to settle", every=5)
            live = self._live()
            if good(live):
                return
            judged = [r for r in runs if r["status"] == "REJECTED"]
            if second_data and judged and live is not None:
                return  # the gate kept the live model: nothing to update
            logger.info("asking for another run", wanted=what, runs=[(r["run_id"], r["status"]) for r in runs])
            self._wait(lambda: self._api("/runs", "POST", {})[0] == 202, 300, "a run asked for by hand")
            self._wait(lambda: any(r["status"] not in TERMINAL_RUNS for r in self._runs() or []) or self._live() != live,
                       300, "the run asked for to start", every=2)
        raise TimeoutError(f"{what}: not after {attempts} runs")

    def _settled_runs(self) -> list[dict[str, Any]] | None:
        runs = self._runs()
        if not runs or any(r["status"] not in TERMINAL_RUNS for r in runs):
            return None
        return runs

    # ----- incoming images and the prober ------------------------------------------------

    def _upload_loop(self) -> None:
        index = 0
        while not self._done.wait(UPLOAD_SECONDS):
            for _ in range(3):
                path = self.queries[index % len(self.queries)]
                key = f"incoming/chaos-{index:05d}-{path.name}"
                index += 1
                try:
                    self._client("s3").put_object(Bucket=self._current().bucket, Key=key, Body=path.read_bytes())
                except (OSError, BotoCoreError, ClientError):
                    continue  # not acknowledged: nothing is owed
                self.report.acknowledged.add(key)

    def _endpoint_name(self) -> str | None:
        if self._endpoint is None:
            try:
                endpoints = self._client("sagemaker").list_endpoints()["Endpoints"]
            except (OSError, BotoCoreError, ClientError):
                return None
            if any(e["EndpointStatus"] == "InService" for e in endpoints):
                self._endpoint = endpoints[0]["EndpointName"]
        return self._endpoint

    def _invoke(self) -> None:
        self._client("sagemaker-runtime").invoke_endpoint(EndpointName=self._endpoint, ContentType="image/png",
                                                          Accept="application/json", Body=self.probe_image)

    def _probe_loop(self) -> None:
        while not self._done.wait(PROBE_SECONDS):
            if self._endpoint_name() is None:
                continue
            self.report.probes += 1
            try:
                self._invoke()
            except ClientError as error:
                self.report.probe_failures.append((time.monotonic(), error.response["Error"]["Code"]))
            except (OSError, BotoCoreError) as error:
                self.report.probe_failures.append((time.monotonic(), type(error).__name__))

    # ----- the kills ------------------------------------------------------------------------

    def _targets(self) -> dict[str, list[psutil.Process]]:
        """The processes of each component alive now."""
        stack = self._current()
        found: dict[str, list[psutil.Process]] = {"stack": [psutil.Process(stack.process.pid)]}
        for process in psutil.Process(stack.process.pid).children(recursive=True):
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:
                continue
            if "owner_watch.py" in command:
                continue  # the container runtime's part, not the job's own process
            if "local_aws.moto_server" in command:
                found.setdefault("moto", []).append(process)
            elif "local_aws.endpoint_host" in command:
                found.setdefault("endpoint host", []).append(process)
            elif "sagemaker_training" in command or "train.py" in command:
                found.setdefault("training job", []).append(process)
        return found

    def _kill_loop(self) -> None:
        try:
            while len(self.report.kills) < self.kills_wanted:
                # Kill i waits for its share of the phases to begin (it may land in a later one).
                phase = self.phases[len(self.report.kills) * len(self.phases) // self.kills_wanted]
                while self.phase not in self.phases[self.phases.index(phase):]:
                    if self._done.wait(1):
                        return
                if self._done.wait(self.rng.uniform(*self.gap_seconds)):
                    return
                targets = self._targets()
                component = self.rng.choice(sorted(targets))
                self._kill(component, self.rng.choice(sorted(targets[component], key=lambda p: p.pid)))
        except Exception as error:  # noqa: BLE001 - a component that did not come back ends the run
            logger.exception("chaos stopped")
            self.report.failures.append(f"after a kill: {type(error).__name__}: {error}")
            self._done.set()

    def _kill(self, component: str, process: psutil.Process) -> None:
        had_endpoint = self._endpoint is not None
        kill = Kill(component, self.phase, process.pid, time.monotonic())
        try:
            left = process.children(recursive=True)  # what must end with it (a host's worker, the stack's children)
            command = " ".join(process.cmdline())[:200]
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return  # it ended by itself first: no kill
        logger.info("killed", component=component, phase=self.phase, pid=process.pid, command=command)
        self.report.kills.append(kill)
        if component == "stack":
            self._restart_stack(left)
        if component == "endpoint host":
            self._check_gone(left, "the killed endpoint host")  # then a successful invoke is its replacement's
        if component == "moto":
            self._wait(lambda: self._client("s3").list_buckets(), 120, "moto back", every=0.2)
        if component in ("stack", "endpoint host") and had_endpoint:
            kill.endpoint_down = True
            self._wait(lambda: self._invoke() or True, 300, "the endpoint answering again", every=0.2)
        if component != "training job":  # a killed job stays dead (it ends Failed), as on AWS
            kill.recovered_at = time.monotonic()
            kill.restart_seconds = kill.recovered_at - kill.at
        logger.info("recovered", component=component, seconds=kill.restart_seconds)

    def _check_gone(self, processes: list[psutil.Process], what: str) -> None:
        """Each of `processes` ends within 30 s (its owner is dead); one that does not is a failure, then killed."""
        psutil.wait_procs(processes, timeout=30)
        alive = []
        for process in processes:
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        if alive:
            self.report.failures.append(f"processes of {what} still ran 30 s later: "
                                        f"{[' '.join(p.cmdline())[:120] for p in alive]}")
            for process in alive:
                process.kill()

    def _restart_stack(self, left: list[psutil.Process]) -> None:
        with self._stack_lock:
            assert self.stack is not None
            self.stack.process.wait(30)
            self._check_gone(left, "the killed stack")
            try:
                self.stack = self._start_stack()
            except StackError as error:
                self.report.failures.append(f"the stack did not start again: {error}")
                raise

    # ----- the invariants --------------------------------------------------------------------

    def _check_invariants(self) -> None:
        self.phase = "settling"
        bucket = self._current().bucket
        s3 = self._client("s3")
        missing = []
        for key in sorted(self.report.acknowledged):
            try:
                s3.head_object(Bucket=bucket, Key=key)
            except ClientError:
                missing.append(key)
        if missing:
            self.report.failures.append(f"{len(missing)} acknowledged uploads have no object: {missing[:5]}")
        incoming = {obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="incoming/")
                    for obj in page.get("Contents", [])}
        try:
            items = self._wait(lambda: self._final_predictions(incoming), self.settle_timeout,
                               "a final prediction for every image", every=5)
        except TimeoutError as error:
            items = self._current().predictions()
            self.report.failures.append(f"{error}; not final: "
                                        f"{[(i['image_key'], i['status']) for i in items if i['status'] not in ('OK', 'FAILED')][:5]}")
        counts = Counter(item["image_key"] for item in items)
        doubles = [key for key, count in counts.items() if count > 1]
        if doubles:
            self.report.failures.append(f"images with more than one prediction: {doubles[:5]}")
        if set(counts) != incoming:
            self.report.failures.append(f"predictions and images differ: {sorted(set(counts) ^ incoming)[:5]}")
        unexplained = [i["image_key"] for i in items if i["status"] == "FAILED" and not i.get("error")]
        if unexplained:
            self.report.failures.append(f"FAILED predictions without a reason: {unexplained[:5]}")
        runs = self._wait(self._settled_runs, self.settle_timeout, "every run finished", every=5)
        self.report.runs = runs
        from_data = [r for r in runs if r.get("trigger") == "data"]
        if len(from_data) != self.report.bursts:
            self.report.failures.append(f"{self.report.bursts} labelled bursts became {len(from_data)} runs")
        live, name = self._live(), self._endpoint_name()
        serving = self._client("sagemaker").describe_endpoint(EndpointName=name)["EndpointConfigName"] if name else None
        if live is None or live.get("endpoint_config") != serving:
            self.report.failures.append(f"the live model ({live and live.get('endpoint_config')}) is not what the "
                                        f"endpoint serves ({serving})")
        windows = [(k.at, k.recovered_at) for k in self.report.kills if k.endpoint_down and k.recovered_at]
        outside = [(round(at, 1), code) for at, code in self.report.probe_failures
                   if not any(start <= at <= end for start, end in windows)]
        if outside:
            self.report.failures.append(f"{len(outside)} probes failed while the endpoint's host was up: {outside[:5]}")

    def _final_predictions(self, incoming: set[str]) -> list[dict[str, Any]] | None:
        items = self._current().predictions()
        final = {i["image_key"] for i in items if i["status"] in ("OK", "FAILED")}
        return items if final >= incoming else None
