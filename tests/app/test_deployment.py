"""Quality gate and deployment scenarios: first model, worse model, Debugger veto, blue/green update, rollback,
a Failed endpoint replaced, an update that waits for a busy endpoint."""

from __future__ import annotations

import datetime
import json

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from chalice_app import aws
from chalice_app import sagemaker_requests as requests
from chalice_app.config import settings
from chalice_app.stores import stores

from .conftest import ENV
from .scenario import (TUNED, deploy_model, endpoint_event, reconcile_age, runs, start_run, tick, training_done,
                       tuning_done)

ENDPOINT = ENV["ENDPOINT_NAME"]


def run_to_training(world) -> dict:
    run = start_run(world)
    world.finish_tuning(run["tuning_job"], TUNED)
    tuning_done(world, run)
    return world.client.http.get(f"/runs/{run['run_id']}").json_body


def live(world) -> dict:
    return world.client.http.get("/models/live").json_body


def test_the_first_model_that_passes_goes_live(world):
    assert world.client.http.get("/models/live").status_code == 404
    run = deploy_model(world, accuracy=0.9)
    assert run["status"] == "DEPLOYED" and run["test_accuracy"] == 0.9
    assert live(world)["model_version"] == run["training_job"] == run["model_version"]
    endpoint = world.sagemaker.describe_endpoint(EndpointName=ENDPOINT)
    assert endpoint["EndpointConfigName"] == f"ip-test-{run['run_id']}"
    model = world.sagemaker.describe_model(ModelName=f"ip-test-{run['run_id']}")
    assert model["PrimaryContainer"]["ModelDataUrl"].endswith("/output/model.tar.gz")
    assert world.client.http.post("/runs").status_code == 202, "the lock was released"


def test_a_worse_model_is_rejected_and_the_live_model_untouched(world):
    first = deploy_model(world, accuracy=0.9)
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.905)  # better, but not by the 0.01 margin
    training_done(world, run["training_job"], run["run_id"])
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "REJECTED" and "does not beat the live 0.9000" in run["reason"]
    assert live(world)["model_version"] == first["model_version"]
    assert world.sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"] == f"ip-test-{first['run_id']}"
    assert len(world.backend.endpoint_configs) == 1


def test_the_next_final_job_scores_the_live_model_on_its_own_test_split_and_the_gate_uses_it(world):
    first = deploy_model(world, accuracy=0.95)  # as measured on the first run's smaller test split
    model = world.sagemaker.describe_model(ModelName=f"ip-test-{first['run_id']}")
    run = run_to_training(world)
    job = world.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels["live"] == model["PrimaryContainer"]["ModelDataUrl"]
    # On this job's test split the live model scores 0.85: 0.93 beats it, though not the stored 0.95.
    stubber = _stub_update(world, run, 0.93, f"ip-test-{first['run_id']}", live_accuracy=0.85)
    aws.use_client("sagemaker", stubber.client)
    with stubber:
        training_done(world, run["training_job"], run["run_id"])
    aws.use_client("sagemaker", None)
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING", run
    assert "beats the live 0.8500 (on the same test split)" in run["gate"]


def test_the_first_final_job_has_no_live_channel(world):
    run = run_to_training(world)
    job = world.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
    assert "live" not in {c["ChannelName"] for c in job["InputDataConfig"]}


@pytest.mark.parametrize("metrics, rules, reason", [
    (0.99, {"VanishingGradient": "IssuesFound", "Overfit": "NoIssuesFound"},
     "Debugger rules found issues: VanishingGradient"),
    (None, {}, "reported no test:accuracy"),
])
def test_the_gate_vetoes_rule_findings_and_missing_metrics(world, metrics, rules, reason):
    run = run_to_training(world)
    world.finish_training(run["training_job"], metrics, rules)
    training_done(world, run["training_job"], run["run_id"])
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "REJECTED" and reason in run["reason"]
    assert world.client.http.get("/models/live").status_code == 404
    assert world.backend.endpoints == {}


