"""Quality gate and deployment: a better model goes live, blue/green; a worse one is rejected.

The registry changes only on SageMaker's word: a model becomes LIVE when the
endpoint reports InService with its config, and a failed or rolled-back update
leaves the previous model LIVE.

An endpoint cannot always be pointed at a new config at once: SageMaker accepts only
DeleteEndpoint on a Failed endpoint (a first CreateEndpoint that failed stays Failed
until deleted), and refuses UpdateEndpoint while the endpoint is Creating, Updating or
otherwise busy. Deleting takes minutes, and a Lambda does not wait for it. So the
gate's step (`_point_endpoint`) deletes a Failed endpoint, or leaves a busy one alone,
registers the model and moves the run to DEPLOYING with `endpoint_wait` saying what it
waits for. `resume_deployment` finishes it: the schedule runs it every minute, and each
event of the endpoint runs it first; it points the endpoint again (creates it once it
is gone, updates it once it has settled) and drops `endpoint_wait`; from then on the
endpoint's InService or Failed event ends the run as for any deployment. Each step is
decided by the endpoint's description, not by the event that triggered it, so a
repeated or late event or tick finds its work done and does nothing; while a run
waits, the endpoint's events are not its outcome (a late Failed of the endpoint being
replaced, the InService of a system update on the live config) and are passed over.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from . import aws, clock, gate
from . import sagemaker_requests as requests
from . import scaling
from .config import settings
from .events import JOB_ENDED, EndpointStateChange, TrainingJobStateChange
from .observability import logger, metrics, tracer
from .stores import stores
from .predictions import redrive_pending
from .retraining import end_run, run_for_job
from .sagemaker_calls import Refused, create_or_refuse, delete_or_refuse, delete_quietly, describe_endpoint

FAILED_ENDPOINT_STATES = ("Failed", "UpdateRollbackFailed", "OutOfService")
# States in which SageMaker refuses UpdateEndpoint until they end by themselves.
BUSY_ENDPOINT_STATES = ("Creating", "Updating", "SystemUpdating", "RollingBack")
# On a DEPLOYING run: what its deployment waits for before the endpoint can be pointed at it.
WAIT_FIELD = "endpoint_wait"
# The endpoint can settle before the gate's Lambda has marked its run DEPLOYING.
DEPLOYING_STATES = ("TRAINING", "DEPLOYING")


@tracer.capture_method
def on_training_change(event: TrainingJobStateChange) -> None:
    """The final training job ended: gate it, then deploy it or end the run."""
    detail = event.detail
    if detail.tags.get(requests.ROLE_TAG) != requests.FINAL_ROLE:
        return  # a tuning trial: the tuning job's own event covers it
    run = run_for_job(detail.name, detail.tags, "TRAINING")
    if run is not None:
        _training_ended(run["run_id"], detail.name, detail.status, detail.failure_reason)


def _training_ended(run_id: str, name: str, status: str, failure_reason: str | None,
                    description: dict[str, Any] | None = None) -> None:
    if status != "Completed":
        end_run(run_id, ("TRAINING",), "FAILED", f"final training job {status}: {failure_reason or 'no reason given'}")
        return
    # Metrics and rule results are in the description, not in the event.
    gate_and_deploy(run_id, description or aws.client("sagemaker").describe_training_job(TrainingJobName=name))


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
        wait = _deploy(run_id, description["ModelArtifacts"]["S3ModelArtifacts"])
    except Refused as refusal:
        store.registry.set_status(version, "FAILED", reason=str(refusal))
        end_run(run_id, ("TRAINING",), "FAILED", str(refusal))
        return
    store.runs.transition(run_id, ("TRAINING",), "DEPLOYING", clock.now(), model_version=version,
                          test_accuracy=verdict.accuracy, gate=verdict.reason, **({WAIT_FIELD: wait} if wait else {}))
    logger.info("deploying", extra={"run_id": run_id, "model_version": version, "gate": verdict.reason,
                                    "waits_for": wait})


@tracer.capture_method
def reconcile_training(run: dict[str, Any], now: float, age: float) -> None:
    """The schedule's part in a TRAINING run, once its final job has ended `age` ago: the job's
    event was lost, or came while its managed Debugger rules still ran (they end with no event).
    The gate waits again while a rule runs."""
    name = run.get("training_job")
    if not name:
        return
    description = aws.client("sagemaker").describe_training_job(TrainingJobName=name)
    status, ended = description["TrainingJobStatus"], description.get("TrainingEndTime")
    if status in JOB_ENDED and ended is not None and now - ended.timestamp() > age:
        _training_ended(run["run_id"], name, status, description.get("FailureReason"), description)


@tracer.capture_method
def reconcile_deployment(run: dict[str, Any], now: float, age: float) -> None:
    """The schedule's part in a DEPLOYING run: point the endpoint for a run that waits for it (at
    once, every tick); once the endpoint has settled `age` ago with the run still DEPLOYING, its
    event was lost: end the deployment as that event would have. A busy endpoint is left alone, and
    so is one the run has not waited `age` for (a description may lag a call just made)."""
    if run.get(WAIT_FIELD):
        resume_deployment()
        return
    if now - run["updated_at"] <= age:
        return
    config = settings()
    endpoint = describe_endpoint(config.endpoint_name)
    if endpoint is None:
        _fail_deployments(f"the endpoint {config.endpoint_name} no longer exists")
        return
    if endpoint["EndpointStatus"] in (*FAILED_ENDPOINT_STATES, "InService") and \
            now - endpoint["LastModifiedTime"].timestamp() > age:
        logger.warning("settling a deployment whose endpoint event was lost", extra={"run_id": run["run_id"]})
        settle_deployments(endpoint)


@tracer.capture_method
def resume_deployment() -> bool:
    """Point the endpoint at the config of a DEPLOYING run that waits for it (the module's docstring
    tells why): the schedule's part, and the first step on each endpoint event. True while it waits."""
    store = stores()
    holder = store.runs.lock_holder()
    run = store.runs.get(holder) if holder else None
    if not run or run["status"] != "DEPLOYING" or not run.get(WAIT_FIELD):
        return False
    try:
        wait = _point_endpoint(holder)
    except Refused as refusal:
        store.registry.set_status(run["model_version"], "FAILED", reason=str(refusal))
        end_run(holder, ("DEPLOYING",), "FAILED", str(refusal))
        return False
    if wait:
        if wait != run[WAIT_FIELD]:
            store.runs.transition(holder, ("DEPLOYING",), "DEPLOYING", clock.now(), **{WAIT_FIELD: wait})
        return True
    store.runs.transition(holder, ("DEPLOYING",), "DEPLOYING", clock.now(), remove=(WAIT_FIELD,))
    logger.info("endpoint asked for the waiting model", extra={"run_id": holder, "waited_for": run[WAIT_FIELD]})
    return False


