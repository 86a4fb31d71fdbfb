"""The whole pipeline on one machine: moto, the local SageMaker, the dispatcher and the HTTP API.

    with Stack(StackOptions(state_dir=Path(".local-aws"))) as stack:
        stack.urls  # {"moto": ..., "sagemaker": ..., "api": ...}

Start order matters: moto starts with what its state directory holds (`<state_dir>/moto`,
put back before it listens, sending no S3 events) before the bucket notifications are
configured; the EventBridge rules exist before the local SageMaker starts (it re-hosts
endpoints and announces them); the dispatcher polls only once everything it calls is up.
Stop runs the other way. moto writes every write it acknowledges to that directory
before answering (`local_aws.moto_write_through`), so a stop saves nothing and a killed
stack loses nothing: the next start finds S3, DynamoDB and SQS where they were.

Everything runs in this process (threads) except moto, which has its own interpreter
(its request handling would otherwise share a GIL with the handlers calling it), and
what the local SageMaker starts (training processes, endpoint hosts), which it stops
itself. None outlives a stack that is killed: each ends itself once the stack is gone
(`local_aws.owner_watch`), and each is recorded in `<state_dir>/processes.jsonl` for the
next start to end before it starts anything (`local_aws.process_record`). The handlers
run in-process, so this process's environment is the Lambda's: the stage's variables
plus the endpoint URLs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from chalice_app.config import settings_from_env

from ..dispatcher.stage import Stage
from ..owner_watch import OWNER_ENV, owner_token
from ..ports import free_port
from ..process_record import RECORD_ENV, end_recorded
from . import infra
from .containers import with_project_containers
from .stage import REPO_ROOT, handler_environment, load_stage

logger = Logger(service="local-aws")

STACK_FILE = "stack.json"
PROCESS_FILE = "processes.jsonl"  # what the stack started (`local_aws.process_record`)
# What the stack starts (endpoint hosts, training jobs) shares the machine's cores with
# moto, the handlers and each other. OpenMP's default (torch's intra-op threads) spins a
# waiting thread on its core for a while: measured with bench/e2e.py, the endpoint host
# then burnt 10-15 ms of CPU per image taken from the pipeline, against 3.6 ms when a
# waiting thread sleeps. A value already in the environment wins.
SHARED_CORES_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
DEFAULT_PORTS = {"moto": 5000, "sagemaker": 8090, "api": 8000}


def quiet_libraries() -> None:
    """One access-log line per request (moto, the local SageMaker) would drown the handlers' logs."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No application metrics to publish")


@dataclass
class StackOptions:
    state_dir: Path = Path(".local-aws")
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))  # 0: any free port
    stage: str = "local"
    overrides: dict[str, str] = field(default_factory=dict)  # stage variables replaced (NAME=VALUE)
    schedule_seconds: float | None = None  # run `schedule` handlers this often instead of their rate
    concurrency: int = 2  # batches of one queue at once, where the app sets no maximum