def test_a_rule_whose_policy_is_warn_is_a_finding_not_a_veto(world):
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.97, {"VanishingGradient": "NoIssuesFound", "Overfit": "IssuesFound",
                                                       "LossNotDecreasing": "Error"})
    training_done(world, run["training_job"], run["run_id"])
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING", run
    assert "Debugger findings: LossNotDecreasing Error, Overfit IssuesFound" in run["gate"]


def test_with_the_managed_debugger_the_gate_waits_for_rules_still_in_progress(world):
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.97, managed={"VanishingGradient": "InProgress"})
    training_done(world, run["training_job"], run["run_id"])
    assert runs(world)[0]["status"] == "TRAINING"  # a Completed event while a rule still runs decides nothing
    world.advance(600)
    tick(world)
    assert runs(world)[0]["status"] == "TRAINING"  # the schedule does not judge a rule in progress either
    world.finish_training(run["training_job"], 0.97, managed={"VanishingGradient": "IssuesFound"})
    tick(world)
    run = runs(world)[0]
    assert run["status"] == "REJECTED" and "Debugger rules found issues: VanishingGradient" in run["reason"]


def _stub_update(world, run: dict, accuracy: float, live_config: str, live_accuracy: float | None = None) -> Stubber:
    """Everything the gate calls for an update, answered by a Stubber: moto has no UpdateEndpoint."""
    config = settings()
    client = aws._make("sagemaker")  # a real client of the same model, but stubbed
    stubber = Stubber(client)
    job = world.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
    figures = {"test:accuracy": accuracy, "live:test_accuracy": live_accuracy}
    job["FinalMetricDataList"] = [{"MetricName": name, "Value": value, "Timestamp": datetime.datetime(2027, 1, 1)}
                                  for name, value in figures.items() if value is not None]
    job.pop("ResponseMetadata")
    stubber.add_response("describe_training_job", job, {"TrainingJobName": run["training_job"]})
    artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
    stubber.add_response("create_model", {"ModelArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m"},
                         requests.model_request(config, run["run_id"], artifact))
    stubber.add_response("create_endpoint_config", {"EndpointConfigArn": "arn:aws:sagemaker:us-east-1:1:endpoint-config/c"},
                         requests.endpoint_config_request(config, run["run_id"]))
    stubber.add_response("describe_endpoint", {
        "EndpointName": ENDPOINT, "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e",
        "EndpointConfigName": live_config, "EndpointStatus": "InService",
        "CreationTime": datetime.datetime(2027, 1, 1), "LastModifiedTime": datetime.datetime(2027, 1, 1)},
        {"EndpointName": ENDPOINT})
    stubber.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/e"},
                         requests.update_endpoint_request(config, run["run_id"]))
    return stubber


def _update_to(world, accuracy: float) -> tuple[dict, dict]:
    first = deploy_model(world, accuracy=0.8)
    run = run_to_training(world)
    stubber = _stub_update(world, run, accuracy, f"ip-test-{first['run_id']}")
    aws.use_client("sagemaker", stubber.client)
    with stubber:
        training_done(world, run["training_job"], run["run_id"])
        stubber.assert_no_pending_responses()
    aws.use_client("sagemaker", None)
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING"
    return first, run


def test_a_better_model_updates_the_endpoint_blue_green_and_goes_live(world):
    first, run = _update_to(world, 0.95)
    new_config = f"ip-test-{run['run_id']}"
    # SageMaker finishes the update (moto has no UpdateEndpoint: create what it made, switch the endpoint).
    world.sagemaker.create_model(**requests.model_request(settings(), run["run_id"], "s3://b/model.tar.gz"))
    world.sagemaker.create_endpoint_config(**requests.endpoint_config_request(settings(), run["run_id"]))
    world.backend.endpoints[ENDPOINT].endpoint_config_name = new_config
    endpoint_event(world, "InService", new_config)
    endpoint_event(world, "InService", new_config)  # delivered twice
    assert live(world)["model_version"] == run["model_version"]
    models = {m["model_version"]: m["status"] for m in world.client.http.get("/models").json_body["items"]}
    assert models == {first["model_version"]: "RETIRED", run["model_version"]: "LIVE"}
    assert list(world.backend.endpoint_configs) == [new_config], "the old config was deleted"
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "DEPLOYED"


