"""The local stage's wiring, rendered from the one template and the one config."""

from __future__ import annotations

import json

import boto3
from moto import mock_aws

from local_aws.dispatcher.queues import queue_arn
from local_aws.project.infra import apply, render
from local_aws.project.stage import load_stage, parse_overrides


def test_the_template_gives_the_stage_its_queues_dead_letters_and_notifications():
    stage = load_stage("local")
    env = stage.environment
    infra = render(stage)
    assert infra.bucket == env["BUCKET"]
    by_prefix = {n.prefix: n.queue_arn for n in infra.notifications}
    assert by_prefix == {env["TRAINING_PREFIX"]: queue_arn(stage.region, env["TRAINING_QUEUE"]),
                         env["INCOMING_PREFIX"]: queue_arn(stage.region, env["INCOMING_QUEUE"])}
    for name in (env["TRAINING_QUEUE"], env["INCOMING_QUEUE"]):
        spec = infra.queue(name)
        redrive = json.loads(spec.attributes["RedrivePolicy"])
        assert int(redrive["maxReceiveCount"]) >= 1
        assert infra.queue(redrive["deadLetterTargetArn"].rsplit(":", 1)[1]).dead_letter_arn is None
        assert int(spec.attributes["VisibilityTimeout"]) >= stage.lambda_timeout
    names = [q.name for q in infra.queues]
    assert all(names.index(q.dead_letter_arn.rsplit(":", 1)[1]) < names.index(q.name)
               for q in infra.queues if q.dead_letter_arn)  # dead-letter queues are created first
    assert {t["TableName"] for t in infra.tables} == {env["PIPELINE_TABLE"], env["PREDICTIONS_TABLE"]}


def test_overrides_replace_stage_variables_only_where_asked():
    stage = load_stage("local", parse_overrides(["MAX_TRAINING_JOBS=1"]))
    assert stage.environment["MAX_TRAINING_JOBS"] == "1"
    assert stage.environment["BUCKET"] == load_stage("local").environment["BUCKET"]
    assert stage.function_name("on_incoming_image") == "image-pipeline-local-on_incoming_image"


def test_the_bucket_gets_the_templates_lifecycle_rules_and_encryption():
    stage = load_stage("local")
    infra = render(stage)
    with mock_aws():
        session = boto3.Session(region_name=stage.region, aws_access_key_id="test", aws_secret_access_key="test")
        apply(infra, session)
        apply(infra, session)  # every start applies it again
        s3 = session.client("s3")
        rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=infra.bucket)["Rules"]}
        encryption = s3.get_bucket_encryption(Bucket=infra.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules["expire-trunk-feature-cache"]["Filter"] == {"Prefix": "sagemaker/trunk-features/"}
    assert rules["expire-trunk-feature-cache"]["Expiration"] == {"Days": 30}
    assert rules["abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_a_table_kept_from_an_earlier_start_gets_the_templates_new_index():
    """A stack restarted on its state finds the predictions table as an older template made it: the
    review queue's and the drift window's indexes are added, as CloudFormation stack updates add them on AWS."""
    stage = load_stage("local")
    infra = render(stage)
    table = stage.environment["PREDICTIONS_TABLE"]
    with mock_aws():
        session = boto3.Session(region_name=stage.region, aws_access_key_id="test", aws_secret_access_key="test")
        dynamodb = session.client("dynamodb")
        [request] = [t for t in infra.tables if t["TableName"] == table]
        older = {**request, "GlobalSecondaryIndexes": [i for i in request["GlobalSecondaryIndexes"]
                                                       if i["IndexName"] not in ("review", "drift")],
                 "AttributeDefinitions": [a for a in request["AttributeDefinitions"]
                                          if a["AttributeName"] not in ("review", "drift_version")]}
        dynamodb.create_table(**older)
        dynamodb.put_item(TableName=table, Item={"image_key": {"S": "incoming/a.png"}, "review": {"S": "WAITING"},
                                                 "created_at": {"N": "1"}})
        apply(infra, session)
        indexes = {i["IndexName"] for i in dynamodb.describe_table(TableName=table)["Table"]["GlobalSecondaryIndexes"]}
        waiting = dynamodb.query(TableName=table, IndexName="review", KeyConditionExpression="#r = :w",
                                 ExpressionAttributeNames={"#r": "review"},
                                 ExpressionAttributeValues={":w": {"S": "WAITING"}})["Items"]
    assert indexes == {"by_status", "recent", "review", "drift"}
    assert [item["image_key"]["S"] for item in waiting] == ["incoming/a.png"]


def test_the_bucket_answers_the_consoles_cors_preflight_for_a_presigned_put(moto_url):
    """The console's page (the API's origin) PUTs uploads straight to S3, another origin: the
    template's CORS rule, applied by the stack with the local API's origin, lets the browser send it."""
    import urllib.request

    stage = load_stage("local")
    origin = "http://127.0.0.1:8123"
    infra = render(stage, api_origin=origin)
    assert [rule["AllowedOrigins"] for rule in infra.cors_rules] == [[origin]]
    assert render(stage).cors_rules == []  # no API origin given: no rule naming nobody
    session = boto3.Session(region_name=stage.region)
    apply(infra, session)
    url = f"{moto_url}/{infra.bucket}/incoming/x.png"

    def preflight(from_origin: str) -> dict[str, str]:
        request = urllib.request.Request(url, method="OPTIONS", headers={
            "Origin": from_origin, "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "content-type"})
        try:
            with urllib.request.urlopen(request) as response:
                return {k.lower(): v for k, v in response.headers.items()}
        except urllib.error.HTTPError as error:
            return {k.lower(): v for k, v in error.headers.items()}

    allowed = preflight(origin)
    assert allowed.get("access-control-allow-origin") == origin
    assert "PUT" in allowed.get("access-control-allow-methods", "")
    # What AWS matches a preflight against (moto's server answers any origin's: kinder than AWS).
    [rule] = session.client("s3").get_bucket_cors(Bucket=infra.bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == [origin] and rule["AllowedMethods"] == ["PUT"]
