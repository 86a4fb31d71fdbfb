"""The stage's IAM policy, enforced on every AWS call the Lambda code makes in a test.

moto answers whatever it is asked; AWS first checks the Lambda's role. Here every call a
handler makes through `chalice_app.aws` is turned into what IAM evaluates for it (actions,
resource ARNs, condition keys) and evaluated against the policy `infra.policies` generates
for the stage, by moto's own IAM policy evaluator. A call the policy does not allow fails
as AWS fails it, with AccessDenied; an API call this table does not know fails the test,
so a new boto3 call needs its line here and in the policy.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError
from moto.iam import policy_conditions
from moto.iam.access_control import IAMPolicy, PermissionResult

Check = tuple[str, str, dict[str, str]]  # action, resource ARN, condition keys


class UnmappedCall(AssertionError):
    """An API call whose IAM actions this module does not know yet."""


def _string_like(expected: list[str] | str, actual: str) -> bool:
    return any(fnmatch.fnmatchcase(actual, pattern) for pattern in ([expected] if isinstance(expected, str) else expected))


def enable_string_like(monkeypatch) -> None:
    """moto's evaluator knows StringEquals and skips other operators; the policies use StringLike too."""
    monkeypatch.setitem(policy_conditions.CONDITION_OPERATIONS, "StringLike", _string_like)


def _table(region: str, account: str, name: str, index: str | None = None) -> str:
    arn = f"arn:aws:dynamodb:{region}:{account}:table/{name}"
    return f"{arn}/index/{index}" if index else arn


def _queue(region: str, account: str, params: dict[str, Any]) -> str:
    name = params["QueueUrl"].rstrip("/").rsplit("/", 1)[1] if "QueueUrl" in params else params["QueueName"]
    return f"arn:aws:sqs:{region}:{account}:{name}"


_SAGEMAKER_NAMES = {"TrainingJobName": "training-job", "HyperParameterTuningJobName": "hyper-parameter-tuning-job",
                    "ModelName": "model", "EndpointConfigName": "endpoint-config", "EndpointName": "endpoint"}
_S3 = {"GetObject": ["s3:GetObject"], "HeadObject": ["s3:GetObject"], "PutObject": ["s3:PutObject"],
       "DeleteObject": ["s3:DeleteObject"]}
_DYNAMODB_TRANSACT = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem", "Delete": "dynamodb:DeleteItem",
                      "ConditionCheck": "dynamodb:ConditionCheckItem", "Get": "dynamodb:GetItem"}
_SQS = {"SendMessageBatch": "SendMessage", "DeleteMessageBatch": "DeleteMessage",
        "ChangeMessageVisibilityBatch": "ChangeMessageVisibility"}