def test_a_rolled_back_update_keeps_the_previous_model_live(world):
    first, run = _update_to(world, 0.95)
    # The update failed and SageMaker rolled back: InService, still on the old config.
    endpoint_event(world, "InService", f"ip-test-{first['run_id']}")
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "FAILED" and "rolled back" in run["reason"]
    assert live(world)["model_version"] == first["model_version"]
    models = {m["model_version"]: m["status"] for m in world.client.http.get("/models").json_body["items"]}
    assert models == {first["model_version"]: "LIVE", run["model_version"]: "FAILED"}


def test_a_failed_endpoint_fails_the_run(world):
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.9)
    training_done(world, run["training_job"], run["run_id"])
    world.backend.endpoints[ENDPOINT].endpoint_status = "Failed"  # the event is checked against the description
    world.sagemaker_event("on_endpoint_state", "SageMaker Endpoint State Change", {
        "EndpointName": ENDPOINT, "EndpointStatus": "Failed", "FailureReason": "image pull failed", "Tags": {}})
    [run] = runs(world)
    assert run["status"] == "FAILED" and "image pull failed" in run["reason"]
    assert world.client.http.get("/models/live").status_code == 404


def sagemaker_calls() -> list[str]:
    """The SageMaker operations the handlers call from now on, in order."""
    calls: list[str] = []
    aws.client("sagemaker").meta.events.register("before-parameter-build.sagemaker",
                                                 lambda model, **_: calls.append(model.name))
    return calls


def play_update_endpoint(world) -> list[str]:
    """UpdateEndpoint played on moto's endpoint as SageMaker answers it (moto has none): refused unless
    the endpoint is InService, else it goes Updating. Returns a list of statuses: the endpoint moves to
    the first one just before the next update arrives (a system update SageMaker began meanwhile)."""
    moves: list[str] = []

    def update(params, **_):
        request = json.loads(params["body"])
        endpoint = world.backend.endpoints[request["EndpointName"]]
        if moves:
            endpoint.endpoint_status = moves.pop(0)
        if endpoint.endpoint_status != "InService":
            raise ClientError({"Error": {"Code": "ValidationException", "Message": (
                f'Cannot update in-progress endpoint "{endpoint.arn}".' if endpoint.endpoint_status != "Failed"
                else f'Cannot update endpoint "{endpoint.arn}" in status Failed.')}}, "UpdateEndpoint")
        endpoint.endpoint_status = "Updating"
        return AWSResponse(None, 200, {}, None), {"EndpointArn": endpoint.arn}

    aws.client("sagemaker").meta.events.register("before-call.sagemaker.UpdateEndpoint", update)
    return moves


def changes(calls: list[str]) -> list[str]:
    return [call for call in calls if not call.startswith("Describe")]


def state(world) -> tuple:
    """All a repeated event or tick could change: runs, registry, endpoint, SageMaker's configs and models."""
    endpoint = world.backend.endpoints.get(ENDPOINT)
    models = world.client.http.get("/models").json_body["items"]
    return (runs(world), models, world.client.http.get("/models/live").json_body,
            endpoint and (endpoint.endpoint_status, endpoint.endpoint_config_name),
            sorted(world.backend.endpoint_configs), sorted(world.backend._models))


