"""Retraining scenarios, end to end through the handlers: S3 → SQS → Lambda → DynamoDB/SageMaker (moto)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from chalice_app import aws
from chalice_app.stores import stores
from training.metrics import DEBUGGER_RULES

from .conftest import BUCKET, ENV, png_bytes
from .scenario import (SCHEDULE_FN, TUNED, deliver_training_uploads, reconcile_age, runs, start_run, tick,
                       training_done, tuning_done, tuning_jobs)


def test_a_burst_of_200_uploads_becomes_one_tuning_job(world):
    world.upload_training(200)
    deliver_training_uploads(world)
    assert tuning_jobs(world) == [], "the burst is not quiet yet"
    world.advance(30)
    assert tick(world)["started"] is False
    world.advance(31)
    outcome = tick(world)
    assert outcome["started"] is True
    for _ in range(3):
        world.advance(120)
        assert tick(world)["started"] is False
    [job] = tuning_jobs(world)
    [run] = runs(world)
    assert run["status"] == "TUNING" and run["images"] == 200 and run["labels"] == ["cat", "dog"]
    assert job == run["tuning_job"] == f"ip-test-{run['run_id']}"
    lines = world.s3.get_object(Bucket=BUCKET, Key=f"manifests/{run['run_id']}.jsonl")["Body"].read().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == 200 and {e["split"] for e in entries} == {"train", "valid", "test"}
    assert entries[0]["key"].startswith("training-data/") and entries[0]["etag"]


def test_a_run_s_jobs_download_only_its_images_on_a_volume_sized_from_them(world):
    world.upload("training-data/notes.txt", b"not an image")  # under the prefix, not in the run
    run = start_run(world)
    world.upload_training(4)  # arrives during the run: the next run's data
    manifest_uri = f"s3://{BUCKET}/manifests/{run['run_id']}.manifest"
    document = json.loads(world.s3.get_object(Bucket=BUCKET, Key=f"manifests/{run['run_id']}.manifest")["Body"].read())
    entries = [json.loads(line) for line in world.s3.get_object(
        Bucket=BUCKET, Key=f"manifests/{run['run_id']}.jsonl")["Body"].read().splitlines()]
    # SageMaker's ManifestFile: the prefix, then each image of the snapshot relative to it.
    assert document[0] == {"prefix": f"s3://{BUCKET}/training-data/"}
    assert document[1:] == [e["key"].removeprefix("training-data/") for e in entries] and len(entries) == 20
    assert sum(e["size"] for e in entries) == run["data_bytes"] > 0

    definition = world.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=run["tuning_job"])["TrainingJobDefinition"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in definition["InputDataConfig"]}
    assert channels["training"]["S3DataType"] == "ManifestFile" and channels["training"]["S3Uri"] == manifest_uri
    assert definition["ResourceConfig"]["VolumeSizeInGB"] == 6  # a few KB of images: 1 GB for them, 5 headroom

    world.finish_tuning(run["tuning_job"], TUNED)
    tuning_done(world, run)
    final = world.sagemaker.describe_training_job(TrainingJobName=f"ip-test-{run['run_id']}-final")
    assert final["InputDataConfig"] == definition["InputDataConfig"]  # the trials' data, the trials' volume
    assert final["ResourceConfig"] == definition["ResourceConfig"]


def test_every_event_delivered_twice_starts_one_job(world):
    world.upload_training(30)
    deliver_training_uploads(world, duplicate=True)
    world.advance(61)
    tick(world)
    tick(world)
    [run] = runs(world)
    assert len(tuning_jobs(world)) == 1
    world.finish_tuning(run["tuning_job"], TUNED)
    tuning_done(world, run)
    tuning_done(world, run)
    assert len(world.backend.training_jobs) == 1
    [final] = world.backend.training_jobs
    world.finish_training(final, 0.9)
    training_done(world, final, run["run_id"])
    training_done(world, final, run["run_id"])
    assert len(world.backend.endpoint_configs) == 1 and len(world.backend.endpoints) == 1


def test_a_commit_marker_ends_the_burst_without_waiting(world):
    world.upload_training(20)
    world.upload("training-data/_COMMIT", b"")
    deliver_training_uploads(world, duplicate=True)
    [run] = runs(world)
    assert run["trigger"] == "data" and len(tuning_jobs(world)) == 1
    tuning_done(world, run, "Failed")
    world.upload_training(4)
    world.advance(1)
    world.upload("training-data/_COMMIT", b"")  # the same empty marker again: a new commit
    deliver_training_uploads(world)
    assert len(tuning_jobs(world)) == 2 and runs(world)[0]["images"] == 24


def test_uploads_during_an_active_run_make_a_pending_run_after_it(world):
    run = start_run(world)
    world.upload_training(10)
    deliver_training_uploads(world)
    world.advance(61)
    outcome = tick(world)
    assert outcome["started"] is False and run["run_id"] in outcome["reason"]
    assert len(tuning_jobs(world)) == 1
    tuning_done(world, run, "Failed", FailureReason="out of capacity")
    first, second = sorted(runs(world), key=lambda r: r["run_id"])
    assert first["status"] == "FAILED" and "out of capacity" in first["reason"]
    assert second["status"] == "TUNING" and second["images"] == 30
    assert len(tuning_jobs(world)) == 2


def test_tuning_failed_marks_the_run_failed_and_releases_the_lock(world):
    run = start_run(world)
    tuning_done(world, run, "Stopped")
    [run] = runs(world)
    assert run["status"] == "FAILED" and "Stopped" in run["reason"]
    response = world.client.http.post("/runs")
    assert response.status_code == 202 and response.json_body["status"] == "STARTING"


@pytest.mark.parametrize("uploads, reason", [
    ({"cat": 5, "dog": 5}, "too few images"),
    ({"cat": 30}, "one class only"),
])
def test_too_little_data_refuses_the_run_with_a_reason(world, uploads, reason):
    for label, count in uploads.items():
        world.upload_training(count, labels=(label,))
    deliver_training_uploads(world)
    world.advance(61)
    outcome = tick(world)
    assert outcome["started"] is False and reason in outcome["reason"]
    [run] = runs(world)
    assert run["status"] == "REFUSED" and reason in run["reason"]
    assert tuning_jobs(world) == []
    response = world.client.http.post("/runs")  # a person's start is refused the same way, on its run
    assert response.status_code == 202
    tick(world)
    run = world.client.http.get(f"/runs/{response.json_body['run_id']}").json_body
    assert run["status"] == "REFUSED" and reason in run["reason"] and run["trigger"] == "manual"
    assert world.client.http.post("/runs").status_code == 202, "the lock was released"


def test_the_final_job_gets_the_best_hyperparameters_its_debugger_rules_and_tags(world):
    run = start_run(world)
    world.finish_tuning(run["tuning_job"], {**TUNED, "_tuning_objective_metric": "valid:accuracy"})
    tuning_done(world, run)
    [name] = world.backend.training_jobs
    job = world.sagemaker.describe_training_job(TrainingJobName=name)
    assert name == f"ip-test-{run['run_id']}-final"
    assert job["HyperParameters"]["lr"] == "0.02" and "_tuning_objective_metric" not in job["HyperParameters"]
    assert job["HyperParameters"]["sagemaker_program"] == '"training/train.py"'
    assert job["HyperParameters"]["debugger-rules"] == ",".join(DEBUGGER_RULES)
    tags = {t["Key"]: t["Value"] for t in world.sagemaker.list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]}
    assert tags == {"pipeline-role": "final", "pipeline-run": run["run_id"]}
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "TRAINING"


def test_final_training_failed_marks_the_run_failed(world):
    run = start_run(world)
    world.finish_tuning(run["tuning_job"], TUNED)
    tuning_done(world, run)
    [name] = world.backend.training_jobs
    training_done(world, name, run["run_id"], "Failed")
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "FAILED"


def test_tuning_trial_events_are_not_the_final_job(world):
    run = start_run(world)
    training_done(world, f"{run['tuning_job']}-001-abc", run["run_id"], role="tuning")
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["status"] == "TUNING"


def _sagemaker_error(world, code: str, message: str) -> Stubber:
    stubber = Stubber(aws._make("sagemaker"))
    stubber.add_client_error("create_hyper_parameter_tuning_job", service_error_code=code, service_message=message,
                             http_status_code=400)
    aws.use_client("sagemaker", stubber.client)
    return stubber


def test_a_refused_tuning_request_fails_the_run_and_frees_the_lock(world):
    world.upload_training(20)
    deliver_training_uploads(world)
    world.advance(61)
    with _sagemaker_error(world, "ValidationException", "MaxValue must be greater than MinValue"):
        outcome = tick(world)
    aws.use_client("sagemaker", None)
    assert outcome["started"] is False and "MaxValue must be greater" in outcome["reason"]
    [run] = runs(world)
    assert run["status"] == "FAILED" and "create_hyper_parameter_tuning_job was refused" in run["reason"]
    assert world.client.http.post("/runs").status_code == 202


def test_a_start_interrupted_by_a_transient_error_is_resumed_by_the_schedule(world):
    world.upload_training(20)
    deliver_training_uploads(world)
    world.advance(61)
    with _sagemaker_error(world, "ThrottlingException", "Rate exceeded"), pytest.raises(ClientError):
        tick(world)
    aws.use_client("sagemaker", None)
    [run] = runs(world)
    assert run["status"] == "STARTING" and tuning_jobs(world) == []
    tick(world)  # too soon: another Lambda may still be starting it
    assert tuning_jobs(world) == []
    world.advance(301)
    tick(world)
    assert tuning_jobs(world) == [f"ip-test-{run['run_id']}"]
    assert runs(world)[0]["status"] == "TUNING"


def test_handlers_log_with_correlation_ids_and_emit_metrics(world, capsys, caplog):
    from chalice_app.observability import logger

    world.upload_training(3)
    deliver_training_uploads(world)
    world.advance(61)
    capsys.readouterr()
    tick(world)
    [record] = [r for r in caplog.records if r.getMessage() == "run refused"]
    refusal = json.loads(logger.registered_formatter.format(record))  # as the Lambda writes it
    assert refusal["correlation_id"] == "7bf73129-1428-4cd3-a780-95db273d1602"  # the EventBridge event's id
    assert refusal["function_name"] == SCHEDULE_FN and refusal["level"] == "WARNING"
    assert "too few images" in refusal["reason"]
    [emf] = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    assert emf["RunsRefused"] == [1.0] and emf["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ImagePipeline"


def throttled(service: str, operation: str) -> Callable[[], None]:
    """Make the handlers' `service` client fail `operation` as a throttled call does; returns the undo."""
    client = aws.table(ENV["PIPELINE_TABLE"]).meta.client if service == "dynamodb" else aws.client(service)
    events = client.meta.events

    def throttle(**_):
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, operation)

    events.register(f"before-call.{service}.{operation}", throttle)
    return lambda: events.unregister(f"before-call.{service}.{operation}", throttle)


