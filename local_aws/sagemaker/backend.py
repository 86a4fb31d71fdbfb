"""The local SageMaker's operations, one method per API operation and named after it: each
validates its request, turns it into a record in the state (`state`) or answers from the
records, and hands the work to the runners (training, tuning, endpoints), built here.

On a restart, the state fails the jobs that were running (a training process cannot be
re-attached); endpoints that were serving are hosted again from their current config. What a
killed service left in its work folders (its hosts' model copies, its jobs' /opt/ml) goes first.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

from . import events
from .config import Settings
from .endpoints import EndpointFleet
from .exceptions import ResourceInUse, ResourceLimitExceeded, ValidationError, ValidationException
from .listing import filter_and_sort, paginate
from .records import Endpoint, EndpointConfig, Model, TrainingJob, TuningJob, drop_none, now
from .state import SageMakerState
from .training_jobs import TrainingRunner
from .tuning import Tuner

logger = Logger(service="local-sagemaker")

WORK_FOLDERS = ("hosts", "jobs")  # under the state directory: endpoint hosts' and training jobs' folders


def remove_leftovers(state_dir: Path) -> list[str]:
    """Empty the work folders: at start no host or job of this service runs yet (a clean stop removes
    its own; a killed service's processes end with it)."""
    removed = []
    for folder in WORK_FOLDERS:
        for path in sorted((state_dir / folder).glob("*")):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"{folder}/{path.name}")
    return removed