def test_a_failed_first_endpoint_is_deleted_and_created_anew_with_the_next_model(world, monkeypatch):
    calls = sagemaker_calls()
    play_update_endpoint(world)
    first = run_to_training(world)
    world.finish_training(first["training_job"], 0.9)
    training_done(world, first["training_job"], first["run_id"])
    world.backend.endpoints[ENDPOINT].endpoint_status = "Failed"  # the first CreateEndpoint failed
    endpoint_event(world, "Failed", f"ip-test-{first['run_id']}")
    first = world.client.http.get(f"/runs/{first['run_id']}").json_body
    assert first["status"] == "FAILED"

    # SageMaker deletes asynchronously: Deleting, then gone (moto deletes at once).
    monkeypatch.setattr(world.backend, "delete_endpoint",
                        lambda name: setattr(world.backend.endpoints[name], "endpoint_status", "Deleting"))
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.85)
    calls.clear()
    training_done(world, run["training_job"], run["run_id"])
    assert changes(calls) == ["CreateModel", "CreateEndpointConfig", "DeleteEndpoint"], "not UpdateEndpoint"
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING" and "being deleted" in run["endpoint_wait"], run
    assert {m["model_version"]: m["status"] for m in world.client.http.get("/models").json_body["items"]} == {
        first["model_version"]: "FAILED", run["model_version"]: "DEPLOYING"}

    # While it is Deleting: the schedule, its events and a late copy of the first Failed event change nothing.
    before, calls[:] = state(world), []
    tick(world)
    endpoint_event(world, "Deleting", f"ip-test-{first['run_id']}")
    endpoint_event(world, "Failed", f"ip-test-{first['run_id']}")
    training_done(world, run["training_job"], run["run_id"])
    assert state(world) == before and changes(calls) == []

    # Gone: the schedule creates the endpoint with the new config; its InService makes the model LIVE.
    del world.backend.endpoints[ENDPOINT]
    tick(world)
    assert changes(calls) == ["CreateEndpoint"]
    assert world.sagemaker.describe_endpoint(EndpointName=ENDPOINT)["EndpointConfigName"] == f"ip-test-{run['run_id']}"
    assert "endpoint_wait" not in world.client.http.get(f"/runs/{run['run_id']}").json_body
    endpoint_event(world, "InService", f"ip-test-{run['run_id']}")
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYED" and live(world)["model_version"] == run["model_version"]
    assert stores().runs.lock_holder() is None, "the lock was released"

    # Every event again, late and twice: nothing changes, nothing is called but descriptions.
    before, calls[:] = state(world), []
    for _ in range(2):
        tick(world)
        endpoint_event(world, "Failed", f"ip-test-{first['run_id']}")
        endpoint_event(world, "InService", f"ip-test-{run['run_id']}")
        training_done(world, run["training_job"], run["run_id"])
    assert state(world) == before and changes(calls) == []


@pytest.mark.parametrize("busy", ["when the gate looks", "when the update arrives"])
def test_an_update_waits_while_the_endpoint_is_busy_then_goes_out(world, busy):
    first = deploy_model(world, accuracy=0.8)
    old_config = f"ip-test-{first['run_id']}"
    moves, calls = play_update_endpoint(world), sagemaker_calls()
    run = run_to_training(world)
    new_config = f"ip-test-{run['run_id']}"
    world.finish_training(run["training_job"], 0.95)
    if busy == "when the gate looks":
        world.backend.endpoints[ENDPOINT].endpoint_status = "SystemUpdating"
    else:
        moves.append("SystemUpdating")  # described InService, then refused as in progress
    training_done(world, run["training_job"], run["run_id"])
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING" and "SystemUpdating" in run["endpoint_wait"], run
    assert changes(calls).count("UpdateEndpoint") == (0 if busy == "when the gate looks" else 1)

    # The schedule waits; the InService that ends the system update (on the live config) is no
    # rollback of this run: its update goes out then.
    tick(world)
    assert world.backend.endpoints[ENDPOINT].endpoint_status == "SystemUpdating"
    world.backend.endpoints[ENDPOINT].endpoint_status = "InService"
    calls.clear()
    endpoint_event(world, "InService", old_config)
    endpoint_event(world, "InService", old_config)  # delivered twice
    assert changes(calls) == ["UpdateEndpoint"]
    assert world.backend.endpoints[ENDPOINT].endpoint_status == "Updating"
    run = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert run["status"] == "DEPLOYING" and "endpoint_wait" not in run, run
    tick(world)
    assert changes(calls) == ["UpdateEndpoint"]

    # SageMaker finishes the update: the new model goes live.
    endpoint = world.backend.endpoints[ENDPOINT]
    endpoint.endpoint_status, endpoint.endpoint_config_name = "InService", new_config
    endpoint_event(world, "InService", new_config)
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "DEPLOYED"
    models = {m["model_version"]: m["status"] for m in world.client.http.get("/models").json_body["items"]}
    assert models == {first["model_version"]: "RETIRED", run["model_version"]: "LIVE"}
    assert stores().runs.lock_holder() is None


