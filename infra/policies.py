"""The Lambda's least-privilege IAM policy per stage, generated from the stage's configuration.

    python -m infra.policies        # rewrite .chalice/policy-<stage>.json

Every statement names its actions and scopes them to this app's bucket prefixes,
tables, queues, SageMaker name prefix and alarms, in this account and region;
iam:PassRole only for the SageMaker role, only to SageMaker. A test keeps the
committed files equal to this output.

The files are static JSON, so the account and region stay CloudFormation
placeholders (`${AWS::AccountId}`, `${AWS::Region}`): `infra.package` turns each
such Resource into Fn::Sub in the packaged template, and `resolve` fills them in
as CloudFormation would (the tests evaluate the policy that way).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CHALICE_DIR = Path(__file__).resolve().parent.parent / ".chalice"
TEMPLATE = Path(__file__).resolve().parent / "template.json"
# The stage's table variables and the template's tables they name.
_TABLE_RESOURCES = {"PIPELINE_TABLE": "PipelineTable", "PREDICTIONS_TABLE": "PredictionsTable"}


def table_indexes() -> dict[str, list[str]]:
    """The stage's table variable -> the names of the GSIs the template defines on that table."""
    resources = json.loads(TEMPLATE.read_text())["Resources"]
    return {variable: [index["IndexName"]
                       for index in resources[logical]["Properties"].get("GlobalSecondaryIndexes", [])]
            for variable, logical in _TABLE_RESOURCES.items()}


# Where the policy names this stack's account and region; CloudFormation fills them in.
ACCOUNT, REGION = "${AWS::AccountId}", "${AWS::Region}"
_PLACEHOLDER = re.compile(r"\$\{AWS::(AccountId|Region|Partition)\}")


def resolve(document: Any, region: str, account: str, partition: str = "aws") -> Any:
    """The policy as CloudFormation's Fn::Sub makes it in `account` and `region`."""
    values = {"AccountId": account, "Region": region, "Partition": partition}
    return json.loads(_PLACEHOLDER.sub(lambda match: values[match.group(1)], json.dumps(document)))


