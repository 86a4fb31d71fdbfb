"""What Chalice does not create, created in moto from `infra/template.json`.

The template is the one source for the queues (visibility timeout, dead-letter
queue, maxReceiveCount), the tables, the bucket's lifecycle rules and encryption,
and which bucket prefix notifies which queue;
here it is rendered for the local stage and applied with boto3. Every call is
idempotent, so `up` applies it on every start, over restored state too.

The bucket's name comes from the stage's BUCKET (what the handlers use): the
template names it with the account id, which only CloudFormation resolves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ..dispatcher.queues import ensure_queue, queue_arn
from ..dispatcher.stage import ACCOUNT, Stage
from .stage import REPO_ROOT

TEMPLATE = REPO_ROOT / "infra" / "template.json"
_SUB = re.compile(r"\$\{([^}]+)\}")
# CloudFormation's AWS::SQS::Queue properties that are SQS attributes of the same name.
_QUEUE_ATTRIBUTES = ("DelaySeconds", "MaximumMessageSize", "MessageRetentionPeriod",
                     "ReceiveMessageWaitTimeSeconds", "VisibilityTimeout", "RedrivePolicy")


@dataclass(frozen=True)
class QueueSpec:
    name: str
    attributes: dict[str, str]

    @property
    def dead_letter_arn(self) -> str | None:
        redrive = self.attributes.get("RedrivePolicy")
        return json.loads(redrive)["deadLetterTargetArn"] if redrive else None


@dataclass(frozen=True)
class Notification:
    queue_arn: str
    events: list[str]
    prefix: str


@dataclass(frozen=True)
class Infra:
    bucket: str
    queues: list[QueueSpec]
    tables: list[dict[str, Any]]
    ttl: dict[str, dict[str, Any]] = field(default_factory=dict)
    notifications: list[Notification] = field(default_factory=list)
    # S3 API shapes (put_bucket_lifecycle_configuration's Rules, put_bucket_encryption's Rules).
    lifecycle_rules: list[dict[str, Any]] = field(default_factory=list)
    encryption_rules: list[dict[str, Any]] = field(default_factory=list)
    cors_rules: list[dict[str, Any]] = field(default_factory=list)

    def queue(self, name: str) -> QueueSpec:
        for spec in self.queues:
            if spec.name == name:
                return spec
        raise KeyError(f"queue {name!r} is not declared in {TEMPLATE.relative_to(REPO_ROOT)}")


class _Renderer:
    """Resolves the intrinsic functions the template uses (Fn::Sub, Fn::GetAtt .Arn of a queue, Ref)."""

    def __init__(self, template: dict[str, Any], stage: Stage) -> None:
        self.resources = template["Resources"]
        self.values = {"Stage": stage.name, "AWS::AccountId": ACCOUNT, "AWS::Region": stage.region,
                       "AWS::Partition": "aws"}
        self.region = stage.region

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict) and "Fn::Sub" in value:
            return _SUB.sub(lambda m: self.values[m.group(1)], value["Fn::Sub"])
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            logical, attribute = value["Fn::GetAtt"]
            resource = self.resources[logical]
            if resource["Type"] != "AWS::SQS::Queue" or attribute != "Arn":
                raise ValueError(f"cannot resolve Fn::GetAtt {logical}.{attribute} locally")
            return queue_arn(self.region, self(resource["Properties"]["QueueName"]))
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        return value


def render(stage: Stage, template_path: Path = TEMPLATE, api_origin: str | None = None) -> Infra:
    """The template for the stage; `api_origin` is the local HTTP API's (the console's) origin, which
    the bucket's CORS rules name as the RestAPI's URL."""
    template = json.loads(template_path.read_text())
    resolve = _Renderer(template, stage)
    queues, tables, ttl, notifications, lifecycle, encryption, cors = [], [], {}, [], [], [], []
    for resource in template["Resources"].values():
        kind, props = resource.get("Type"), resource.get("Properties", {})
        if kind == "AWS::SQS::Queue":
            attributes = {}
            for name in _QUEUE_ATTRIBUTES:
                if name in props:
                    value = resolve(props[name])
                    attributes[name] = json.dumps(value) if isinstance(value, dict) else str(value)
            queues.append(QueueSpec(resolve(props["QueueName"]), attributes))
        elif kind == "AWS::DynamoDB::Table":
            request = {k: props[k] for k in ("AttributeDefinitions", "KeySchema", "BillingMode",
                                             "GlobalSecondaryIndexes") if k in props}
            request["TableName"] = resolve(props["TableName"])
            tables.append(request)
            if props.get("TimeToLiveSpecification", {}).get("Enabled"):
                ttl[request["TableName"]] = props["TimeToLiveSpecification"]
        elif kind == "AWS::S3::Bucket":
            lifecycle = [lifecycle_rule(rule) for rule in props.get("LifecycleConfiguration", {}).get("Rules", [])]
            encryption = [encryption_rule(rule) for rule in
                          props.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])]
            cors = [rule for rule in (cors_rule(r, api_origin) for r in
                                      props.get("CorsConfiguration", {}).get("CorsRules", [])) if rule["AllowedOrigins"]]
            for item in props.get("NotificationConfiguration", {}).get("QueueConfigurations", []):
                rules = item.get("Filter", {}).get("S3Key", {}).get("Rules", [])
                prefix = next((r["Value"] for r in rules if r["Name"].lower() == "prefix"), "")
                notifications.append(Notification(resolve(item["Queue"]), [item["Event"]], prefix))
    # Dead-letter queues first: a redrive policy names a queue that must exist.
    queues.sort(key=lambda q: q.dead_letter_arn is not None)
    return Infra(bucket=stage.environment["BUCKET"], queues=queues, tables=tables, ttl=ttl,
                 notifications=notifications, lifecycle_rules=lifecycle, encryption_rules=encryption,
                 cors_rules=cors)


def lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape (the properties the template uses)."""
    known = {"Id", "Status", "Prefix", "ExpirationInDays", "AbortIncompleteMultipartUpload"}
    if set(rule) - known:
        raise ValueError(f"lifecycle rule {rule.get('Id')!r}: cannot render {sorted(set(rule) - known)} locally")
    rendered: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "ExpirationInDays" in rule:
        rendered["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        rendered["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": int(rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    return rendered


def cors_rule(rule: dict[str, Any], api_origin: str | None) -> dict[str, Any]:
    """A CloudFormation CorsRule in the S3 API's shape. An origin naming the RestAPI (the console's page,
    served by the API) is the local API's origin here; without one given, the rule keeps only the others."""
    origins = []
    for origin in rule["AllowedOrigins"]:
        if isinstance(origin, str):
            origins.append(origin)
        elif "${RestAPI}" in origin.get("Fn::Sub", ""):
            origins += [api_origin] if api_origin else []
        else:
            raise ValueError(f"CORS rule {rule.get('Id')!r}: cannot render the origin {origin} locally")
    rendered: dict[str, Any] = {"AllowedMethods": rule["AllowedMethods"], "AllowedOrigins": origins}
    renames = {"Id": "ID", "AllowedHeaders": "AllowedHeaders", "ExposedHeaders": "ExposeHeaders",
               "MaxAge": "MaxAgeSeconds"}
    rendered.update({renames[name]: value for name, value in rule.items() if name in renames})
    return rendered


def encryption_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation ServerSideEncryptionRule in the S3 API's shape (its default has another name)."""
    rendered: dict[str, Any] = {"ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"]}
    if "BucketKeyEnabled" in rule:
        rendered["BucketKeyEnabled"] = rule["BucketKeyEnabled"]
    return rendered