@pytest.mark.parametrize("outcome", ["Completed", "Failed"])
def test_a_run_whose_tuning_event_was_lost_goes_on_from_the_schedule(world, outcome):
    run = start_run(world)
    world.advance(86400)
    tick(world)  # a tuning job still at work is left alone, however long it takes
    assert runs(world)[0]["status"] == "TUNING"
    world.finish_tuning(run["tuning_job"], TUNED)
    world.backend.hyper_parameter_tuning_jobs[run["tuning_job"]].hyper_parameter_tuning_job_status = outcome
    world.advance(reconcile_age())
    tick(world)  # the event may still come (or Lambda's retries of it): the schedule leaves the step to it
    assert runs(world)[0]["status"] == "TUNING" and not world.backend.training_jobs
    world.advance(1)
    tick(world)
    run = runs(world)[0]
    if outcome == "Completed":
        assert run["status"] == "TRAINING" and run["training_job"] in world.backend.training_jobs
    else:
        assert run["status"] == "FAILED" and "tuning job Failed" in run["reason"]
        assert stores().runs.lock_holder() is None
    tuning_done(world, run, outcome)  # the event arrives after all: nothing happens twice
    assert runs(world) == [run] and len(world.backend.training_jobs) == (outcome == "Completed")


def test_a_start_that_died_before_recording_its_run_is_launched_by_the_schedule(world):
    world.upload_training(20)
    deliver_training_uploads(world)
    world.advance(61)
    undo = throttled("s3", "ListObjectsV2")  # the snapshot's listing fails after the lock was taken
    with pytest.raises(ClientError):
        tick(world)
    undo()
    holder = stores().runs.lock_holder()
    assert holder and runs(world) == []
    world.advance(reconcile_age())
    tick(world)
    assert runs(world) == []  # its Lambda may still be at work
    world.advance(1)
    tick(world)
    [run] = runs(world)
    assert run["run_id"] == holder and run["status"] == "TUNING" and run["images"] == 20
    assert tuning_jobs(world) == [run["tuning_job"]]


