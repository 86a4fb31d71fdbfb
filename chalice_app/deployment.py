"""Quality gate and deployment: a better model goes live, blue/green; a worse one is rejected.

The registry changes only on SageMaker's word: a model becomes LIVE when the
endpoint reports InService with its config, and a failed or rolled-back update
leaves the previous model LIVE.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from . import aws, clock, gate
from . import sagemaker_requests as requests
from .config import settings
from .events import EndpointStateChange, TrainingJobStateChange
from .observability import logger, metrics, tracer
from .pipeline import stores
from .predictions import redrive_pending
from .retraining import end_run, run_for_job
from .sagemaker_calls import Refused, create_or_refuse, delete_quietly, describe_endpoint

FAILED_ENDPOINT_STATES = ("Failed", "UpdateRollbackFailed", "OutOfService")
# The endpoint can settle before the gate's Lambda has marked its run DEPLOYING.
DEPLOYING_STATES = ("TRAINING", "DEPLOYING")
# How long after its job ended the schedule gates a run that is still TRAINING: the job's own
# Completed event normally does it within seconds.
GATE_GRACE_SECONDS = 120


@tracer.capture_method
def on_training_change(event: TrainingJobStateChange) -> None:
    """The final training job ended: gate it, then deploy it or end the run."""
    detail = event.detail
    if detail.tags.get(requests.ROLE_TAG) != requests.FINAL_ROLE:
        return  # a tuning trial: the tuning job's own event covers it
    run_id = run_for_job(detail.name, detail.tags, "TRAINING")
    if run_id is None:
        return
    if detail.status != "Completed":
        end_run(run_id, ("TRAINING",), "FAILED",
                f"final training job {detail.status}: {detail.failure_reason or 'no reason given'}")
        return
    # Metrics and rule results are in the description, not in the event.
    gate_and_deploy(run_id, aws.client("sagemaker").describe_training_job(TrainingJobName=detail.name))


@tracer.capture_method
def gate_and_deploy(run_id: str, description: dict[str, Any]) -> None:
    config, store = settings(), stores()
    live = store.registry.live()
    verdict = gate.judge(description, live["test_accuracy"] if live else None, config.gate_margin,
                         config.debugger_rule_policy)
    if verdict.pending:
        # The managed Debugger reports no event when its rules finish: the schedule judges again.
        logger.info("gate waits", extra={"run_id": run_id, "reason": verdict.reason})
        return
    if not verdict.passed:
        end_run(run_id, ("TRAINING",), "REJECTED", verdict.reason, test_accuracy=verdict.accuracy)
        return
    version = description["TrainingJobName"]
    store.registry.add(version, clock.now(), run_id=run_id, test_accuracy=verdict.accuracy,
                       endpoint_config=requests.model_name(config, run_id), training_job=version,
                       artifact=description["ModelArtifacts"]["S3ModelArtifacts"])
    try:
        _deploy(run_id, description["ModelArtifacts"]["S3ModelArtifacts"])
    except Refused as refusal:
        store.registry.set_status(version, "FAILED", reason=str(refusal))
        end_run(run_id, ("TRAINING",), "FAILED", str(refusal))
        return
    store.runs.transition(run_id, ("TRAINING",), "DEPLOYING", clock.now(), model_version=version,
                             test_accuracy=verdict.accuracy, gate=verdict.reason)
    logger.info("deploying", extra={"run_id": run_id, "model_version": version, "gate": verdict.reason})


@tracer.capture_method
def resume_waiting_gate() -> None:
    """Gate a run whose final job ended while its managed Debugger rules still ran (or whose
    Completed event was lost): the schedule's part, once the job has been over a while."""
    store = stores()
    holder = store.runs.lock_holder()
    run = store.runs.get(holder) if holder else None
    if not run or run["status"] != "TRAINING" or not run.get("training_job"):
        return
    description = aws.client("sagemaker").describe_training_job(TrainingJobName=run["training_job"])
    ended = description.get("TrainingEndTime")
    if description.get("TrainingJobStatus") != "Completed" or ended is None:
        return
    if clock.now() - ended.timestamp() > GATE_GRACE_SECONDS and not gate.pending_rules(description):
        gate_and_deploy(holder, description)


def _deploy(run_id: str, artifact: str) -> None:
    """Model, endpoint config, then a new endpoint or a blue/green update of the live one."""
    config = settings()
    create_or_refuse("create_model", requests.model_request(config, run_id, artifact))
    create_or_refuse("create_endpoint_config", requests.endpoint_config_request(config, run_id))
    endpoint = describe_endpoint(config.endpoint_name)
    if endpoint is None:
        create_or_refuse("create_endpoint", requests.create_endpoint_request(config, run_id))
    elif endpoint.get("EndpointConfigName") != requests.model_name(config, run_id):
        create_or_refuse("update_endpoint", requests.update_endpoint_request(config, run_id))


def _fail_deployments(reason: str, keep: str | None = None) -> None:
    store = stores()
    for model in store.registry.all():
        if model["status"] == "DEPLOYING" and model["model_version"] != keep:
            store.registry.set_status(model["model_version"], "FAILED", reason=reason)
            end_run(model["run_id"], DEPLOYING_STATES, "FAILED", reason)


@tracer.capture_method
def on_endpoint_change(event: EndpointStateChange) -> None:
    config, store = settings(), stores()
    detail = event.detail
    if detail.name != config.endpoint_name:
        return
    if detail.status in FAILED_ENDPOINT_STATES:
        _fail_deployments(f"endpoint {detail.status}: {detail.failure_reason or 'no reason given'}")
        return
    if detail.status != "InService":
        return
    # Events can arrive late or twice: the endpoint's description is the truth.
    endpoint = describe_endpoint(config.endpoint_name) or {}
    serving = endpoint.get("EndpointConfigName", detail.config_name)
    model = store.registry.by_endpoint_config(serving) if serving else None
    if model is None:
        return
    if model["status"] == "DEPLOYING":
        _promote(model)
    elif model["status"] == "LIVE" and endpoint.get("EndpointStatus") == "InService":
        # Settled on the live config while another deployment waits: the update rolled back.
        reason = endpoint.get("FailureReason") or "the endpoint update rolled back to the live model"
        _fail_deployments(reason, keep=model["model_version"])
        redrive_pending()  # also finishes a re-drive that a failed earlier delivery left undone


def _promote(model: dict[str, Any]) -> None:
    store = stores()
    previous = store.registry.promote(model, clock.now())
    if previous and previous["endpoint_config"] != model["endpoint_config"]:
        delete_quietly("delete_endpoint_config", EndpointConfigName=previous["endpoint_config"])
        delete_quietly("delete_model", ModelName=previous["endpoint_config"])
    logger.info("model live", extra={"model_version": model["model_version"], "run_id": model["run_id"]})
    metrics.add_metric(name="ModelsDeployed", unit=MetricUnit.Count, value=1)
    end_run(model["run_id"], DEPLOYING_STATES, "DEPLOYED", f"model {model['model_version']} is live")
    redrive_pending()
