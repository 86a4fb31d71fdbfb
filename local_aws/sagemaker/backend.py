"""The local SageMaker's backend: its methods are the API's operations (one per operation,
named after it), over the records (`records`), persisted after every change (see `store`).

On a restart, jobs that were running come back as Failed with a reason saying so (a
training process cannot be re-attached); endpoints that were serving are hosted again
from their current config.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger

from . import events
from .config import Settings
from .endpoints import EndpointFleet
from .exceptions import (ResourceInUse, ResourceLimitExceeded, ResourceNotFound, ValidationError,
                         ValidationException)
from .listing import filter_and_sort, paginate
from .records import (ACTIVE_JOB, RECORD_TYPES, RESTART_REASON, Endpoint, EndpointConfig, Model, TrainingJob,
                      TuningJob, drop_none, now)
from .store import StateStore
from .training_jobs import TrainingRunner
from .tuning import Tuner

logger = Logger(service="local-sagemaker")


class SageMakerBackend:
    """The operations. Runners (training, tuning, endpoints) do the work in threads and
    report back through `change_*`, which persists and publishes the state change events."""

    def __init__(self, settings: Settings, publish: Callable[[events.Event], None] | None = None) -> None:
        self.settings = settings
        self.lock = threading.RLock()
        self.publish = publish or events.eventbridge_publisher(settings.region)
        self.store = StateStore(settings.state_dir)
        self.training_jobs: dict[str, TrainingJob] = {}
        self.tuning_jobs: dict[str, TuningJob] = {}
        self.models: dict[str, Model] = {}
        self.endpoint_configs: dict[str, EndpointConfig] = {}
        self.endpoints: dict[str, Endpoint] = {}
        # Bumped on every job state change, so a waiting tuner wakes when a trial ends rather than on a timer.
        self._changes = threading.Condition()
        self._version = 0
        self.runner = TrainingRunner(self)
        self.tuner = Tuner(self)
        self.fleet = EndpointFleet(self)
        self._load()

    # ----- persistence -------------------------------------------------------------------

    def _load(self) -> None:
        state = self.store.load()
        for key, record_type in RECORD_TYPES.items():
            table = getattr(self, key)
            for data in state.get(key, []):
                record = record_type(**data)
                table[record.name] = record
        # Jobs cut off by the restart fail, and say so as AWS would: whoever waits for
        # their state change (the pipeline's run lock) must hear of it.
        failed: list[events.Event] = []
        for job in self.training_jobs.values():
            if job.status in ACTIVE_JOB:
                job.failure_reason = RESTART_REASON
                job.move_to("Failed", RESTART_REASON, status="Failed")
                if job.tuning_job_arn:
                    job.objective_status = "Failed"
                failed.append(events.training_job_event(job.describe(), job.tags))
        for tuning in self.tuning_jobs.values():
            if tuning.status in ACTIVE_JOB:
                tuning.status, tuning.failure_reason, tuning.end_time = "Failed", RESTART_REASON, now()
                failed.append(events.tuning_job_event(self._describe_tuning(tuning), tuning.tags))
        self._save()
        for event in failed:
            self.publish(event)
        for endpoint in list(self.endpoints.values()):
            if endpoint.status in ("Creating", "Updating", "InService"):
                self.fleet.resume(endpoint)

    def _save(self) -> None:
        with self.lock:
            self.store.save({key: [asdict(r) for r in getattr(self, key).values()] for key in RECORD_TYPES})

    def shutdown(self) -> None:
        """Stop the work this process runs (training processes, endpoint hosts)."""
        self.tuner.shutdown()
        self.runner.shutdown()
        self.fleet.shutdown()

    # ----- state changes reported by the runners ----------------------------------------

    def changes_seen(self) -> int:
        with self._changes:
            return self._version

    def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once a job changed after `changes_seen()` said `seen`, or after `timeout` seconds."""
        with self._changes:
            self._changes.wait_for(lambda: self._version != seen, timeout)

    def _announce_change(self) -> None:
        with self._changes:
            self._version += 1
            self._changes.notify_all()

    def change_training_job(self, name: str, mutate: Callable[[TrainingJob], None]) -> TrainingJob:
        with self.lock:
            job = self.training_jobs[name]
            before = (job.status, job.secondary_status)
            mutate(job)
            job.last_modified_time = now()
            self._save()
            changed = (job.status, job.secondary_status) != before
            event = events.training_job_event(job.describe(), job.tags) if changed else None
        self._announce_change()
        if event:
            self.publish(event)
        return job

    def change_tuning_job(self, name: str, mutate: Callable[[TuningJob], None]) -> TuningJob:
        with self.lock:
            tuning = self.tuning_jobs[name]
            before = tuning.status
            mutate(tuning)
            tuning.last_modified_time = now()
            self._save()
            event = None
            if tuning.status != before:
                event = events.tuning_job_event(self._describe_tuning(tuning), tuning.tags)
        self._announce_change()
        if event:
            self.publish(event)
        return tuning

    def change_endpoint(self, name: str, mutate: Callable[[Endpoint], None], *, announce: bool = True) -> Endpoint:
        with self.lock:
            endpoint = self.endpoints[name]
            mutate(endpoint)
            endpoint.last_modified_time = now()
            self._save()
            event = events.endpoint_event(self._describe_endpoint(endpoint), endpoint.tags) if announce else None
        if event:
            self.publish(event)
        return endpoint

    def running_training_jobs(self) -> int:
        with self.lock:
            return sum(job.status in ACTIVE_JOB for job in self.training_jobs.values())

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
        with self.lock:
            if name in self.training_jobs:
                raise ResourceInUse(f"Training job names must be unique within an AWS account and region, "
                                    f"and a training job with this name already exists ({self.settings.arn('training-job', name)})")
            if self.running_training_jobs() >= self.settings.max_running_jobs:
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
            self.training_jobs[name] = job
            self._save()
            event = events.training_job_event(job.describe(), job.tags)
        self.publish(event)
        self.runner.start(name, on_line=on_line)
        return job

    def _training_job(self, name: str) -> TrainingJob:
        job = self.training_jobs.get(name)
        if job is None:
            raise ResourceNotFound(f"Requested resource not found: training job {name!r} does not exist")
        return job

    def describe_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._training_job(params["TrainingJobName"]).describe()

    def list_training_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            jobs = filter_and_sort(self.training_jobs.values(), params, name=lambda j: j.name,
                                   status=lambda j: j.status)
            return paginate([j.summary() for j in jobs], params, "TrainingJobSummaries")

    def stop_training_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["TrainingJobName"]
        with self.lock:
            job = self._training_job(name)
            if job.status != "InProgress":
                raise ValidationException(f"The request was rejected because the training job is in status {job.status}.")
        self.change_training_job(name, lambda j: (setattr(j, "stop_requested", True),
                                                  j.move_to("Stopping", "Stopping the training job", status="Stopping")))
        self.runner.stop(name)
        return {}

    def training_job_log(self, name: str) -> str:
        """The job's log, as CloudWatch keeps it."""
        with self.lock:
            path = Path(self._training_job(name).log_path)
        return path.read_text(errors="replace") if path.exists() else ""

    # ----- tuning jobs -------------------------------------------------------------------

    def create_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["HyperParameterTuningJobName"]
        plan = self.tuner.plan(params)  # validates the config before anything is recorded
        with self.lock:
            if name in self.tuning_jobs:
                raise ResourceInUse(f"Hyperparameter tuning job {name!r} already exists")
            tuning = TuningJob(name=name, arn=self.settings.arn("hyper-parameter-tuning-job", name),
                               request={k: v for k, v in params.items() if k != "Tags"},
                               tags=list(params.get("Tags", [])), creation_time=now())
            tuning.last_modified_time = tuning.creation_time
            self.tuning_jobs[name] = tuning
            self._save()
            event = events.tuning_job_event(self._describe_tuning(tuning), tuning.tags)
        self.publish(event)
        self.tuner.start(name, plan)
        return {"HyperParameterTuningJobArn": tuning.arn}

    def _tuning_job(self, name: str) -> TuningJob:
        tuning = self.tuning_jobs.get(name)
        if tuning is None:
            raise ResourceNotFound(f"Amazon SageMaker can't find a tuning job with name {name}")
        return tuning

    def children(self, tuning: TuningJob) -> list[TrainingJob]:
        with self.lock:
            return [j for j in self.training_jobs.values() if j.tuning_job_arn == tuning.arn]

    def _describe_tuning(self, tuning: TuningJob) -> dict[str, Any]:
        children = self.children(tuning)
        status_counts = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
        objective_counts = {"Succeeded": 0, "Pending": 0, "Failed": 0}
        for child in children:
            key = {"Failed": "NonRetryableError", "Stopping": "InProgress"}.get(child.status, child.status)
            status_counts[key] += 1
            objective_counts[child.objective_status or "Pending"] += 1
        request = tuning.request
        best = self.training_jobs.get(tuning.best_training_job or "")
        return drop_none({
            "HyperParameterTuningJobName": tuning.name,
            "HyperParameterTuningJobArn": tuning.arn,
            "HyperParameterTuningJobConfig": request["HyperParameterTuningJobConfig"],
            "TrainingJobDefinition": request.get("TrainingJobDefinition"),
            "TrainingJobDefinitions": request.get("TrainingJobDefinitions"),
            "HyperParameterTuningJobStatus": tuning.status,
            "CreationTime": tuning.creation_time,
            "HyperParameterTuningEndTime": tuning.end_time,
            "LastModifiedTime": tuning.last_modified_time or tuning.creation_time,
            "TrainingJobStatusCounters": status_counts,
            "ObjectiveStatusCounters": objective_counts,
            "BestTrainingJob": best.tuning_summary(tuning.name) if best else None,
            "WarmStartConfig": request.get("WarmStartConfig"),
            "FailureReason": tuning.failure_reason,
        })

    def describe_hyper_parameter_tuning_job(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._describe_tuning(self._tuning_job(params["HyperParameterTuningJobName"]))

    def list_hyper_parameter_tuning_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            chosen = filter_and_sort(self.tuning_jobs.values(), params, name=lambda t: t.name,
                                     status=lambda t: t.status)
            summaries = []
            for tuning in chosen:
                described = self._describe_tuning(tuning)
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
        with self.lock:
            tuning = self._tuning_job(params["HyperParameterTuningJobName"])
            children = self.children(tuning)
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
        with self.lock:
            tuning = self._tuning_job(name)
            if tuning.status != "InProgress":
                raise ValidationException(f"Tuning job {name} is in status {tuning.status} and cannot be stopped")
        self.change_tuning_job(name, lambda t: (setattr(t, "stop_requested", True), setattr(t, "status", "Stopping")))
        self.tuner.stop(name)
        return {}

    # ----- models and endpoint configs ---------------------------------------------------

    def create_model(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["ModelName"]
        container = params.get("PrimaryContainer") or (params.get("Containers") or [None])[0]
        if not container or not container.get("ModelDataUrl"):
            raise ValidationException("The local SageMaker needs a PrimaryContainer with a ModelDataUrl")
        with self.lock:
            if name in self.models:
                raise ValidationException(f"Cannot create already existing model {self.settings.arn('model', name)!r}.")
            model = Model(name, self.settings.arn("model", name), {k: v for k, v in params.items() if k != "Tags"},
                          list(params.get("Tags", [])), now())
            self.models[name] = model
            self._save()
        return {"ModelArn": model.arn}

    def _model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ValidationException(f"Could not find model \"{self.settings.arn('model', name)}\".")
        return model

    def describe_model(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._model(params["ModelName"]).describe()

    def delete_model(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._model(params["ModelName"])
            del self.models[params["ModelName"]]
            self._save()
        return {}

    def create_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointConfigName"]
        with self.lock:
            if name in self.endpoint_configs:
                raise ValidationException(
                    f"Cannot create already existing endpoint configuration {self.settings.arn('endpoint-config', name)!r}.")
            for variant in params["ProductionVariants"]:
                self._model(variant["ModelName"])
            config = EndpointConfig(name, self.settings.arn("endpoint-config", name),
                                    {k: v for k, v in params.items() if k != "Tags"},
                                    list(params.get("Tags", [])), now())
            self.endpoint_configs[name] = config
            self._save()
        return {"EndpointConfigArn": config.arn}

    def _endpoint_config(self, name: str) -> EndpointConfig:
        config = self.endpoint_configs.get(name)
        if config is None:
            raise ValidationException(
                f"Could not find endpoint configuration \"{self.settings.arn('endpoint-config', name)}\".")
        return config

    def describe_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._endpoint_config(params["EndpointConfigName"]).describe()

    def delete_endpoint_config(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self._endpoint_config(params["EndpointConfigName"])
            del self.endpoint_configs[params["EndpointConfigName"]]
            self._save()
        return {}

    # ----- endpoints ---------------------------------------------------------------------

    def create_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        with self.lock:
            if name in self.endpoints:
                raise ValidationException(
                    f"Cannot create already existing endpoint \"{self.settings.arn('endpoint', name)}\".")
            self._endpoint_config(params["EndpointConfigName"])
            endpoint = Endpoint(name, self.settings.arn("endpoint", name), params["EndpointConfigName"],
                                list(params.get("Tags", [])), now())
            endpoint.last_modified_time = endpoint.creation_time
            self.endpoints[name] = endpoint
            self._save()
            event = events.endpoint_event(self._describe_endpoint(endpoint), endpoint.tags)
        self.publish(event)
        self.fleet.create(name)
        return {"EndpointArn": endpoint.arn}

    def update_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        with self.lock:
            endpoint = self._endpoint(name)
            self._endpoint_config(config_name)
            if endpoint.status != "InService":
                raise ValidationException(
                    f"Cannot update in-progress endpoint \"{endpoint.arn}\"" if endpoint.status in ("Creating", "Updating")
                    else f"Cannot update endpoint \"{endpoint.arn}\" in status {endpoint.status}")
        self.change_endpoint(name, lambda e: (setattr(e, "status", "Updating"), setattr(e, "pending_config_name", config_name),
                                              setattr(e, "failure_reason", None)))
        self.fleet.update(name, config_name)
        return {"EndpointArn": endpoint.arn}

    def _endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ValidationException(f"Could not find endpoint \"{self.settings.arn('endpoint', name)}\".")
        return endpoint

    def _describe_endpoint(self, endpoint: Endpoint) -> dict[str, Any]:
        config = self.endpoint_configs.get(endpoint.config_name)
        variants = []
        for variant in (config.request["ProductionVariants"] if config else []):
            model = self.models.get(variant["ModelName"])
            image = ((model.request.get("PrimaryContainer") or {}).get("Image", "") if model else "")
            count = variant.get("InitialInstanceCount", 1)
            weight = variant.get("InitialVariantWeight", 1.0)
            variants.append({
                "VariantName": variant["VariantName"],
                "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": image}] if image else [],
                "CurrentWeight": weight, "DesiredWeight": weight,
                "CurrentInstanceCount": count, "DesiredInstanceCount": count,
            })
        pending = None
        if endpoint.pending_config_name:
            pending = {"EndpointConfigName": endpoint.pending_config_name, "StartTime": endpoint.last_modified_time}
        return drop_none({
            "EndpointName": endpoint.name, "EndpointArn": endpoint.arn, "EndpointConfigName": endpoint.config_name,
            "ProductionVariants": variants, "EndpointStatus": endpoint.status,
            "FailureReason": endpoint.failure_reason, "CreationTime": endpoint.creation_time,
            "LastModifiedTime": endpoint.last_modified_time or endpoint.creation_time,
            "PendingDeploymentSummary": pending,
        })

    def describe_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self._describe_endpoint(self._endpoint(params["EndpointName"]))

    def list_endpoints(self, params: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            chosen = filter_and_sort(self.endpoints.values(), params, name=lambda e: e.name, status=lambda e: e.status)
            summaries = [{"EndpointName": e.name, "EndpointArn": e.arn, "CreationTime": e.creation_time,
                          "LastModifiedTime": e.last_modified_time or e.creation_time, "EndpointStatus": e.status}
                         for e in chosen]
            return paginate(summaries, params, "Endpoints")

    def delete_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params["EndpointName"]
        with self.lock:
            self._endpoint(name)
        self.change_endpoint(name, lambda e: setattr(e, "status", "Deleting"))
        self.fleet.delete(name)
        with self.lock:
            self.endpoints.pop(name, None)
            self._save()
        return {}

    def endpoint_serving(self, name: str) -> Endpoint:
        """The endpoint InvokeEndpoint talks to (AWS answers ValidationException for unknown ones)."""
        with self.lock:
            endpoint = self.endpoints.get(name)
            if endpoint is None:
                raise ValidationError(f"Endpoint {name} of account {self.settings.account} not found.")
            return endpoint

    def config_model(self, config_name: str) -> tuple[dict[str, Any], Model]:
        """The first production variant of a config and its model (the local host serves one variant)."""
        with self.lock:
            config = self._endpoint_config(config_name)
            variant = config.request["ProductionVariants"][0]
            return variant, self._model(variant["ModelName"])
