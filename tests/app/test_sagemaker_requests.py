"""Every SageMaker request the app builds, validated against botocore's service model."""

from __future__ import annotations

import json
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

from chalice_app import sagemaker_requests as requests
from chalice_app.config import DEFAULT_TUNING_RANGES, ConfigError, settings_from_env
from training import metrics
from training.metrics import DEBUGGER_RULES, METRIC_DEFINITIONS, epoch_line, parse_metrics

from .conftest import CONFIG, ENV

MODEL = botocore.session.get_session().get_service_model("sagemaker")
RUN = "r270115080000-a1b2c3"


def validate(operation: str, request: dict) -> None:
    report = ParamValidator().validate(request, MODEL.operation_model(operation).input_shape)
    assert not report.has_errors(), report.generate_report()


def config(**overrides: str):
    return settings_from_env({**ENV, **overrides})


def all_requests(settings) -> dict[str, dict]:
    return {
        "CreateHyperParameterTuningJob": requests.tuning_job_request(settings, RUN),
        "CreateTrainingJob": requests.final_training_job_request(settings, RUN, {"lr": "0.01", "batch-size": "64"}),
        "CreateModel": requests.model_request(settings, RUN, "s3://b/sagemaker/final/x/output/model.tar.gz"),
        "CreateEndpointConfig": requests.endpoint_config_request(settings, RUN),
        "CreateEndpoint": requests.create_endpoint_request(settings, RUN),
        "UpdateEndpoint": requests.update_endpoint_request(settings, RUN),
    }


@pytest.mark.parametrize("overrides", [
    {},
    {"SPOT_TRAINING": "true", "TUNING_STRATEGY": "Hyperband", "ROLLBACK_ALARMS": json.dumps(["5xx", "latency"])},
    {"TUNING_STRATEGY": "Random", "EARLY_STOPPING": "Off",
     "TUNING_RANGES": json.dumps({"lr": {"type": "continuous", "min": 0.01, "max": 0.1, "scaling": "Logarithmic"}})},
])
def test_every_request_matches_the_service_model(overrides):
    for operation, request in all_requests(config(**overrides)).items():
        validate(operation, request)


def test_names_fit_sagemakers_limits_and_lead_back_to_the_run():
    settings = config()
    name = requests.tuning_job_name(settings, RUN)
    assert len(name) <= 32 and re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,31}", name)
    assert requests.run_id_from_job_name(settings, name) == RUN
    assert requests.run_id_from_job_name(settings, requests.final_job_name(settings, RUN)) == RUN
    assert requests.run_id_from_job_name(settings, "someone-else") is None
    with pytest.raises(ConfigError, match="longer than 11"):
        config(NAME_PREFIX="a-very-long-prefix")


def test_tuning_uses_the_seed_ranges_the_objective_and_the_metric_regexes():
    request = requests.tuning_job_request(config(), RUN)
    job = request["HyperParameterTuningJobConfig"]
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "valid:accuracy"}
    assert job["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = job["ParameterRanges"]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128", "256"]}]
    [lr] = [r for r in ranges["ContinuousParameterRanges"] if r["Name"] == "lr"]
    assert (lr["MinValue"], lr["MaxValue"], lr["ScalingType"]) == ("0.001", "0.1", "Logarithmic")
    assert set(DEFAULT_TUNING_RANGES) == {r["Name"] for kind in ranges.values() for r in kind}
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    found = parse_metrics("\n".join([epoch_line(1, 1.5, 1.2, 0.61), metrics.test_line(0.9, 0.875)]),
                          definition["AlgorithmSpecification"]["MetricDefinitions"])
    assert found["valid:accuracy"] == [0.61] and found["test:accuracy"] == [0.875]
    static = definition["StaticHyperParameters"]
    assert static["sagemaker_program"] == '"training/train.py"'
    assert static["sagemaker_submit_directory"] == json.dumps(ENV["SOURCE_DIR_URI"])
    # The trials share the frozen trunk's features under the prefix the SageMaker role writes.
    assert static["feature-cache"] == f"s3://{ENV['BUCKET']}/sagemaker/trunk-features/"
    # Trials draw no report and leave their models uncompressed; the final job does both (below).
    assert static["report"] == "off" and definition["OutputDataConfig"]["CompressionType"] == "NONE"
    assert static["optimise"] == "off"  # nor an optimised model: only the final job's is deployed
    assert static["drift-reference"] == "off"  # nor a drift reference: only the final job's model is watched
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in definition["InputDataConfig"]}
    # The run's images only, through its ManifestFile; its labels and splits in the manifest channel.
    assert channels["training"]["S3DataType"] == "ManifestFile"
    assert channels["training"]["S3Uri"] == f"s3://{ENV['BUCKET']}/manifests/{RUN}.manifest"
    assert channels["manifest"]["S3DataType"] == "S3Prefix"
    assert channels["manifest"]["S3Uri"] == f"s3://{ENV['BUCKET']}/manifests/{RUN}.jsonl"
    # The manifest channel's prefix is the .jsonl's key: it must not take in the ManifestFile too.
    assert not requests.manifest_file_key(config(), RUN).startswith(requests.manifest_key(config(), RUN))