def at_world_time(world) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(world.clock[0], tz=datetime.timezone.utc)


@pytest.mark.parametrize("outcome", ["Completed", "Failed"])
def test_a_run_whose_final_training_event_was_lost_goes_on_from_the_schedule(world, outcome):
    run = run_to_training(world)
    world.advance(86400)
    tick(world)  # a final job still at work is left alone, however long it takes
    assert runs(world)[0]["status"] == "TRAINING"
    world.finish_training(run["training_job"], 0.9)
    world.backend.training_jobs[run["training_job"]].training_job_status = outcome
    world.advance(reconcile_age())
    tick(world)  # the event may still come (or Lambda's retries of it)
    assert runs(world)[0]["status"] == "TRAINING" and world.backend.endpoints == {}
    world.advance(1)
    tick(world)
    run = runs(world)[0]
    if outcome == "Completed":  # gated and deployed as the event would have
        assert run["status"] == "DEPLOYING" and run["test_accuracy"] == 0.9 and "no live model yet" in run["gate"]
        endpoint = world.sagemaker.describe_endpoint(EndpointName=ENDPOINT)
        assert endpoint["EndpointConfigName"] == f"ip-test-{run['run_id']}"
    else:
        assert run["status"] == "FAILED" and "final training job Failed" in run["reason"]
        assert stores().runs.lock_holder() is None
    before = state(world)
    training_done(world, run["training_job"], run["run_id"], outcome)  # the event arrives after all
    tick(world)
    assert state(world) == before


@pytest.mark.parametrize("outcome", ["InService", "Failed", "RolledBack"])
def test_a_deployment_whose_endpoint_event_was_lost_is_settled_by_the_schedule(world, outcome):
    first = deploy_model(world, accuracy=0.8) if outcome == "RolledBack" else None
    play_update_endpoint(world)
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.95)
    training_done(world, run["training_job"], run["run_id"])
    endpoint = world.backend.endpoints[ENDPOINT]
    if first is None:
        endpoint.endpoint_status = "Creating"  # moto's endpoint is InService at once
    assert endpoint.endpoint_status in ("Creating", "Updating")
    world.advance(86400)
    tick(world)  # an endpoint still at work is left alone
    assert runs(world)[0]["status"] == "DEPLOYING"

    # SageMaker settles the endpoint; its event is lost.
    endpoint.endpoint_status = "Failed" if outcome == "Failed" else "InService"
    endpoint.failure_reason = "image pull failed" if outcome == "Failed" else None
    endpoint.last_modified_time = at_world_time(world)
    world.advance(reconcile_age())
    tick(world)
    assert runs(world)[0]["status"] == "DEPLOYING"
    world.advance(1)
    tick(world)
    run = runs(world)[0]
    if outcome == "InService":
        assert run["status"] == "DEPLOYED" and live(world)["model_version"] == run["model_version"]
    elif outcome == "Failed":
        assert run["status"] == "FAILED" and "endpoint Failed: image pull failed" in run["reason"]
        assert world.client.http.get("/models/live").status_code == 404
    else:
        assert run["status"] == "FAILED" and "rolled back" in run["reason"]
        assert live(world)["model_version"] == first["model_version"]
    assert stores().runs.lock_holder() is None
    before = state(world)
    endpoint_event(world, endpoint.endpoint_status, endpoint.endpoint_config_name)  # the event after all
    tick(world)
    assert state(world) == before