def _deploy(run_id: str, artifact: str) -> str | None:
    """Model and endpoint config, then the endpoint pointed at them; what that waits for, if anything."""
    config = settings()
    create_or_refuse("create_model", requests.model_request(config, run_id, artifact))
    create_or_refuse("create_endpoint_config", requests.endpoint_config_request(config, run_id))
    return _point_endpoint(run_id)


def _point_endpoint(run_id: str) -> str | None:
    """A new endpoint, or a blue/green update of the live one, to the run's config.

    None once SageMaker has been asked (or the endpoint already serves or heads for the
    config); otherwise what the run waits for. A refusal is judged once more on a fresh
    description: the endpoint may have moved since it was described (UpdateEndpoint refused
    because a system update just began, a duplicate delivery's delete already under way).
    """
    try:
        return _point_endpoint_once(run_id)
    except Refused as refusal:
        logger.info("refused; judging the endpoint again", extra={"run_id": run_id, "reason": str(refusal)})
        return _point_endpoint_once(run_id)


def _point_endpoint_once(run_id: str) -> str | None:
    config = settings()
    target = requests.model_name(config, run_id)
    endpoint = describe_endpoint(config.endpoint_name)
    if endpoint is None:
        create_or_refuse("create_endpoint", requests.create_endpoint_request(config, run_id))
        return None
    status = endpoint["EndpointStatus"]
    pending = (endpoint.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    if target in (endpoint.get("EndpointConfigName"), pending):
        return None  # asked already (a repeated event): the endpoint's own events settle it
    if status in ("Failed", "Deleting"):
        if status == "Failed":
            delete_or_refuse("delete_endpoint", EndpointName=config.endpoint_name)
        return "the endpoint is being deleted: it is created anew once gone"
    if status in BUSY_ENDPOINT_STATES:
        return f"the endpoint is {status}: it is updated once that ends"
    create_or_refuse("update_endpoint", requests.update_endpoint_request(config, run_id))
    return None


def _fail_deployments(reason: str, keep: str | None = None) -> None:
    store = stores()
    for model in store.registry.all():
        if model["status"] == "DEPLOYING" and model["model_version"] != keep:
            store.registry.set_status(model["model_version"], "FAILED", reason=reason)
            end_run(model["run_id"], DEPLOYING_STATES, "FAILED", reason)


@tracer.capture_method
def on_endpoint_change(event: EndpointStateChange) -> None:
    config = settings()
    detail = event.detail
    if detail.name != config.endpoint_name:
        return
    if resume_deployment():
        return  # a run waits for the endpoint to be deleted or to settle: this event is not its outcome
    if detail.status not in (*FAILED_ENDPOINT_STATES, "InService"):
        return
    # Events can arrive late or twice: the endpoint's description is the truth.
    endpoint = describe_endpoint(config.endpoint_name)
    if endpoint is None or (detail.status in FAILED_ENDPOINT_STATES) != (
            endpoint["EndpointStatus"] in FAILED_ENDPOINT_STATES):
        return  # a late event: the endpoint has been deleted, created anew, has failed or recovered since
    settle_deployments(endpoint, detail.failure_reason)


def settle_deployments(endpoint: dict[str, Any], failure_reason: str | None = None) -> None:
    """What the endpoint's description says of the deployments under way: failed, they fail; on a
    DEPLOYING model's config, it goes live; InService on the live model's config, an update rolled back."""
    store = stores()
    if endpoint["EndpointStatus"] in FAILED_ENDPOINT_STATES:
        reason = failure_reason or endpoint.get("FailureReason") or "no reason given"
        _fail_deployments(f"endpoint {endpoint['EndpointStatus']}: {reason}")
        return
    serving = endpoint.get("EndpointConfigName")
    model = store.registry.by_endpoint_config(serving) if serving else None
    if model is None:
        return
    if model["status"] == "DEPLOYING":
        _promote(model)
    elif model["status"] == "LIVE" and endpoint["EndpointStatus"] == "InService":
        # Settled on the live config while another deployment waits: the update rolled back.
        reason = endpoint.get("FailureReason") or "the endpoint update rolled back to the live model"
        _fail_deployments(reason, keep=model["model_version"])
        redrive_pending()  # also finishes a re-drive that a failed earlier delivery left undone


def _promote(model: dict[str, Any]) -> None:
    # Before the model is LIVE: a transient failure here fails the event, whose redelivery finds
    # the model still DEPLOYING and comes back (a LIVE model is never promoted again).
    autoscale_endpoint()
    store = stores()
    previous = store.registry.promote(model, clock.now())
    if previous and previous["endpoint_config"] != model["endpoint_config"]:
        delete_quietly("delete_endpoint_config", EndpointConfigName=previous["endpoint_config"])
        delete_quietly("delete_model", ModelName=previous["endpoint_config"])
    logger.info("model live", extra={"model_version": model["model_version"], "run_id": model["run_id"]})
    metrics.add_metric(name="ModelsDeployed", unit=MetricUnit.Count, value=1)
    end_run(model["run_id"], DEPLOYING_STATES, "DEPLOYED", f"model {model['model_version']} is live")
    redrive_pending()


# Application Auto Scaling's answers that retrying cannot change.
_AUTOSCALING_REFUSALS = {"ValidationException", "AccessDeniedException", "LimitExceededException",
                         "FailedResourceAccessException", "ObjectNotFoundException"}


def autoscale_endpoint() -> None:
    """Register the endpoint's variant for autoscaling and put its target-tracking policy (both
    calls create or update: a repeat changes nothing). The variant keeps its name across
    deployments, so the scaling stays when UpdateEndpoint changes only the model. A refusal is
    logged and counted, not raised: the endpoint serves at its instance count all the same."""
    config = settings()
    autoscaling = aws.client("application-autoscaling")
    try:
        autoscaling.register_scalable_target(**scaling.scalable_target_request(config))
        autoscaling.put_scaling_policy(**scaling.scaling_policy_request(config))
    except ClientError as error:
        if aws.error_code(error) not in _AUTOSCALING_REFUSALS:
            raise
        logger.error("endpoint autoscaling refused", extra={"reason": aws.error_message(error)})
        metrics.add_metric(name="AutoscalingRefused", unit=MetricUnit.Count, value=1)
