"""Steps that drive the pipeline through its handlers, as S3, the schedule and EventBridge would:
uploads delivered, the schedule's tick, SageMaker's state-change events, a whole run to a deployed model."""

from __future__ import annotations

import re

from chalice_app.config import settings

from .conftest import ENV

TRAINING_FN, SCHEDULE_FN = "on_training_data", "quiet_check"
TUNING_FN, TRAINING_STATE_FN, ENDPOINT_FN = "on_tuning_state", "on_training_state", "on_endpoint_state"
TUNING_TYPE = "SageMaker HyperParameter Tuning Job State Change"
TRAINING_TYPE = "SageMaker Training Job State Change"
ENDPOINT_TYPE = "SageMaker Endpoint State Change"
TUNED = {"lr": "0.02", "batch-size": "64", "epochs": "3", "momentum": "0.8"}


def runs(world) -> list[dict]:
    return world.client.http.get("/runs?limit=100").json_body["items"]


def tuning_jobs(world) -> list[str]:
    return [job["HyperParameterTuningJobName"]
            for job in world.sagemaker.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]]


def deliver_training_uploads(world, *, duplicate: bool = False) -> None:
    world.drain(TRAINING_FN, ENV["TRAINING_QUEUE"], duplicate=duplicate)


def tick(world) -> dict:
    event = world.client.events.generate_cw_event("aws.events", "Scheduled Event", {}, [])
    return world.client.lambda_.invoke(SCHEDULE_FN, event).payload


def start_run(world, images: int = 20) -> dict:
    world.upload_training(images)
    deliver_training_uploads(world)
    world.advance(61)
    tick(world)
    [run] = [r for r in runs(world) if r["status"] == "TUNING"]
    return run


def tuning_done(world, run: dict, status: str = "Completed", **detail) -> None:
    world.sagemaker_event(TUNING_FN, TUNING_TYPE, {"HyperParameterTuningJobName": run["tuning_job"],
                                                   "HyperParameterTuningJobStatus": status, "Tags": {}, **detail})


def training_done(world, job: str, run_id: str, status: str = "Completed", role: str = "final") -> None:
    world.sagemaker_event(TRAINING_STATE_FN, TRAINING_TYPE, {
        "TrainingJobName": job, "TrainingJobStatus": status, "SecondaryStatus": status,
        "Tags": {"pipeline-role": role, "pipeline-run": run_id}})


def endpoint_event(world, status: str, config: str | None = None) -> None:
    """An endpoint state change as EventBridge delivers it: states spelt IN_SERVICE, FAILED."""
    event_status = re.sub(r"(?<!^)(?=[A-Z])", "_", status).upper()
    world.sagemaker_event(ENDPOINT_FN, ENDPOINT_TYPE, {
        "EndpointName": ENV["ENDPOINT_NAME"], "EndpointStatus": event_status, "EndpointConfigName": config,
        "Tags": {}})


def deploy_model(world, accuracy: float = 0.9) -> dict:
    """A whole run: uploads → tuning → final training → gate → endpoint InService."""
    run = start_run(world)
    world.finish_tuning(run["tuning_job"], TUNED)
    tuning_done(world, run)
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    world.finish_training(run["training_job"], accuracy, {"Overfit": "NoIssuesFound"})
    training_done(world, run["training_job"], run["run_id"])
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING", run
    endpoint_event(world, "InService", f"ip-test-{run['run_id']}")
    return world.client.http.get(f"/runs/{run['run_id']}").json_body


def reconcile_age() -> int:
    """How long the schedule leaves a step to its event (RECONCILE_AFTER_SECONDS)."""
    return settings().reconcile_after_seconds