@pytest.mark.parametrize(("data_bytes", "volume"), [(0, 5), (1, 6), (2**30, 7), (int(10.2 * 2**30), 26), (None, 30)])
def test_the_jobs_volume_is_sized_from_the_run_s_data(data_bytes, volume):
    tuning = requests.tuning_job_request(config(), RUN, data_bytes=data_bytes)
    final = requests.final_training_job_request(config(), RUN, {}, data_bytes=data_bytes)
    assert tuning["TrainingJobDefinition"]["ResourceConfig"]["VolumeSizeInGB"] == volume
    assert final["ResourceConfig"] == tuning["TrainingJobDefinition"]["ResourceConfig"]
    validate("CreateTrainingJob", final)


def test_the_run_s_manifests_are_its_labels_and_sagemaker_s_manifest_file_of_its_images():
    from chalice_app import manifest

    entries = manifest.build([("training-data/dog/2.png", '"e2"', 20), ("training-data/cat/1.png", '"e1"', 10),
                              ("training-data/train/cat/3.png", '"e3"', 30)], "training-data/")
    puts = {put["Key"]: put for put in requests.manifest_puts(config(), RUN, entries)}
    assert set(puts) == {f"manifests/{RUN}.jsonl", f"manifests/{RUN}.manifest"}
    assert json.loads(puts[f"manifests/{RUN}.manifest"]["Body"]) == [
        {"prefix": f"s3://{ENV['BUCKET']}/training-data/"}, "cat/1.png", "dog/2.png", "train/cat/3.png"]
    lines = [json.loads(line) for line in puts[f"manifests/{RUN}.jsonl"]["Body"].splitlines()]
    assert [(e["key"], e["size"]) for e in lines] == [(e.key, e.size) for e in entries]
    assert manifest.total_bytes(entries) == 60


