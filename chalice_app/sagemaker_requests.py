"""Pure builders of every SageMaker request the pipeline makes.

Each function takes the settings and the run's facts and returns the keyword
arguments of one boto3 call; tests validate them against botocore's service model.
Names derive from the run id, so starting the same step twice asks for the same
resource and SageMaker answers ResourceInUse instead of running it twice.
"""

from __future__ import annotations

import json
import math
from typing import Any

from training.metrics import METRIC_DEFINITIONS, OBJECTIVE_METRIC, RULE_METRIC_DEFINITIONS, format_rule_parameters

from . import manifest
from .config import Settings

FINAL_ROLE = "final"
TUNING_ROLE = "tuning"
ROLE_TAG = "pipeline-role"
VARIANT_NAME = "AllTraffic"  # the endpoint's one production variant (its autoscaling target too)
RUN_TAG = "pipeline-run"
# Keys SageMaker adds to a tuned job's hyperparameters that are not the script's.
_TUNER_KEYS = {"_tuning_objective_metric"}
_RANGE_KEYS = {"integer": "IntegerParameterRanges", "continuous": "ContinuousParameterRanges",
               "categorical": "CategoricalParameterRanges"}


def tuning_job_name(settings: Settings, run_id: str) -> str:
    return f"{settings.name_prefix}-{run_id}"[:32]


def final_job_name(settings: Settings, run_id: str) -> str:
    return f"{settings.name_prefix}-{run_id}-final"


def model_name(settings: Settings, run_id: str) -> str:
    return f"{settings.name_prefix}-{run_id}"


def run_id_from_job_name(settings: Settings, job_name: str) -> str | None:
    head = f"{settings.name_prefix}-"
    if not job_name.startswith(head):
        return None
    return job_name[len(head):].removesuffix("-final")


def manifest_key(settings: Settings, run_id: str) -> str:
    return f"{settings.manifest_prefix}{run_id}.jsonl"


def manifest_file_key(settings: Settings, run_id: str) -> str:
    """The run's images as SageMaker's ManifestFile (the `training` channel). The `manifest`
    channel is the S3Prefix of manifest_key: this key must not start with it."""
    return f"{settings.manifest_prefix}{run_id}.manifest"


def manifest_puts(settings: Settings, run_id: str, entries: list[manifest.Entry]) -> list[dict[str, Any]]:
    """PutObject's parameters for the run's two manifests: labels and splits, and the channel's files."""
    return [
        {"Bucket": settings.bucket, "Key": manifest_key(settings, run_id),
         "Body": manifest.to_jsonl(entries).encode(), "ContentType": "application/jsonl"},
        {"Bucket": settings.bucket, "Key": manifest_file_key(settings, run_id),
         "Body": manifest.to_manifest_file(entries, settings.bucket, settings.training_prefix).encode(),
         "ContentType": "application/json"},
    ]


# The ML storage volume (ResourceConfig.VolumeSizeInGB) holds the channels that File mode copies
# and whatever the job writes: model, checkpoints, output data, the feature cache. Twice the data
# leaves room for scratch of the data's own size, and the headroom for the model side (a ResNet-50
# and its checkpoints are a few hundred MB). A run recorded before sizes were kept gets the old 30 GB.
VOLUME_HEADROOM_GB = 5
LEGACY_VOLUME_GB = 30


def volume_size_gb(data_bytes: int | None) -> int:
    if data_bytes is None:
        return LEGACY_VOLUME_GB
    return math.ceil(2 * data_bytes / 1024**3) + VOLUME_HEADROOM_GB


def _tags(run_id: str, role: str) -> list[dict[str, str]]:
    return [{"Key": RUN_TAG, "Value": run_id}, {"Key": ROLE_TAG, "Value": role}]


def sdk_hyperparameters(settings: Settings) -> dict[str, str]:
    """The script-mode entries, JSON-encoded as the SageMaker SDK writes them."""
    return {
        "sagemaker_program": json.dumps("training/train.py"),
        "sagemaker_submit_directory": json.dumps(settings.source_dir_uri),
        "sagemaker_region": json.dumps(settings.region),
        "sagemaker_container_log_level": "20",
    }