def policy(env: dict[str, str]) -> dict[str, Any]:
    bucket = env["BUCKET"]
    prefix = env["NAME_PREFIX"]
    training, incoming = env.get("TRAINING_PREFIX", "training-data/"), env.get("INCOMING_PREFIX", "incoming/")
    manifests = env.get("MANIFEST_PREFIX", "manifests/")
    output = env.get("OUTPUT_PREFIX", "sagemaker/")
    table_arns = {variable: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{env[variable]}"
                  for variable in ("PIPELINE_TABLE", "PREDICTIONS_TABLE")}
    tables = list(table_arns.values())
    # Queries name an index: only the template's own, each by its ARN.
    indexes = [f"{table_arns[variable]}/index/{name}" for variable, names in table_indexes().items() for name in names]
    queues = {name: f"arn:aws:sqs:{REGION}:{ACCOUNT}:{env[name]}" for name in ("TRAINING_QUEUE", "INCOMING_QUEUE")}
    alarms = json.loads(env.get("ROLLBACK_ALARMS") or "[]")

    def sagemaker(kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name}"

    statements = [
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"arn:aws:logs:{REGION}:{ACCOUNT}:*"},
        {"Sid": "Tracing", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
         "Resource": "*"},
        # The run's snapshot lists training-data/. On incoming/ it is what makes a GetObject of a
        # deleted image answer NoSuchKey (stored FAILED) rather than AccessDenied (retried, then
        # dead-lettered): S3 answers 404 only to a caller that may list the key. So for the final
        # jobs' artefacts and reports that the drift check and GET /runs/{id}/report read.
        {"Sid": "ListData", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{training}*", f"{incoming}*", f"{output}final/*"]}}},
        {"Sid": "ReadImages", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{incoming}*", f"arn:aws:s3:::{bucket}/{training}*"]},
        # GET /runs/{id}/report reads the report from the final job's output archive (chalice_app/reports.py):
        # that archive only, not the models or the Debugger and profiler output beside it.
        {"Sid": "ReadFinalJobReports", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{output}final/*/output/output.tar.gz"},
        # The drift check reads each version's drift reference out of its final job's artefact
        # (chalice_app/drift_reference.py): the model.tar.gz files only, nothing else the jobs write.
        {"Sid": "ReadModelArtefacts", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": f"arn:aws:s3:::{bucket}/{output}final/*/output/model.tar.gz"},
        # PutObject on the upload prefixes is what the presigned upload URLs are signed with.
        {"Sid": "WriteManifestsAndUploads", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{manifests}*", f"arn:aws:s3:::{bucket}/{incoming}*",
                      f"arn:aws:s3:::{bucket}/{training}*"]},
        {"Sid": "Tables", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem", "dynamodb:Query"],
         "Resource": tables},
        {"Sid": "QueryIndexes", "Effect": "Allow", "Action": ["dynamodb:Query"], "Resource": indexes},
        {"Sid": "ConsumeQueues", "Effect": "Allow",
         "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"],
         "Resource": list(queues.values())},
        {"Sid": "RedrivePredictions", "Effect": "Allow", "Action": ["sqs:GetQueueUrl", "sqs:SendMessage"],
         "Resource": queues["INCOMING_QUEUE"]},
        # Lambda sends an event that failed all its attempts to the function's failure destination
        # with the function's own role (infra/template.json's EventInvokeConfigs).
        {"Sid": "KeepFailedEvents", "Effect": "Allow", "Action": ["sqs:SendMessage"],
         "Resource": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{env['FAILED_EVENTS_QUEUE']}"},
        {"Sid": "SageMakerPipeline", "Effect": "Allow",
         "Action": ["sagemaker:CreateHyperParameterTuningJob", "sagemaker:DescribeHyperParameterTuningJob",
                    "sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob", "sagemaker:CreateModel",
                    "sagemaker:DeleteModel", "sagemaker:CreateEndpointConfig", "sagemaker:DeleteEndpointConfig",
                    "sagemaker:AddTags"],
         "Resource": [sagemaker("hyper-parameter-tuning-job", f"{prefix}-*"), sagemaker("training-job", f"{prefix}-*"),
                      sagemaker("model", f"{prefix}-*"), sagemaker("endpoint-config", f"{prefix}-*")]},
        {"Sid": "SageMakerEndpoint", "Effect": "Allow",
         "Action": ["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint", "sagemaker:DescribeEndpoint",
                    "sagemaker:InvokeEndpoint", "sagemaker:AddTags"],
         "Resource": [sagemaker("endpoint", env["ENDPOINT_NAME"]), sagemaker("endpoint-config", f"{prefix}-*")]},
        # A Failed endpoint takes no call but DeleteEndpoint: the next deployment replaces it.
        {"Sid": "ReplaceFailedEndpoint", "Effect": "Allow", "Action": ["sagemaker:DeleteEndpoint"],
         "Resource": sagemaker("endpoint", env["ENDPOINT_NAME"])},
        # Endpoint autoscaling (chalice_app/scaling.py). Scalable targets have no name-based ARN (an id
        # is given at registration): the namespace and dimension scope them. Application Auto Scaling
        # checks that its caller may describe and resize the variant; deleting a Failed endpoint
        # deregisters its target on the caller's permission.
        {"Sid": "EndpointAutoscaling", "Effect": "Allow",
         "Action": ["application-autoscaling:RegisterScalableTarget", "application-autoscaling:PutScalingPolicy",
                    "application-autoscaling:DescribeScalableTargets",
                    "application-autoscaling:DeregisterScalableTarget"],
         "Resource": "*",
         "Condition": {"StringEquals": {"application-autoscaling:service-namespace": "sagemaker",
                                        "application-autoscaling:scalable-dimension":
                                            "sagemaker:variant:DesiredInstanceCount"}}},
        {"Sid": "EndpointAutoscalingChecks", "Effect": "Allow",
         "Action": ["sagemaker:DescribeEndpoint", "sagemaker:DescribeEndpointConfig",
                    "sagemaker:UpdateEndpointWeightsAndCapacities"],
         "Resource": [sagemaker("endpoint", env["ENDPOINT_NAME"]), sagemaker("endpoint-config", f"{prefix}-*")]},
        # A target-tracking policy's alarms are created, described and deleted on its caller's
        # permission (SageMaker's "Auto scaling prerequisites"); their names start with the variant's
        # resource id.
        {"Sid": "EndpointAutoscalingAlarms", "Effect": "Allow",
         "Action": ["cloudwatch:PutMetricAlarm", "cloudwatch:DescribeAlarms", "cloudwatch:DeleteAlarms"],
         "Resource": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:TargetTracking-endpoint/{env['ENDPOINT_NAME']}/*"},
        # The first registration of an endpoint variant creates Application Auto Scaling's role for it.
        {"Sid": "AutoscalingServiceLinkedRole", "Effect": "Allow", "Action": ["iam:CreateServiceLinkedRole"],
         "Resource": f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
                     "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
         "Condition": {"StringLike": {"iam:AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com"}}},
        {"Sid": "PassOnlyTheSageMakerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": env["SAGEMAKER_ROLE_ARN"],
         "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
    ]
    if env.get("AUTH") == "cognito":
        # GET /sign-in looks up the console's app client by name in the stage's own pool (chalice_app/sign_in.py).
        statements.append({"Sid": "FindConsoleClient", "Effect": "Allow", "Action": ["cognito-idp:ListUserPoolClients"],
                           "Resource": f"arn:aws:cognito-idp:{REGION}:{ACCOUNT}:userpool/{env['COGNITO_USER_POOL_ID']}"})
    if alarms:
        # An UpdateEndpoint with AutoRollbackConfiguration is refused unless its caller may
        # describe the alarms it names (SageMaker's deployment guardrails).
        statements.append({"Sid": "RollbackAlarms", "Effect": "Allow", "Action": ["cloudwatch:DescribeAlarms"],
                           "Resource": [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name}" for name in alarms]})
    return {"Version": "2012-10-17", "Statement": statements}


def stage_env(config: dict[str, Any], stage: str) -> dict[str, str]:
    return {**config.get("environment_variables", {}), **config["stages"][stage].get("environment_variables", {})}


def render_all() -> dict[Path, str]:
    config = json.loads((CHALICE_DIR / "config.json").read_text())
    return {CHALICE_DIR / stage_config["iam_policy_file"]: json.dumps(policy(stage_env(config, stage)), indent=2) + "\n"
            for stage, stage_config in config["stages"].items()}


def main() -> None:
    for path, text in render_all().items():
        path.write_text(text)
        print(f"wrote {path.name}")


if __name__ == "__main__":
    main()
