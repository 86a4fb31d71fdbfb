"""What several test modules ask the local SageMaker for: a tuning job's request, a deployable model."""

from __future__ import annotations

import json

from .conftest import IMAGE, ROLE, job_definition, unique


def tuning_request(bucket, source, strategy, *, max_jobs=4, parallel=2, static=None, ranges=None, **config):
    """A tuning job of the stand-in script (conftest's `tiny_source`) over lr and optimizer, unless `ranges`."""
    return {
        "HyperParameterTuningJobName": unique(strategy.lower())[:32],
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "valid:accuracy"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges or {
                "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "1.0",
                                               "ScalingType": "Logarithmic"}],
                "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam"]}],
            },
            **config,
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"sagemaker_program": json.dumps("train.py"),
                                      "sagemaker_submit_directory": json.dumps(source), "epochs": "3",
                                      **(static or {})},
            **job_definition(bucket, source),
        },
        "Tags": [{"Key": "pipeline-role", "Value": "tuning"}],
    }


def deployable(sm, s3, bucket, body: bytes) -> str:
    """Model + endpoint config for an artefact; returns the config's name."""
    name = unique("model")
    s3.put_object(Bucket=bucket, Key=f"models/{name}/model.tar.gz", Body=body)
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": IMAGE, "ModelDataUrl": f"s3://{bucket}/models/{name}/model.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    return name
