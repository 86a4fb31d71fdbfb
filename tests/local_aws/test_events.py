"""The three kinds of SageMaker events reach an SQS queue through moto's EventBridge rules,
with the app's own event patterns, and parse as the app's event models."""

from __future__ import annotations

import json
import time

import boto3
import pytest

from chalice_app.events import (ENDPOINT_PATTERN, TRAINING_PATTERN, TUNING_PATTERN, EndpointStateChange,
                                TrainingJobStateChange, TuningJobStateChange)

from .conftest import REGION, job_definition, sdk_hyperparameters, unique, wait_for
from .sagemaker_requests import deployable, tuning_request

DONE = ("Completed", "Failed", "Stopped")
# moto 5.2.5 drops "account" from the events it delivers to targets (its default input
# template lacks it; AWS sends it). This transformer rebuilds the whole event, account included.
WHOLE_EVENT = {
    "InputPathsMap": {key: f"$.{key}" for key in
                      ("id", "time", "account", "region", "source", "detail-type", "resources", "detail")},
    "InputTemplate": '{"version": "0", "id": "<id>", "time": <time>, "account": "<account>", "region": "<region>", '
                     '"source": "<source>", "detail-type": "<detail-type>", "resources": <resources>, '
                     '"detail": <detail>}',
}


@pytest.fixture(scope="module")
def queue(aws_env):
    sqs = boto3.client("sqs", region_name=REGION)
    events = boto3.client("events", region_name=REGION)
    url = sqs.create_queue(QueueName=unique("sagemaker-events"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rules = {"tuning": TUNING_PATTERN, "training": TRAINING_PATTERN, "endpoint": ENDPOINT_PATTERN}
    for name, pattern in rules.items():
        rule = unique(f"sm-{name}")
        events.put_rule(Name=rule, EventPattern=json.dumps(pattern), EventBusName="default")
        events.put_targets(Rule=rule, EventBusName="default", Targets=[{"Id": "queue", "Arn": arn,
                                                                        "InputTransformer": WHOLE_EVENT}])
    return sqs, url


def drain(sqs, url, until, timeout=120) -> list[dict]:
    received: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(received):
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            received.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return received


def test_training_tuning_and_endpoint_events_arrive_in_aws_shapes(sm, s3, bucket, tiny_source, queue,
                                                                    serving_model_tar):
    sqs, url = queue
    final = unique("final")
    sm.create_training_job(TrainingJobName=final, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                           Tags=[{"Key": "pipeline-role", "Value": "final"}, {"Key": "run", "Value": "r1"}],
                           **job_definition(bucket, tiny_source))
    untagged = unique("other")  # no pipeline-role=final tag: the app's rule must not match it
    sm.create_training_job(TrainingJobName=untagged, HyperParameters=sdk_hyperparameters("train.py", tiny_source),
                           **job_definition(bucket, tiny_source))
    for name in (final, untagged):
        wait_for(lambda: sm.describe_training_job(TrainingJobName=name), "TrainingJobStatus", DONE)
    tuning = tuning_request(bucket, tiny_source, "Random", max_jobs=2)
    sm.create_hyper_parameter_tuning_job(**tuning)
    endpoint = unique("ep-events")
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=deployable(sm, s3, bucket, serving_model_tar.read_bytes()),
                       Tags=[{"Key": "pipeline-role", "Value": "serving"}])

    def complete(events):
        kinds = {(e["detail-type"], e["detail"].get("EndpointStatus") or e["detail"].get("HyperParameterTuningJobStatus")
                  or e["detail"].get("TrainingJobStatus")) for e in events}
        return {("SageMaker Training Job State Change", "Completed"),
                ("SageMaker HyperParameter Tuning Job State Change", "Completed"),
                ("SageMaker Endpoint State Change", "IN_SERVICE")} <= kinds

    received = drain(sqs, url, complete, timeout=240)
    sm.delete_endpoint(EndpointName=endpoint)
    assert complete(received), [(e["detail-type"], e["detail"]) for e in received]
    assert all(e["source"] == "aws.sagemaker" and e["account"] == "123456789012" for e in received)

    training = [e for e in received if e["detail-type"] == "SageMaker Training Job State Change"]
    assert {e["detail"]["TrainingJobName"] for e in training} == {final}  # only the tagged job matched
    done = TrainingJobStateChange.model_validate(training[-1])
    assert (done.detail.name, done.detail.status) == (final, "Completed")
    assert done.detail.tags == {"pipeline-role": "final", "run": "r1"}
    assert training[-1]["resources"] == [sm.describe_training_job(TrainingJobName=final)["TrainingJobArn"]]
    assert isinstance(training[-1]["detail"]["CreationTime"], int)  # epoch milliseconds, as AWS sends
    assert training[-1]["detail"]["ModelArtifacts"]["S3ModelArtifacts"].endswith(f"{final}/output/model.tar.gz")

    tuned = [e for e in received if e["detail-type"] == "SageMaker HyperParameter Tuning Job State Change"]
    finished = TuningJobStateChange.model_validate(tuned[-1])
    assert (finished.detail.name, finished.detail.status) == (tuning["HyperParameterTuningJobName"], "Completed")
    assert tuned[-1]["detail"]["TrainingJobStatusCounters"]["Completed"] == 2
    assert finished.detail.tags == {"pipeline-role": "tuning"}

    served = [e for e in received if e["detail-type"] == "SageMaker Endpoint State Change"]
    assert [e["detail"]["EndpointStatus"] for e in served][:2] == ["CREATING", "IN_SERVICE"]
    live = EndpointStateChange.model_validate(served[1])
    assert live.detail.name == endpoint and live.detail.tags == {"pipeline-role": "serving"}
