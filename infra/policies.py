"""The Lambda's least-privilege IAM policy per stage, generated from the stage's configuration.

    python -m infra.policies        # rewrite .chalice/policy-<stage>.json

Every statement names its actions and scopes them to this app's bucket prefixes,
tables, queues and SageMaker name prefix; iam:PassRole only for the SageMaker
role, only to SageMaker. A test keeps the committed files equal to this output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHALICE_DIR = Path(__file__).resolve().parent.parent / ".chalice"


def _wild(value: str) -> str:
    """Account placeholders (resolved by CloudFormation in the env) become '*' in a static policy."""
    return value.replace("${AWS::AccountId}", "*")


def policy(env: dict[str, str]) -> dict[str, Any]:
    bucket = _wild(env["BUCKET"])
    prefix = env["NAME_PREFIX"]
    training, incoming = env.get("TRAINING_PREFIX", "training-data/"), env.get("INCOMING_PREFIX", "incoming/")
    manifests = env.get("MANIFEST_PREFIX", "manifests/")
    tables = [f"arn:aws:dynamodb:*:*:table/{env['PIPELINE_TABLE']}",
              f"arn:aws:dynamodb:*:*:table/{env['PREDICTIONS_TABLE']}"]
    queues = {name: f"arn:aws:sqs:*:*:{env[name]}" for name in ("TRAINING_QUEUE", "INCOMING_QUEUE")}

    def sagemaker(kind: str, name: str) -> str:
        return f"arn:aws:sagemaker:*:*:{kind}/{name}"

    statements = [
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": "arn:aws:logs:*:*:*"},
        {"Sid": "Tracing", "Effect": "Allow", "Action": ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
         "Resource": "*"},
        {"Sid": "ListTrainingData", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}",
         "Condition": {"StringLike": {"s3:prefix": [f"{training}*"]}}},
        {"Sid": "ReadImages", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{incoming}*", f"arn:aws:s3:::{bucket}/{training}*"]},
        # PutObject on the upload prefixes is what the presigned upload URLs are signed with.
        {"Sid": "WriteManifestsAndUploads", "Effect": "Allow", "Action": ["s3:PutObject"],
         "Resource": [f"arn:aws:s3:::{bucket}/{manifests}*", f"arn:aws:s3:::{bucket}/{incoming}*",
                      f"arn:aws:s3:::{bucket}/{training}*"]},
        {"Sid": "Tables", "Effect": "Allow",
         "Action": ["dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                    "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem", "dynamodb:Query"],
         "Resource": tables + [f"{table}/index/*" for table in tables]},
        {"Sid": "ConsumeQueues", "Effect": "Allow",
         "Action": ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"],
         "Resource": list(queues.values())},
        {"Sid": "RedrivePredictions", "Effect": "Allow", "Action": ["sqs:GetQueueUrl", "sqs:SendMessage"],
         "Resource": queues["INCOMING_QUEUE"]},
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
        {"Sid": "PassOnlyTheSageMakerRole", "Effect": "Allow", "Action": ["iam:PassRole"],
         "Resource": _wild(env["SAGEMAKER_ROLE_ARN"]),
         "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}},
    ]
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