class Stack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.state_dir = options.state_dir.resolve()
        self.stage: Stage = load_stage(options.stage, options.overrides)
        self.ports = {name: port or free_port(options.host) for name, port in options.ports.items()}
        self.urls = {name: f"http://{options.host}:{port}" for name, port in self.ports.items()}
        self.restored: dict[str, int] = {}
        self._moto = self._sagemaker = self._dispatcher = self._api = None
        self._api_thread: threading.Thread | None = None
        # The handlers' settings, checked before anything starts: a bad value (malformed JSON, an
        # unknown rule, a non-integer) is the stage's ConfigError here, not a 500 from every handler.
        settings_from_env(self.environment)

    @property
    def environment(self) -> dict[str, str]:
        return handler_environment(self.stage, self.urls["moto"], self.urls["sagemaker"])

    @property
    def bucket(self) -> str:
        return self.stage.environment["BUCKET"]

    def session(self) -> Any:
        return boto3.session.Session()

    # --- start ----------------------------------------------------------------------------

    def start(self) -> "Stack":
        quiet_libraries()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)
        self._end_leftovers()
        os.environ.update(self.environment)
        for name, value in SHARED_CORES_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        try:
            self._start_moto()
            self._start_sagemaker()
            self._dispatcher.start()
            self._start_api()
        except BaseException:
            self.stop()
            raise
        (self.state_dir / STACK_FILE).write_text(json.dumps({
            "pid": os.getpid(), "urls": self.urls, "bucket": self.bucket, "stage": self.stage.name,
            "region": self.stage.region, "restored": self.restored}, indent=2))
        return self

    def _end_leftovers(self) -> None:
        """End what a stack that died on this state directory left running, then record what this one starts."""
        ended = end_recorded(self.state_dir / PROCESS_FILE)
        if ended:
            logger.warning("ended the processes a stack that died left running",
                           processes=[asdict(entry) for entry in ended])
        os.environ[OWNER_ENV] = owner_token()  # every child ends itself when this process is gone
        os.environ[RECORD_ENV] = str(self.state_dir / PROCESS_FILE)

    def _start_moto(self) -> None:
        from ..moto_server import MotoProcess

        self._moto = MotoProcess(self.options.host, self.ports["moto"], state_dir=self.state_dir / "moto").start()
        self.restored = self._moto.restored
        session = self.session()
        infra.apply(infra.render(self.stage, api_origin=self.urls["api"]), session)
        self._upload_source(session)
        from ..dispatcher import Dispatcher, wiring_from_app

        app = self.app()
        wiring = wiring_from_app(app, self.stage, default_concurrency=self.options.concurrency,
                                 schedule_seconds=self.options.schedule_seconds)
        self._dispatcher = Dispatcher(app, self.stage, session, wiring)
        self._dispatcher.wire()

    def _upload_source(self, session: Any) -> None:
        """The training source where the stage's SOURCE_DIR_URI says (what the deploy step does on AWS)."""
        from ..sagemaker.s3_transfer import split_s3_uri
        from infra.sourcedir import build_sourcedir

        bucket, key = split_s3_uri(self.stage.environment["SOURCE_DIR_URI"])
        session.client("s3").put_object(Bucket=bucket, Key=key, Body=build_sourcedir())

    def _start_sagemaker(self) -> None:
        from ..sagemaker.config import Settings
        from ..sagemaker.server import LocalSageMaker

        settings = with_project_containers(Settings.from_env(self.state_dir / "sagemaker"))
        self._sagemaker = LocalSageMaker(settings, host=self.options.host, port=self.ports["sagemaker"]).start()

    def _start_api(self) -> None:
        from chalice.cli.factory import CLIFactory
        from chalice.local import create_local_server

        config = CLIFactory(str(REPO_ROOT)).create_config_obj(chalice_stage_name=self.stage.name)
        self._api = create_local_server(self.app(), config, self.options.host, self.ports["api"])
        self._api_thread = threading.Thread(target=self._api.server.serve_forever, name="api", daemon=True)
        self._api_thread.start()

    @staticmethod
    def app():
        """The Chalice app, imported after the stage's environment is set (it names its queues from it)."""
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from app import app

        return app

    # --- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        if self._api is not None:
            self._api.server.shutdown()
            self._api.server.server_close()
            self._api = None
        if self._dispatcher is not None:
            released = self._dispatcher.stop()
            logger.info("dispatcher stopped", released_messages=released)
            self._dispatcher = None
        if self._sagemaker is not None:
            self._sagemaker.stop()
            self._sagemaker = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
        (self.state_dir / STACK_FILE).unlink(missing_ok=True)
        for name in (OWNER_ENV, RECORD_ENV):
            os.environ.pop(name, None)

    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # --- how to use it --------------------------------------------------------------------

    def usage(self) -> str:
        moto, sm, api, bucket, region = (self.urls["moto"], self.urls["sagemaker"], self.urls["api"], self.bucket,
                                         self.stage.region)
        restored = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.restored.items() if v)
        return "\n".join([
            f"local AWS is up (stage {self.stage.name}, state in {self.state_dir})"
            + (f"; restored {restored}" if restored else ""),
            f"  moto (S3, SQS, EventBridge, DynamoDB)  {moto}",
            f"  local SageMaker (API and runtime)      {sm}",
            f"  HTTP API                               {api}/",
            f"  web console                            {api}/console",
            "",
            "Use it with the ordinary tools:",
            f"  export AWS_ENDPOINT_URL={moto} AWS_ENDPOINT_URL_SAGEMAKER={sm} "
            f"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME={sm}",
            f"  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION={region}",
            "  python -m training.demo_data digits --layout labels",
            f"  aws --endpoint-url {moto} s3 cp --recursive digits s3://{bucket}/training-data/",
            f"  curl {api}/runs            # the retraining run it starts, then /models/live",
            f"  aws --endpoint-url {moto} s3 cp digits/3/digit-0003.png s3://{bucket}/incoming/",
            f"  curl {api}/predictions     # or {api}/predictions/<file name>",
            "  python -c \"import boto3; print(boto3.client('sagemaker').list_training_jobs()['TrainingJobSummaries'])\"",
            "Ctrl-C stops everything; starting again finds the data, models, endpoint and predictions.",
        ])