def autoscaling(world):
    import boto3

    return boto3.client("application-autoscaling", region_name=world.sagemaker.meta.region_name)


def test_a_model_going_live_registers_the_variant_for_autoscaling_on_invocations_per_instance(world, monkeypatch):
    monkeypatch.setenv("ENDPOINT_MAX_INSTANCES", "3")
    settings.cache_clear()
    run = deploy_model(world)
    assert run["status"] == "DEPLOYED"
    client = autoscaling(world)
    [target] = client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert target["ResourceId"] == f"endpoint/{ENDPOINT}/variant/AllTraffic"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)
    [policy] = client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PolicyType"] == "TargetTrackingScaling" and tracking["TargetValue"] == 30.0
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"

    endpoint_event(world, "InService", f"ip-test-{run['run_id']}")  # redelivered: nothing more
    assert len(client.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]) == 1
    assert len(client.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]) == 1


def test_a_transient_autoscaling_error_leaves_the_model_deploying_for_the_event_s_retry(world):
    run = run_to_training(world)
    world.finish_training(run["training_job"], 0.9, {"Overfit": "NoIssuesFound"})
    training_done(world, run["training_job"], run["run_id"])
    stubber = Stubber(aws._make("application-autoscaling"))
    stubber.add_client_error("register_scalable_target", "ConcurrentUpdateException", "busy", 400)
    aws.use_client("application-autoscaling", stubber.client)
    with stubber:
        with pytest.raises(ClientError):  # the handler fails: EventBridge delivers the event again
            endpoint_event(world, "InService", f"ip-test-{run['run_id']}")
    aws.use_client("application-autoscaling", None)
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "DEPLOYING"
    endpoint_event(world, "InService", f"ip-test-{run['run_id']}")
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "DEPLOYED"
    assert autoscaling(world).describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]


def test_a_refused_autoscaling_request_does_not_keep_the_model_from_going_live(world):
    stubber = Stubber(aws._make("application-autoscaling"))
    stubber.add_client_error("register_scalable_target", "ValidationException", "no such variant", 400)
    aws.use_client("application-autoscaling", stubber.client)
    try:
        with stubber:
            run = deploy_model(world)
    finally:
        aws.use_client("application-autoscaling", None)
    assert run["status"] == "DEPLOYED" and live(world)["run_id"] == run["run_id"]


def test_the_autoscaling_requests_match_the_service_model():
    import botocore.session
    from botocore.validate import ParamValidator

    from chalice_app import scaling
    from chalice_app.config import settings_from_env

    model = botocore.session.get_session().get_service_model("application-autoscaling")
    config = settings_from_env({**ENV, "ENDPOINT_MAX_INSTANCES": "4", "TARGET_INVOCATIONS_PER_INSTANCE": "45"})
    for operation, request in (("RegisterScalableTarget", scaling.scalable_target_request(config)),
                               ("PutScalingPolicy", scaling.scaling_policy_request(config))):
        report = ParamValidator().validate(request, model.operation_model(operation).input_shape)
        assert not report.has_errors(), report.generate_report()
    assert scaling.scalable_target_request(config)["MaxCapacity"] == 4
    assert scaling.scaling_policy_request(config)["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 45.0
    assert [scaling.incoming_concurrency(n) for n in (1, 2, 4)] == [2, 4, 8]
    with pytest.raises(ValueError, match="ENDPOINT_MAX_INSTANCES must be at least 1"):
        settings_from_env({**ENV, "ENDPOINT_MAX_INSTANCES": "0"})