def test_the_lock_of_a_run_whose_end_died_half_way_is_freed_by_the_schedule(world):
    run = start_run(world)
    world.upload_training(4)  # a burst during the run: the next run
    deliver_training_uploads(world)
    undo = throttled("dynamodb", "DeleteItem")  # the run is FAILED, then freeing the lock fails
    with pytest.raises(ClientError):
        tuning_done(world, run, "Failed")
    undo()
    assert runs(world)[0]["status"] == "FAILED" and stores().runs.lock_holder() == run["run_id"]
    world.advance(61)
    tick(world)
    first, second = sorted(runs(world), key=lambda r: r["run_id"])
    assert first["run_id"] == run["run_id"] and second["status"] == "TUNING" and second["images"] == 24


def test_new_data_over_the_daily_cap_waits_for_the_next_day(world, monkeypatch, caplog):
    from chalice_app import config

    monkeypatch.setenv("MAX_RUNS_PER_DAY", "2")
    config.settings.cache_clear()
    for _ in range(2):
        tuning_done(world, start_run(world), "Failed")
    world.upload_training(20)
    deliver_training_uploads(world)
    world.advance(61)
    outcome = tick(world)
    assert outcome["started"] is False and "MAX_RUNS_PER_DAY" in outcome["reason"]
    assert "waits for 2027-01-16 UTC" in outcome["reason"]  # the world's clock starts 2027-01-15 08:00 UTC
    assert [r for r in caplog.records if r.getMessage() == "daily run cap reached"]
    assert len(tuning_jobs(world)) == 2
    world.advance(16 * 3600)  # past midnight UTC: the pending burst, not lost, starts its run
    assert tick(world)["started"] is True
    newest = runs(world)[0]
    assert newest["status"] == "TUNING" and newest["images"] == 60 and len(tuning_jobs(world)) == 3