def feature_cache_uri(settings: Settings) -> str:
    """Where jobs share a frozen trunk's features (training/feature_cache.py). A tuning job's
    trials cannot share a managed warm pool's cache (tuning jobs keep no warm pool), so they
    share an S3 prefix, under the one the SageMaker role may write."""
    return settings.s3_uri(f"{settings.output_prefix}trunk-features/")


# The training source's requirements.txt (training/requirements.txt, installed by the toolkit)
# holds smdebug 1.0.34, whose protobuf<=3.20.3 pin would downgrade the image's protobuf 6 that
# sagemaker-training needs: installed without dependencies, smdebug runs on protobuf 6 in its
# pure-Python implementation. The conformance check proves this in the image's environment.
SOURCE_ENVIRONMENT = {"PIP_NO_DEPS": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}


# train.py's own default, when a stage neither fixes nor tunes the epochs.
SCRIPT_DEFAULT_EPOCHS = 10


def hyperband_epochs(settings: Settings) -> tuple[int, int] | None:
    """(MinResource, MaxResource) in epochs when the stage tunes with Hyperband, else None.

    Hyperband gives each trial its epochs itself, so they are not a tuned range: SageMaker takes
    MaxResource from HyperbandStrategyConfig or infers it from a static `epochs`, and refuses the
    job when it can do neither. A stage's epochs range becomes the bounds."""
    if settings.tuning_strategy != "Hyperband":
        return None
    epochs = settings.tuning_ranges.get("epochs")
    if epochs:
        return int(epochs["min"]), int(epochs["max"])
    return 1, int(settings.static_hyperparameters.get("epochs", SCRIPT_DEFAULT_EPOCHS))


def static_hyperparameters(settings: Settings) -> dict[str, str]:
    static = {"feature-cache": feature_cache_uri(settings), **settings.static_hyperparameters,
              **sdk_hyperparameters(settings)}
    bounds = hyperband_epochs(settings)
    if bounds:  # the trials' ceiling, and the final job's epochs (it early-stops on its own patience)
        static["epochs"] = str(bounds[1])
    return static


def parameter_ranges(ranges: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Configuration ranges ({"lr": {"type": "continuous", "min": .., "max": ..}}) in the API's shape."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, spec in sorted(ranges.items()):
        kind = spec.get("type")
        if kind not in _RANGE_KEYS:
            raise ValueError(f"tuning range {name!r}: type must be one of {sorted(_RANGE_KEYS)}, not {kind!r}")
        if kind == "categorical":
            entry: dict[str, Any] = {"Name": name, "Values": [str(v) for v in spec["values"]]}
        else:
            entry = {"Name": name, "MinValue": str(spec["min"]), "MaxValue": str(spec["max"]),
                     "ScalingType": spec.get("scaling", "Auto")}
        out.setdefault(_RANGE_KEYS[kind], []).append(entry)
    return out


def _channel(name: str, uri: str, data_type: str = "S3Prefix") -> dict[str, Any]:
    return {
        "ChannelName": name,
        "DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": uri,
                                        "S3DataDistributionType": "FullyReplicated"}},
        "InputMode": "File",
    }


def input_channels(settings: Settings, run_id: str) -> list[dict[str, Any]]:
    """The run's images only (its ManifestFile, not the whole training prefix), and its manifest."""
    return [_channel("training", settings.s3_uri(manifest_file_key(settings, run_id)), "ManifestFile"),
            _channel("manifest", settings.s3_uri(manifest_key(settings, run_id)))]


