"""The local SageMaker's records: jobs, models, configs and endpoints, as the API describes them.

Records keep timestamps as epoch seconds, the JSON 1.1 wire form.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

RESTART_REASON = "InternalServerError: the local SageMaker service restarted while this job was running"
ACTIVE_JOB = ("InProgress", "Stopping")


def now() -> float:
    return round(time.time(), 3)


def drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


@dataclass
class Resource:
    """What SageMaker keeps of every resource: its name, ARN, request as asked and tags. A model
    and an endpoint config describe back just that; jobs add their progress."""
    name: str
    arn: str
    request: dict[str, Any]
    tags: list[dict[str, str]]
    creation_time: float
    ARN_FIELD: ClassVar[str] = ""

    def describe(self) -> dict[str, Any]:
        return {**self.request, self.ARN_FIELD: self.arn, "CreationTime": self.creation_time}


class Model(Resource):
    ARN_FIELD = "ModelArn"


@dataclass
class TrainingJob(Resource):
    log_path: str
    status: str = "InProgress"
    secondary_status: str = "Starting"
    transitions: list[dict[str, Any]] = field(default_factory=list)
    last_modified_time: float = 0.0
    training_start_time: float | None = None
    training_end_time: float | None = None
    failure_reason: str | None = None
    final_metrics: list[dict[str, Any]] = field(default_factory=list)
    model_artifacts: str | None = None
    debug_rule_statuses: list[dict[str, Any]] = field(default_factory=list)
    profiler_rule_statuses: list[dict[str, Any]] = field(default_factory=list)
    tuning_job_arn: str | None = None
    tuned_hyperparameters: dict[str, str] | None = None
    objective: dict[str, Any] | None = None
    objective_status: str | None = None
    stop_requested: bool = False

    def move_to(self, secondary: str, message: str, status: str | None = None) -> None:
        """Enter a secondary status (closing the previous one), as AWS's transitions do."""
        stamp = now()
        if self.transitions and "EndTime" not in self.transitions[-1]:
            self.transitions[-1]["EndTime"] = stamp
        self.transitions.append({"Status": secondary, "StartTime": stamp, "StatusMessage": message})
        self.secondary_status = secondary
        if status:
            self.status = status
        if status in ("Completed", "Failed", "Stopped"):
            self.transitions[-1]["EndTime"] = stamp
            self.training_end_time = stamp

    def describe(self) -> dict[str, Any]:
        request = self.request
        hyperparameters = request.get("HyperParameters", {})
        started = self.training_start_time
        ended = self.training_end_time or (now() if started else None)
        return drop_none({
            **{k: request[k] for k in (
                "AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig", "ResourceConfig",
                "StoppingCondition", "DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig",
                "ProfilerRuleConfigurations", "Environment", "EnableNetworkIsolation", "VpcConfig",
                "CheckpointConfig", "TensorBoardOutputConfig", "ExperimentConfig", "RetryStrategy",
            ) if k in request},
            "TrainingJobName": self.name,
            "TrainingJobArn": self.arn,
            "TuningJobArn": self.tuning_job_arn,
            "ModelArtifacts": {"S3ModelArtifacts": self.model_artifacts} if self.model_artifacts else None,
            "TrainingJobStatus": self.status,
            "SecondaryStatus": self.secondary_status,
            "FailureReason": self.failure_reason,
            "HyperParameters": hyperparameters,
            "CreationTime": self.creation_time,
            "TrainingStartTime": started,
            "TrainingEndTime": self.training_end_time,
            "LastModifiedTime": self.last_modified_time or self.creation_time,
            "SecondaryStatusTransitions": self.transitions,
            "FinalMetricDataList": self.final_metrics,
            "DebugRuleEvaluationStatuses": self.debug_rule_statuses or None,
            "ProfilerRuleEvaluationStatuses": self.profiler_rule_statuses or None,
            "ProfilingStatus": ("Enabled" if "ProfilerConfig" in request else "Disabled"),
            "TrainingTimeInSeconds": int(ended - started) if started and ended else None,
            "BillableTimeInSeconds": int(ended - started) if started and ended else None,
        })

    def summary(self) -> dict[str, Any]:
        return drop_none({
            "TrainingJobName": self.name, "TrainingJobArn": self.arn, "CreationTime": self.creation_time,
            "TrainingEndTime": self.training_end_time, "LastModifiedTime": self.last_modified_time or None,
            "TrainingJobStatus": self.status, "SecondaryStatus": self.secondary_status,
        })

    def tuning_summary(self, tuning_job_name: str) -> dict[str, Any]:
        """HyperParameterTrainingJobSummary: a child as its tuning job lists it."""
        return drop_none({
            "TrainingJobName": self.name, "TrainingJobArn": self.arn, "TuningJobName": tuning_job_name,
            "CreationTime": self.creation_time, "TrainingStartTime": self.training_start_time,
            "TrainingEndTime": self.training_end_time, "TrainingJobStatus": self.status,
            "TunedHyperParameters": self.tuned_hyperparameters or {},
            "FailureReason": self.failure_reason,
            "FinalHyperParameterTuningJobObjectiveMetric": self.objective,
            "ObjectiveStatus": self.objective_status,
        })


@dataclass
class TuningJob(Resource):
    ARN_FIELD = "HyperParameterTuningJobArn"
    status: str = "InProgress"
    last_modified_time: float = 0.0
    end_time: float | None = None
    failure_reason: str | None = None
    best_training_job: str | None = None
    stop_requested: bool = False


class EndpointConfig(Resource):
    ARN_FIELD = "EndpointConfigArn"


@dataclass
class Endpoint:
    name: str
    arn: str
    config_name: str
    tags: list[dict[str, str]]
    creation_time: float
    status: str = "Creating"
    last_modified_time: float = 0.0
    failure_reason: str | None = None
    pending_config_name: str | None = None


RECORD_TYPES = {
    "training_jobs": TrainingJob,
    "tuning_jobs": TuningJob,
    "models": Model,
    "endpoint_configs": EndpointConfig,
    "endpoints": Endpoint,
}


# ----- descriptions drawn from more than one record --------------------------------------

def describe_tuning_job(tuning: TuningJob, children: list[TrainingJob], best: TrainingJob | None) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob: the job, its children's counts and its best child."""
    status_counts = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    objective_counts = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for child in children:
        key = {"Failed": "NonRetryableError", "Stopping": "InProgress"}.get(child.status, child.status)
        status_counts[key] += 1
        objective_counts[child.objective_status or "Pending"] += 1
    request = tuning.request
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


def describe_endpoint(endpoint: Endpoint, config: EndpointConfig | None, models: dict[str, Model]) -> dict[str, Any]:
    """DescribeEndpoint: the endpoint, with its config's variants and their models' images."""
    variants = []
    for variant in (config.request["ProductionVariants"] if config else []):
        model = models.get(variant["ModelName"])
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