class SageMakerBackend:
    """The operations, over the state and the runners. Runners do the work in threads and
    report back through the state's `change_*`, which persists and publishes each change."""

    def __init__(self, settings: Settings, publish: Callable[[events.Event], None] | None = None) -> None:
        self.settings = settings
        removed = remove_leftovers(settings.state_dir)
        if removed:
            logger.warning("removed what a killed service left in its work folders", folders=removed)
        self.state = SageMakerState(settings, publish or events.eventbridge_publisher(settings.region))
        self.runner = TrainingRunner(settings, self.state)
        self.tuner = Tuner(self.state, self.runner, self.start_training_job, settings.max_running_jobs)
        self.fleet = EndpointFleet(settings, self.state)
        for endpoint in list(self.state.endpoints.values()):
            if endpoint.status in ("Creating", "Updating", "InService"):
                self.fleet.resume(endpoint)

    def shutdown(self) -> None:
        """Stop the work this process runs (training processes, endpoint hosts)."""
        self.tuner.shutdown()
        self.runner.shutdown()
        self.fleet.shutdown()

    # ----- training jobs -----------------------------------------------------------------

    def create_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        job = self.start_training_job(params)
        return {"TrainingJobArn": job.arn}

    def start_training_job(self, params: dict[str, Any], *, tuning_job_arn: str | None = None,
                           tuned: dict[str, str] | None = None,
                           on_line: Callable[[str], None] | None = None) -> TrainingJob:
        """Create a job record and start its process (CreateTrainingJob, or a tuning job's child)."""
        name = params["TrainingJobName"]
        self.runner.validate(params)
        with self.state.lock:
            if name in self.state.training_jobs:
                raise ResourceInUse(f"Training job names must be unique within an AWS account and region, "
                                    f"and a training job with this name already exists ({self.settings.arn('training-job', name)})")
            if self.state.running_training_jobs() >= self.settings.max_running_jobs:
                raise ResourceLimitExceeded(
                    f"The account-level service limit 'training jobs running at once' is "
                    f"{self.settings.max_running_jobs} Jobs; stop a job or raise LOCAL_SAGEMAKER_MAX_RUNNING_JOBS.")
            request = {k: v for k, v in params.items() if k != "Tags"}
            job = TrainingJob(
                name=name, arn=self.settings.arn("training-job", name), request=request,
                tags=list(params.get("Tags", [])), creation_time=now(),
                log_path=str(self.settings.state_dir / "logs" / f"{name}.log"),
                tuning_job_arn=tuning_job_arn, tuned_hyperparameters=tuned,
                objective_status="Pending" if tuning_job_arn else None,
            )
            job.move_to("Starting", "Launching requested ML instances")
            job.last_modified_time = job.creation_time
            self.state.training_jobs[name] = job
            self.state.save()
            event = events.training_job_event(job.describe(), job.tags)
        self.state.publish(event)
        self.runner.start(name, on_line=on_line)
        return job

    def describe_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return self.state.training_job(params["TrainingJobName"]).describe()

    def list_training_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            jobs = filter_and_sort(self.state.training_jobs.values(), params, name=lambda j: j.name,
                                   status=lambda j: j.status)
            return paginate([j.summary() for j in jobs], params, "TrainingJobSummaries")

    def stop_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["TrainingJobName"]
        self.state.training_job(name)  # an unknown name answers ResourceNotFound
        self.runner.stop(name)
        return {}

    def training_job_log(self, name: str) -> str:
        """The job's log, as CloudWatch keeps it."""
        with self.state.lock:
            path = Path(self.state.training_job(name).log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    # ----- tuning jobs -------------------------------------------------------------------

    def create_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]
        plan = self.tuner.plan(params)  # validates the config before anything is recorded
        with self.state.lock:
            if name in self.state.tuning_jobs:
                raise ResourceInUse(f"Hyperparameter tuning job {name!r} already exists")
            tuning = TuningJob(name=name, arn=self.settings.arn("hyper-parameter-tuning-job", name),
                               request={k: v for k, v in params.items() if k != "Tags"},
                               tags=list(params.get("Tags", [])), creation_time=now())
            tuning.last_modified_time = tuning.creation_time
            self.state.tuning_jobs[name] = tuning
            self.state.save()
            event = events.tuning_job_event(self.state.describe_tuning_job(tuning), tuning.tags)
        self.state.publish(event)
        self.tuner.start(name, plan)
        return {"HyperParameterTuningJobArn": tuning.arn}

    def describe_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return self.state.describe_tuning_job(self.state.tuning_job(params["HyperParameterTuningJobName"]))

    def list_hyper_parameter_tuning_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            chosen = filter_and_sort(self.state.tuning_jobs.values(), params, name=lambda t: t.name,
                                     status=lambda t: t.status)
            summaries = []
            for tuning in chosen:
                described = self.state.describe_tuning_job(tuning)
                summaries.append(drop_none({
                    "HyperParameterTuningJobName": tuning.name, "HyperParameterTuningJobArn": tuning.arn,
                    "HyperParameterTuningJobStatus": tuning.status,
                    "Strategy": tuning.request["HyperParameterTuningJobConfig"]["Strategy"],
                    "CreationTime": tuning.creation_time, "HyperParameterTuningEndTime": tuning.end_time,
                    "LastModifiedTime": described["LastModifiedTime"],
                    "TrainingJobStatusCounters": described["TrainingJobStatusCounters"],
                    "ObjectiveStatusCounters": described["ObjectiveStatusCounters"],
                    "ResourceLimits": tuning.request["HyperParameterTuningJobConfig"].get("ResourceLimits"),
                }))
            return paginate(summaries, params, "HyperParameterTuningJobSummaries")

    def list_training_jobs_for_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            tuning = self.state.tuning_job(params["HyperParameterTuningJobName"])
            children = self.state.children(tuning)
            if params.get("StatusEquals"):
                children = [c for c in children if c.status == params["StatusEquals"]]
            sort_by = params.get("SortBy", "CreationTime")
            if sort_by == "FinalObjectiveMetricValue":
                # Jobs without an objective go last whatever the order, as on AWS.
                scored = [c for c in children if c.objective]
                unscored = [c for c in children if not c.objective]
                scored.sort(key=lambda c: c.objective["Value"], reverse=params.get("SortOrder", "Descending") == "Descending")
                children = scored + unscored
            else:
                children = filter_and_sort(children, params, name=lambda c: c.name, status=lambda c: c.status)
            return paginate([c.tuning_summary(tuning.name) for c in children], params, "TrainingJobSummaries")

    def stop_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]
        with self.state.lock:
            tuning = self.state.tuning_job(name)
            if tuning.status != "InProgress":
                raise ValidationException(f"Tuning job {name} is in status {tuning.status} and cannot be stopped")
        self.state.change_tuning_job(name, lambda t: (setattr(t, "stop_requested", True), setattr(t, "status", "Stopping")))
        self.tuner.stop(name)
        return {}

    # ----- models and endpoint configs ---------------------------------------------------

    def create_model(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["ModelName"]
        container = params.get("PrimaryContainer") or (params.get("Containers") or [None])[0]
        if not container or not container.get("ModelDataUrl"):
            raise ValidationException("The local SageMaker needs a PrimaryContainer with a ModelDataUrl")
        with self.state.lock:
            if name in self.state.models:
                raise ValidationException(f"Cannot create already existing model {self.settings.arn('model', name)!r}.")
            model = Model(name, self.settings.arn("model", name), {k: v for k, v in params.items() if k != "Tags"},
                          list(params.get("Tags", [])), now())
            self.state.models[name] = model
            self.state.save()
        return {"ModelArn": model.arn}

    def describe_model(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return self.state.model(params["ModelName"]).describe()

    def delete_model(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            self.state.model(params["ModelName"])
            del self.state.models[params["ModelName"]]
            self.state.save()
        return {}

    def create_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointConfigName"]
        with self.state.lock:
            if name in self.state.endpoint_configs:
                raise ValidationException(
                    f"Cannot create already existing endpoint configuration {self.settings.arn('endpoint-config', name)!r}.")
            for variant in params["ProductionVariants"]:
                self.state.model(variant["ModelName"])
            config = EndpointConfig(name, self.settings.arn("endpoint-config", name),
                                    {k: v for k, v in params.items() if k != "Tags"},
                                    list(params.get("Tags", [])), now())
            self.state.endpoint_configs[name] = config
            self.state.save()
        return {"EndpointConfigArn": config.arn}

    def describe_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return self.state.endpoint_config(params["EndpointConfigName"]).describe()

    def delete_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            self.state.endpoint_config(params["EndpointConfigName"])
            del self.state.endpoint_configs[params["EndpointConfigName"]]
            self.state.save()
        return {}

    # ----- endpoints ---------------------------------------------------------------------

    def create_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        with self.state.lock:
            if name in self.state.endpoints:
                raise ValidationException(
                    f"Cannot create already existing endpoint \"{self.settings.arn('endpoint', name)}\".")
            self.state.endpoint_config(params["EndpointConfigName"])
            endpoint = Endpoint(name, self.settings.arn("endpoint", name), params["EndpointConfigName"],
                                list(params.get("Tags", [])), now())
            endpoint.last_modified_time = endpoint.creation_time
            self.state.endpoints[name] = endpoint
            self.state.save()
            event = events.endpoint_event(self.state.describe_endpoint(endpoint), endpoint.tags)
        self.state.publish(event)
        self.fleet.create(name)
        return {"EndpointArn": endpoint.arn}

    def update_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        with self.state.lock:
            endpoint = self.state.endpoint(name)
            self.state.endpoint_config(config_name)
            if endpoint.status != "InService":
                raise ValidationException(
                    f"Cannot update in-progress endpoint \"{endpoint.arn}\"" if endpoint.status in ("Creating", "Updating")
                    else f"Cannot update endpoint \"{endpoint.arn}\" in status {endpoint.status}")
        self.state.change_endpoint(name, lambda e: (setattr(e, "status", "Updating"),
                                                    setattr(e, "pending_config_name", config_name),
                                                    setattr(e, "failure_reason", None)))
        self.fleet.update(name, config_name)
        return {"EndpointArn": endpoint.arn}

    def describe_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            return self.state.describe_endpoint(self.state.endpoint(params["EndpointName"]))

    def list_endpoints(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            chosen = filter_and_sort(self.state.endpoints.values(), params, name=lambda e: e.name, status=lambda e: e.status)
            summaries = [{"EndpointName": e.name, "EndpointArn": e.arn, "CreationTime": e.creation_time,
                          "LastModifiedTime": e.last_modified_time or e.creation_time, "EndpointStatus": e.status}
                         for e in chosen]
            return paginate(summaries, params, "Endpoints")

    def delete_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        with self.state.lock:
            self.state.endpoint(name)
        self.state.change_endpoint(name, lambda e: setattr(e, "status", "Deleting"))
        self.fleet.delete(name)
        with self.state.lock:
            self.state.endpoints.pop(name, None)
            self.state.save()
        return {}

    # ----- the runtime ---------------------------------------------------------------------

    def invoke_endpoint(self, name: str, body: bytes, content_type: str, accept: str,
                        custom_attributes: str | None = None) -> tuple[bytes, str, str]:
        """InvokeEndpoint: (body, content type, variant). The runtime spells its error ValidationError."""
        with self.state.lock:
            endpoint = self.state.endpoints.get(name)
            if endpoint is None:
                raise ValidationError(f"Endpoint {name} of account {self.settings.account} not found.")
        return self.fleet.invoke(endpoint, body, content_type, accept, custom_attributes)