def test_the_final_job_evaluates_its_debugger_rules_itself_and_reports_them_as_metrics():
    request = requests.final_training_job_request(config(), RUN, {"lr": "0.05", "_tuning_objective_metric": "x"})
    validate("CreateTrainingJob", request)
    hyperparameters = request["HyperParameters"]
    assert hyperparameters["lr"] == "0.05" and "_tuning_objective_metric" not in hyperparameters
    assert hyperparameters["feature-cache"] == f"s3://{ENV['BUCKET']}/sagemaker/trunk-features/"
    assert "report" not in hyperparameters and "CompressionType" not in request["OutputDataConfig"]
    # The final job builds the optimised model, kept at the stage's agreement threshold (DEFAULT_MIN_AGREEMENT).
    assert "optimise" not in hyperparameters and hyperparameters["optimised-min-agreement"] == "0.995"
    assert "drift-reference" not in hyperparameters  # on by default: the final job writes the drift reference
    assert {"optimised:agreement", "optimised:latency_ms", "eager:latency_ms"} <= {
        d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert hyperparameters["debugger-rules"] == ",".join(DEBUGGER_RULES)
    assert hyperparameters["debug-save-interval"] == "100" and hyperparameters["debugger-rule-parameters"] == ""
    # Nothing of the managed Debugger, closed to new accounts: the job's metric lines carry the verdicts.
    assert not {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerConfig", "ProfilerRuleConfigurations"} & set(request)
    definitions = {d["Name"]: d["Regex"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]}
    for rule in DEBUGGER_RULES:
        assert re.search(definitions[f"rule:{rule}"], metrics.rule_line(rule, "IssuesFound")).group(1) == "1"
    # smdebug from the source's requirements.txt, on the image's protobuf (training/requirements.txt).
    assert request["Environment"] == {"PIP_NO_DEPS": "true", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
    assert {"Key": "pipeline-role", "Value": "final"} in request["Tags"]
    assert {"Key": "pipeline-run", "Value": RUN} in request["Tags"]


def test_rule_parameters_reach_the_script_through_the_toolkits_hyperparameter_decoding():
    settings = config(DEBUGGER_RULES="VanishingGradient, Overfit", DEBUG_SAVE_INTERVAL="50",
                      DEBUGGER_RULE_PARAMETERS='{"Overfit": {"patience": 3, "ratio_threshold": "0.5"}}')
    value = requests.final_training_job_request(settings, RUN, {})["HyperParameters"]["debugger-rule-parameters"]
    # The toolkit JSON-decodes each value and passes a mapping as "k=v,..." of its top level alone:
    # the value must not be JSON, and must parse back to the stage's parameters.
    with pytest.raises(ValueError):
        json.loads(value)
    assert metrics.parse_rule_parameters(value) == {"Overfit": {"patience": "3", "ratio_threshold": "0.5"}}


def test_the_managed_debugger_is_a_stage_option_with_rules_profiler_and_hook():
    settings = config(DEBUGGER_SERVICE="managed", DEBUGGER_RULES="VanishingGradient, Overfit", DEBUG_SAVE_INTERVAL="50",
                      DEBUGGER_RULE_PARAMETERS='{"Overfit": {"patience": 3, "ratio_threshold": "0.5"}}')
    request = requests.final_training_job_request(settings, RUN, {})
    validate("CreateTrainingJob", request)
    assert "debugger-rules" not in request["HyperParameters"]
    assert [r["RuleParameters"] for r in request["DebugRuleConfigurations"]] == [
        {"rule_to_invoke": "VanishingGradient"},
        {"patience": "3", "ratio_threshold": "0.5", "rule_to_invoke": "Overfit"}]
    assert {r["RuleEvaluatorImage"] for r in request["DebugRuleConfigurations"]} == {ENV["DEBUGGER_RULES_IMAGE"]}
    hook = request["DebugHookConfig"]
    assert hook["HookParameters"] == {"save_interval": "50"}
    assert hook["CollectionConfigurations"] == [{"CollectionName": "losses", "CollectionParameters": {"save_interval": "5"}}]
    assert request["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    assert request["ProfilerRuleConfigurations"][0]["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}
    with pytest.raises(ConfigError, match="unknown rules"):
        config(DEBUGGER_RULES="VanishingGradient,Overfitting")
    with pytest.raises(ConfigError, match="DEBUGGER_SERVICE"):
        config(DEBUGGER_SERVICE="service")
    with pytest.raises(ConfigError, match="DEBUGGER_RULE_POLICY"):
        config(DEBUGGER_RULE_POLICY='{"Overfit": "ignore"}')


def test_spot_training_checkpoints_and_waits_longer_than_it_runs():
    request = requests.final_training_job_request(config(SPOT_TRAINING="true", MAX_RUNTIME_SECONDS="1800",
                                                         MAX_WAIT_SECONDS="600"), RUN, {})
    assert request["EnableManagedSpotTraining"] is True
    assert request["CheckpointConfig"]["S3Uri"].endswith(f"/checkpoints/{RUN}/final/")
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 1800, "MaxWaitTimeInSeconds": 1800}
    assert "EnableManagedSpotTraining" not in requests.final_training_job_request(config(), RUN, {})


def test_hyperband_gives_the_trials_their_epochs_itself():
    from local_aws.sagemaker.tuning import make_plan  # the local SageMaker validates as SageMaker does

    request = requests.tuning_job_request(config(TUNING_STRATEGY="Hyperband"), RUN)
    validate("CreateHyperParameterTuningJob", request)
    job = request["HyperParameterTuningJobConfig"]
    assert "TrainingJobEarlyStoppingType" not in job
    # The default ranges tune epochs 2-5: they become Hyperband's resource bounds, not a tuned range.
    assert job["StrategyConfig"] == {"HyperbandStrategyConfig": {"MinResource": 2, "MaxResource": 5}}
    assert "epochs" not in {r["Name"] for ranges in job["ParameterRanges"].values() for r in ranges}
    assert request["TrainingJobDefinition"]["StaticHyperParameters"]["epochs"] == "5"
    assert make_plan(request).hyperband == (2, 5)
    fixed = requests.tuning_job_request(config(TUNING_STRATEGY="Hyperband", TUNING_RANGES='{"lr": {"type": '
                                               '"continuous", "min": 0.01, "max": 0.1}}',
                                               STATIC_HYPERPARAMETERS='{"epochs": "8"}'), RUN)
    assert fixed["HyperParameterTuningJobConfig"]["StrategyConfig"]["HyperbandStrategyConfig"] == {
        "MinResource": 1, "MaxResource": 8}
    final = requests.final_training_job_request(config(TUNING_STRATEGY="Hyperband"), RUN, {"lr": "0.05"})
    assert final["HyperParameters"]["epochs"] == "5"


def test_updates_roll_back_on_alarms_only_when_alarms_are_configured():
    plain = requests.update_endpoint_request(config(), RUN)["DeploymentConfig"]
    assert "AutoRollbackConfiguration" not in plain and "BlueGreenUpdatePolicy" in plain
    guarded = requests.update_endpoint_request(config(ROLLBACK_ALARMS='["5xx"]'), RUN)["DeploymentConfig"]
    assert guarded["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "5xx"}]}


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ConfigError, match="TUNING_RANGES is not valid JSON"):
        config(TUNING_RANGES="{lr: 1")
    with pytest.raises(ValueError, match="type must be one of"):
        requests.tuning_job_request(config(TUNING_RANGES='{"lr": {"type": "uniform"}}'), RUN)
    env = dict(ENV)
    del env["BUCKET"]
    with pytest.raises(ConfigError, match="BUCKET is not set"):
        settings_from_env(env)


@pytest.mark.parametrize("stage", ["local", "dev", "prod"])
def test_the_local_sagemaker_accepts_every_stages_tuning_request(stage):
    """The project's local SageMaker plans the search from our request as AWS would (no job is run)."""
    tuning = pytest.importorskip("local_aws.sagemaker.tuning")
    training = pytest.importorskip("local_aws.sagemaker.training_jobs")
    from infra.policies import stage_env

    env = {k: v.replace("${AWS::AccountId}", "123456789012") for k, v in stage_env(CONFIG, stage).items()}
    settings = settings_from_env(env)
    plan = tuning.make_plan(requests.tuning_job_request(settings, RUN))
    assert plan.metric_name == "valid:accuracy" and plan.maximize and plan.max_jobs == settings.max_training_jobs
    assert set(plan.distributions) == set(settings.tuning_ranges)
    hyperparameters = training.decode_hyperparameters(
        requests.final_training_job_request(settings, RUN, {"lr": "0.05"})["HyperParameters"])
    assert hyperparameters["sagemaker_program"] == "training/train.py"
    assert hyperparameters["sagemaker_submit_directory"] == settings.source_dir_uri


def test_the_live_model_becomes_the_final_job_s_live_channel():
    artifact = f"s3://{ENV['BUCKET']}/sagemaker/final/ip-test-r1-final/output/model.tar.gz"
    request = requests.final_training_job_request(config(), RUN, {}, live_artifact=artifact)
    validate("CreateTrainingJob", request)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels["live"] == artifact and set(channels) == {"training", "manifest", "live"}
    tuning = requests.tuning_job_request(config(), RUN)["TrainingJobDefinition"]["InputDataConfig"]
    assert "live" not in {c["ChannelName"] for c in tuning}