def test_a_late_notification_of_an_image_the_run_holds_starts_no_second_run(world):
    # The images' notifications are held back (their handling failed: SQS delivers them again after
    # the visibility timeout); the burst's _COMMIT overtakes them and starts the run on the listing.
    world.upload_training(20)
    queue = world.queue_url(ENV["TRAINING_QUEUE"])
    held = []
    while True:
        messages = world.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10,
                                             VisibilityTimeout=600).get("Messages", [])
        if not messages:
            break
        held += messages
    world.upload("training-data/_COMMIT", b"")
    deliver_training_uploads(world)
    [run] = runs(world)
    assert run["images"] == 20
    for message in held:
        world.sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"],
                                            VisibilityTimeout=0)
    deliver_training_uploads(world)
    tuning_done(world, run, "Failed")
    world.advance(61)
    tick(world)
    assert [r["run_id"] for r in runs(world)] == [run["run_id"]]  # the burst became one run
    assert len(tuning_jobs(world)) == 1


def test_a_late_commit_marker_of_a_burst_the_run_took_starts_no_second_run(world):
    # The marker's notification fails and comes back after the quiet window started the run.
    world.upload_training(20)
    deliver_training_uploads(world)
    world.upload("training-data/_COMMIT", b"")
    queue = world.queue_url(ENV["TRAINING_QUEUE"])
    [held] = world.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=600)["Messages"]
    world.advance(61)
    tick(world)
    [run] = runs(world)
    world.sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=held["ReceiptHandle"], VisibilityTimeout=0)
    deliver_training_uploads(world)
    tuning_done(world, run, "Failed")
    world.advance(61)
    tick(world)
    assert [r["run_id"] for r in runs(world)] == [run["run_id"]]


def test_a_burst_that_brings_nothing_new_starts_no_run_but_a_changed_image_and_a_person_do(world):
    run = start_run(world)
    tuning_done(world, run, "Failed")
    for index in range(2):  # the same images again, byte for byte: the run already listed them
        world.upload(f"training-data/{('cat', 'dog')[index % 2]}/img-{index:04d}.png", png_bytes(index))
    deliver_training_uploads(world)
    world.advance(61)
    assert tick(world)["started"] is False
    assert len(runs(world)) == 1

    world.upload("training-data/cat/img-0000.png", png_bytes(1000))  # changed content: new data
    deliver_training_uploads(world)
    world.advance(61)
    assert tick(world)["started"] is True
    assert len(runs(world)) == 2 and len(tuning_jobs(world)) == 2

    newest = runs(world)[0]
    tuning_done(world, newest, "Failed")
    response = world.client.http.post("/runs")  # a person may retrain on the same data
    assert response.status_code == 202
    world.advance(61)
    tick(world)
    assert len(tuning_jobs(world)) == 3