def _add_missing_indexes(dynamodb: Any, request: dict[str, Any]) -> None:
    """A table kept from an earlier start gets the template's new GSIs, as a stack update adds them on AWS."""
    name = request["TableName"]
    have = {index["IndexName"] for index in
            dynamodb.describe_table(TableName=name)["Table"].get("GlobalSecondaryIndexes", [])}
    for index in request.get("GlobalSecondaryIndexes", []):
        if index["IndexName"] not in have:
            dynamodb.update_table(TableName=name, AttributeDefinitions=request["AttributeDefinitions"],
                                  GlobalSecondaryIndexUpdates=[{"Create": index}])


def apply(infra: Infra, session: Any) -> None:
    """Create (or re-assert) the queues, tables, bucket and its rules and notifications."""
    sqs, dynamodb, s3 = (session.client(s) for s in ("sqs", "dynamodb", "s3"))
    for spec in infra.queues:
        ensure_queue(sqs, spec.name, spec.attributes)
    existing = set(dynamodb.list_tables()["TableNames"])
    for request in infra.tables:
        if request["TableName"] not in existing:
            dynamodb.create_table(**request)
        else:
            _add_missing_indexes(dynamodb, request)
    for table, spec in infra.ttl.items():
        try:
            dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification=spec)
        except ClientError as error:  # already enabled (restored tables keep it)
            if "already enabled" not in str(error).lower():
                raise
    try:
        s3.create_bucket(Bucket=infra.bucket)
    except ClientError as error:
        if error.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    if infra.lifecycle_rules:  # moto keeps the rules (and answers for them) but expires nothing
        s3.put_bucket_lifecycle_configuration(Bucket=infra.bucket,
                                              LifecycleConfiguration={"Rules": infra.lifecycle_rules})
    if infra.encryption_rules:
        s3.put_bucket_encryption(Bucket=infra.bucket,
                                 ServerSideEncryptionConfiguration={"Rules": infra.encryption_rules})
    if infra.cors_rules:  # what lets the console's page PUT to a presigned URL (another origin)
        s3.put_bucket_cors(Bucket=infra.bucket, CORSConfiguration={"CORSRules": infra.cors_rules})
    s3.put_bucket_notification_configuration(Bucket=infra.bucket, NotificationConfiguration={
        "QueueConfigurations": [
            {"QueueArn": n.queue_arn, "Events": n.events,
             "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": n.prefix}]}}}
            for n in infra.notifications]})