def _job_resources(settings: Settings, run_id: str, purpose: str, data_bytes: int | None) -> dict[str, Any]:
    """What a tuning trial and the final job share: image, role, data, output, limits, spot."""
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": settings.max_runtime_seconds}
    resources: dict[str, Any] = {
        "RoleArn": settings.sagemaker_role_arn,
        "InputDataConfig": input_channels(settings, run_id),
        "OutputDataConfig": {"S3OutputPath": settings.s3_uri(f"{settings.output_prefix}{purpose}/")},
        "ResourceConfig": {"InstanceType": settings.training_instance_type, "InstanceCount": 1, "VolumeSizeInGB": volume_size_gb(data_bytes)},
        "StoppingCondition": stopping,
        "Environment": dict(SOURCE_ENVIRONMENT),
    }
    if settings.spot_training:
        # Spot capacity can be reclaimed: the job resumes from its checkpoints.
        stopping["MaxWaitTimeInSeconds"] = max(settings.max_wait_seconds, settings.max_runtime_seconds)
        resources["EnableManagedSpotTraining"] = True
        resources["CheckpointConfig"] = {"S3Uri": settings.s3_uri(f"{settings.output_prefix}checkpoints/{run_id}/{purpose}/")}
    return resources


def tuning_job_request(settings: Settings, run_id: str, *, data_bytes: int | None = None) -> dict[str, Any]:
    """`data_bytes`: the manifest's total (None: a run recorded before sizes were kept)."""
    config: dict[str, Any] = {
        "Strategy": settings.tuning_strategy,
        "HyperParameterTuningJobObjective": dict(OBJECTIVE_METRIC),
        "ResourceLimits": {"MaxNumberOfTrainingJobs": settings.max_training_jobs,
                           "MaxParallelTrainingJobs": settings.max_parallel_jobs},
        "ParameterRanges": parameter_ranges(settings.tuning_ranges),
    }
    bounds = hyperband_epochs(settings)
    if bounds:
        config["ParameterRanges"] = parameter_ranges({k: v for k, v in settings.tuning_ranges.items() if k != "epochs"})
        config["StrategyConfig"] = {"HyperbandStrategyConfig": {"MinResource": bounds[0], "MaxResource": bounds[1]}}
    else:  # Hyperband stops trials itself; the API refuses TrainingJobEarlyStoppingType with it.
        config["TrainingJobEarlyStoppingType"] = settings.early_stopping
    definition = {
        # Nobody reads a trial's report or deploys a trial's model (the final job trains the one
        # deployed): trials draw no report, build no optimised model nor drift reference, and leave
        # their model uncompressed.
        "StaticHyperParameters": {**static_hyperparameters(settings), "report": "off", "optimise": "off",
                                  "drift-reference": "off"},
        "AlgorithmSpecification": {"TrainingImage": settings.training_image, "TrainingInputMode": "File",
                                   "MetricDefinitions": [dict(d) for d in METRIC_DEFINITIONS]},
        **_job_resources(settings, run_id, "tuning", data_bytes),
    }
    definition["OutputDataConfig"]["CompressionType"] = "NONE"
    return {
        "HyperParameterTuningJobName": tuning_job_name(settings, run_id),
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "Tags": _tags(run_id, TUNING_ROLE),
    }


def _rule(settings: Settings, name: str) -> dict[str, Any]:
    # The rule container runs the rule named by rule_to_invoke (as the SDK's Rule.sagemaker does).
    parameters = {**settings.debugger_rule_parameters.get(name, {}), "rule_to_invoke": name}
    return {"RuleConfigurationName": name, "RuleEvaluatorImage": settings.rules_image, "RuleParameters": parameters}