def checks(service: str, operation: str, params: dict[str, Any], region: str, account: str) -> Iterator[Check]:
    """What IAM evaluates for one API call (AWS's Service Authorization Reference)."""
    if service == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if operation in ("ListObjectsV2", "ListObjects"):
            yield "s3:ListBucket", bucket, {"s3:prefix": params.get("Prefix", "")}
        elif operation in _S3:
            for action in _S3[operation]:
                yield action, f"{bucket}/{params['Key']}", {}
        elif operation == "CopyObject":
            source = params["CopySource"]
            source = source if isinstance(source, str) else f"{source['Bucket']}/{source['Key']}"
            yield "s3:GetObject", f"arn:aws:s3:::{source.lstrip('/')}", {}
            yield "s3:PutObject", f"{bucket}/{params['Key']}", {}
        else:
            raise UnmappedCall(f"s3 {operation}")
    elif service == "dynamodb":
        if operation == "BatchGetItem":
            for name in params["RequestItems"]:
                yield "dynamodb:BatchGetItem", _table(region, account, name), {}
        elif operation in ("TransactWriteItems", "TransactGetItems"):
            for item in params["TransactItems"]:
                [(kind, body)] = item.items()
                yield _DYNAMODB_TRANSACT[kind], _table(region, account, body["TableName"]), {}
        elif operation in ("GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "DescribeTable"):
            yield f"dynamodb:{operation}", _table(region, account, params["TableName"], params.get("IndexName")), {}
        else:
            raise UnmappedCall(f"dynamodb {operation}")
    elif service == "sqs":
        yield f"sqs:{_SQS.get(operation, operation)}", _queue(region, account, params), {}
    elif service == "sagemaker-runtime":
        if operation != "InvokeEndpoint":
            raise UnmappedCall(f"sagemaker-runtime {operation}")
        yield "sagemaker:InvokeEndpoint", f"arn:aws:sagemaker:{region}:{account}:endpoint/{params['EndpointName'].lower()}", {}
    elif service == "sagemaker":
        resources = [f"arn:aws:sagemaker:{region}:{account}:{kind}/{params[key].lower()}"
                     for key, kind in _SAGEMAKER_NAMES.items() if key in params]
        if not resources:
            raise UnmappedCall(f"sagemaker {operation}")
        # CreateEndpoint/UpdateEndpoint name an endpoint config too: IAM checks both.
        for resource in resources:
            yield f"sagemaker:{operation}", resource, {}
        # A deployment with auto-rollback: SageMaker checks that the caller may describe its alarms.
        rollback = (params.get("DeploymentConfig") or {}).get("AutoRollbackConfiguration") or {}
        for alarm in rollback.get("Alarms", []):
            yield "cloudwatch:DescribeAlarms", f"arn:aws:cloudwatch:{region}:{account}:alarm:{alarm['AlarmName']}", {}
        if params.get("Tags"):
            yield "sagemaker:AddTags", resources[0], {}
        roles = [params.get("RoleArn"), params.get("ExecutionRoleArn"),
                 (params.get("TrainingJobDefinition") or {}).get("RoleArn")]
        for role in filter(None, roles):
            yield "iam:PassRole", role, {"iam:PassedToService": "sagemaker.amazonaws.com"}
    elif service == "application-autoscaling":
        if operation not in ("RegisterScalableTarget", "PutScalingPolicy", "DescribeScalableTargets",
                             "DeregisterScalableTarget"):
            raise UnmappedCall(f"{service} {operation}")
        # A scalable target's ARN carries an id given at registration: IAM sees "*" and the condition keys.
        yield f"application-autoscaling:{operation}", "*", {
            "application-autoscaling:service-namespace": params["ServiceNamespace"],
            "application-autoscaling:scalable-dimension": params.get("ScalableDimension", "")}
        if operation == "RegisterScalableTarget" and params["ServiceNamespace"] == "sagemaker":
            # What Application Auto Scaling checks its caller may do to the variant, and the
            # service-linked role it creates on a first registration.
            endpoint = params["ResourceId"].split("/")[1].lower()
            for action in ("sagemaker:DescribeEndpoint", "sagemaker:UpdateEndpointWeightsAndCapacities"):
                yield action, f"arn:aws:sagemaker:{region}:{account}:endpoint/{endpoint}", {}
            yield ("iam:CreateServiceLinkedRole", f"arn:aws:iam::{account}:role/aws-service-role/sagemaker."
                   "application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
                   {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"})
        if params.get("PolicyType") == "TargetTrackingScaling":
            # Target tracking creates its own alarms, on the caller's permission, named after the target.
            alarm = f"arn:aws:cloudwatch:{region}:{account}:alarm:TargetTracking-{params['ResourceId']}-AlarmHigh-1"
            for action in ("cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"):
                yield action, alarm, {}
    elif service == "cognito-idp":
        if operation != "ListUserPoolClients":
            raise UnmappedCall(f"{service} {operation}")
        yield f"cognito-idp:{operation}", f"arn:aws:cognito-idp:{region}:{account}:userpool/{params['UserPoolId']}", {}
    else:
        raise UnmappedCall(f"{service} {operation}")


def denial(policy: str, service: str, operation: str, params: dict[str, Any], region: str, account: str) -> str | None:
    """Why IAM would refuse the call under `policy` (a JSON document), or None when it allows it."""
    evaluator = IAMPolicy(policy)
    for action, resource, conditions in checks(service, operation, params, region, account):
        if evaluator.is_action_permitted(action, resource, None, conditions) != PermissionResult.PERMITTED:
            return f"not authorized to perform: {action} on resource: {resource}"
    return None


def may_know_missing(policy: str, bucket: str, key: str) -> bool:
    """S3 answers a read of a missing key 404 only to a caller allowed s3:ListBucket on the bucket,
    and 403 AccessDenied to any other (it would reveal that the key does not exist). S3 evaluates that
    ListBucket with the key as s3:prefix (ceph/ceph#68577 copies AWS's behaviour so)."""
    return IAMPolicy(policy).is_action_permitted("s3:ListBucket", f"arn:aws:s3:::{bucket}", None,
                                                 {"s3:prefix": key}) == PermissionResult.PERMITTED


def enforce(client: Any, policy: str, region: str, account: str) -> Any:
    """Make `client` fail as AWS would on a call the policy does not allow."""
    service = client.meta.service_model.service_name
    service_id = client.meta.service_model.service_id.hyphenize()

    def before_parameter_build(params, model, context, **_):
        context["iam_params"] = dict(params)
        reason = denial(policy, service, model.name, params, region, account)
        if reason:
            code = "AccessDenied" if service == "s3" else "AccessDeniedException"
            raise ClientError({"Error": {"Code": code, "Message": f"User is {reason} because no identity-based "
                                                                  f"policy allows the {model.name} action"}}, model.name)

    def after_call(parsed, model, context, **_):
        error = parsed.get("Error", {})
        params = context.get("iam_params", {})
        read = None  # the bucket and key a read of a missing object names
        if service == "s3" and model.name in ("GetObject", "HeadObject"):
            read = params["Bucket"], params["Key"]
        elif service == "s3" and model.name == "CopyObject":  # CopyObject reads its source as GetObject does
            source = params["CopySource"]
            read = (tuple(source.lstrip("/").split("/", 1)) if isinstance(source, str)
                    else (source["Bucket"], source["Key"]))
        if (read and error.get("Code") in ("NoSuchKey", "404")
                and not may_know_missing(policy, *read)):
            parsed["Error"] = {"Code": "AccessDenied", "Message": "Access Denied"}
            parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = 403

    client.meta.events.register(f"before-parameter-build.{service_id}", before_parameter_build)
    client.meta.events.register(f"after-call.{service_id}", after_call)
    return client