def final_training_job_request(settings: Settings, run_id: str, tuned: dict[str, str],
                               live_artifact: str | None = None, *, data_bytes: int | None = None) -> dict[str, Any]:
    """The final job: static + best tuned hyperparameters, with the Debugger rules and the profiler.

    The job evaluates the rules itself and prints each verdict as a metric line (in-job, the
    default); with DEBUGGER_SERVICE=managed, SageMaker's Debugger runs them instead, for accounts
    that still have it. `live_artifact` (the live model's model.tar.gz) becomes the `live`
    channel: the job scores it on its own test split, so the gate compares both models on the
    same images. `data_bytes` as for the tuning job, whose trials get the same resources.
    """
    hyperparameters = {**static_hyperparameters(settings),
                       **{k: str(v) for k, v in tuned.items() if k not in _TUNER_KEYS},
                       "optimised-min-agreement": str(settings.optimised_min_agreement)}
    resources = _job_resources(settings, run_id, "final", data_bytes)
    if live_artifact:
        resources["InputDataConfig"].append(_channel("live", live_artifact))
    definitions = [dict(d) for d in METRIC_DEFINITIONS]
    debugger: dict[str, Any] = {}
    if settings.debugger_service == "managed":
        debugger = _managed_debugger(settings, run_id)
    else:
        hyperparameters |= {
            "debugger-rules": ",".join(settings.debugger_rules),
            "debugger-rule-parameters": format_rule_parameters(
                {rule: settings.debugger_rule_parameters[rule] for rule in settings.debugger_rules
                 if rule in settings.debugger_rule_parameters}),
            "debug-save-interval": str(settings.debug_save_interval),
        }
        definitions += [dict(d) for d in RULE_METRIC_DEFINITIONS if d["Name"].split(":", 1)[1] in settings.debugger_rules]
    return {
        "TrainingJobName": final_job_name(settings, run_id),
        "HyperParameters": hyperparameters,
        "AlgorithmSpecification": {"TrainingImage": settings.training_image, "TrainingInputMode": "File",
                                   "MetricDefinitions": definitions},
        **resources,
        **debugger,
        "Tags": _tags(run_id, FINAL_ROLE),
    }


def _managed_debugger(settings: Settings, run_id: str) -> dict[str, Any]:
    """SageMaker Debugger's hook, rules and profiler, as the managed service runs them."""
    debug_root = settings.s3_uri(f"{settings.output_prefix}debug/{run_id}/")
    return {
        # Weights and gradients every N steps (they are large); losses, which the rules
        # compare step to step, ten times as often.
        "DebugHookConfig": {
            "S3OutputPath": f"{debug_root}tensors/",
            "HookParameters": {"save_interval": str(settings.debug_save_interval)},
            "CollectionConfigurations": [{"CollectionName": "losses", "CollectionParameters": {
                "save_interval": str(max(1, settings.debug_save_interval // 10))}}],
        },
        "DebugRuleConfigurations": [_rule(settings, name) for name in settings.debugger_rules],
        "ProfilerConfig": {"S3OutputPath": f"{debug_root}profiler/", "ProfilingIntervalInMilliseconds": 500},
        "ProfilerRuleConfigurations": [_rule(settings, "ProfilerReport")],
    }


def model_request(settings: Settings, run_id: str, artifact_uri: str) -> dict[str, Any]:
    return {
        "ModelName": model_name(settings, run_id),
        "PrimaryContainer": {
            "Image": settings.inference_image,
            "ModelDataUrl": artifact_uri,
            # As the SDK's PyTorchModel: the handler ships inside model.tar.gz under code/.
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py",
                            "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                            "SAGEMAKER_CONTAINER_LOG_LEVEL": "20",
                            "SAGEMAKER_REGION": settings.region},
        },
        "ExecutionRoleArn": settings.sagemaker_role_arn,
        "Tags": _tags(run_id, FINAL_ROLE),
    }


def endpoint_config_request(settings: Settings, run_id: str) -> dict[str, Any]:
    return {
        "EndpointConfigName": model_name(settings, run_id),
        "ProductionVariants": [{"VariantName": VARIANT_NAME, "ModelName": model_name(settings, run_id),
                                "InitialInstanceCount": 1, "InstanceType": settings.inference_instance_type}],
        "Tags": _tags(run_id, FINAL_ROLE),
    }


def create_endpoint_request(settings: Settings, run_id: str) -> dict[str, Any]:
    return {"EndpointName": settings.endpoint_name, "EndpointConfigName": model_name(settings, run_id),
            "Tags": [{"Key": ROLE_TAG, "Value": "serving"}]}


def update_endpoint_request(settings: Settings, run_id: str) -> dict[str, Any]:
    """Blue/green: the new fleet takes all traffic at once after it is healthy; alarms roll back."""
    deployment: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 300 if settings.rollback_alarms else 0,
        }
    }
    if settings.rollback_alarms:
        deployment["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in settings.rollback_alarms]}
    return {"EndpointName": settings.endpoint_name, "EndpointConfigName": model_name(settings, run_id),
            "DeploymentConfig": deployment}
