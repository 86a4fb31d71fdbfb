"""`make package`: the merged template passes cfn-lint, and the Lambda zip is complete, torch-free and importable."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from chalice_app.config import settings_from_env
from chalice_app.console_assets import ASSETS
from chalice_app.events import ENDPOINT_PATTERN, TRAINING_PATTERN, TUNING_PATTERN
from chalice_app.sagemaker_requests import (endpoint_config_request, feature_cache_uri, final_training_job_request,
                                            manifest_key, tuning_job_request, update_endpoint_request)
from infra import policies
from infra.package import capabilities, package

from . import iam
from .conftest import CONFIG, ROOT, TEMPLATE

# Its tests share what one packaging run builds: on one xdist worker, it is built once.
pytestmark = pytest.mark.xdist_group("package")

ACCOUNT, REGION = "123456789012", "us-east-1"
RUN = "r270115080000-abcdef"
FORBIDDEN = {"torch", "torchvision", "smdebug", "sagemaker", "numpy", "PIL"}
IMPORT_CHECK = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
started = time.perf_counter()
import app
seconds = time.perf_counter() - started
heavy = sorted(m for m in {forbidden!r} if m in sys.modules)
print(json.dumps({{"seconds": seconds, "heavy": heavy, "handlers": sorted(app.app.handler_map)}}))
"""


@pytest.fixture(scope="session")
def requirements_venv(tmp_path_factory):
    """A fresh venv installing requirements.txt in the background (it overlaps the packaging)."""
    env_dir = tmp_path_factory.mktemp("requirements") / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.Popen([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                "-r", str(ROOT / "requirements.txt")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    yield python, install
    if install.poll() is None:
        install.kill()
        install.wait()


@pytest.fixture(scope="session")
def packaged(requirements_venv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("package") / "dev"
    package("dev", out)
    return out


@pytest.fixture(scope="session")
def stages(packaged, tmp_path_factory) -> dict[str, Path]:
    """Every stage's packaged template (dev's is `packaged`'s)."""
    out = tmp_path_factory.mktemp("stages")
    return {"dev": packaged, **{stage: package(stage, out / stage).parent for stage in ("local", "prod")}}


def _settings(stage: str, **changes: str):
    """The stage's settings in one account (CloudFormation's placeholders filled in)."""
    env = {**policies.stage_env(CONFIG, stage), "AWS_DEFAULT_REGION": REGION, **changes}
    return settings_from_env({k: policies.resolve(v, REGION, ACCOUNT) for k, v in env.items()})


def _cfn(value, stage: str, bucket: str):
    """The template's intrinsics for one stage in ACCOUNT and REGION (the few this test meets)."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"].replace("${DataBucket.Arn}", f"arn:aws:s3:::{bucket}").replace("${Stage}", stage)
        return policies.resolve(text, REGION, ACCOUNT)
    if isinstance(value, dict) and value.get("Fn::GetAtt") == ["DataBucket", "Arn"]:
        return f"arn:aws:s3:::{bucket}"
    if isinstance(value, dict) and value.get("Ref") == "AWS::AccountId":
        return ACCOUNT
    if isinstance(value, dict):
        return {k: _cfn(v, stage, bucket) for k, v in value.items()}
    if isinstance(value, list):
        return [_cfn(v, stage, bucket) for v in value]
    return value


@pytest.fixture(scope="session")
def unzipped(packaged: Path, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("lambda")
    with zipfile.ZipFile(packaged / "deployment.zip") as archive:
        archive.extractall(target)
    return target


def _template(packaged: Path) -> dict:
    return json.loads((packaged / "sam.json").read_text())


def test_make_package_runs_the_packager():
    dry_run = subprocess.run(["make", "-n", "package", "STAGE=prod"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    assert "-m infra.package --stage prod build/package/prod" in dry_run


@pytest.fixture(scope="session")
def cfn_lint_findings(stages) -> dict[str, list[dict]]:
    """cfn-lint's findings, informational checks included, per stage: one run over every template
    (its start, loading its schemas, is most of its time)."""
    templates = {stage: str(folder / "sam.json") for stage, folder in stages.items()}
    lint = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), "--include-checks", "I", "--format", "json",
                           *templates.values()], capture_output=True, text=True)
    assert not lint.returncode & 1, lint.stderr  # its exit code is a bit mask of the levels found; 1 is a crash
    findings = json.loads(lint.stdout or "[]")
    assert {f["Filename"] for f in findings} <= set(templates.values()), findings  # none dropped by the split below
    return {stage: [f for f in findings if f["Filename"] == path] for stage, path in templates.items()}


@pytest.mark.parametrize("stage", ["local", "dev", "prod"])
def test_every_stages_template_passes_cfn_lint_with_its_informational_checks(cfn_lint_findings, stage):
    assert cfn_lint_findings[stage] == []


def test_the_template_wires_queues_events_and_names_together(packaged):
    template = _template(packaged)
    resources = template["Resources"]
    functions = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    for name in ("OnTrainingData", "OnIncomingImage"):
        [source] = functions[name]["Events"].values()
        assert source["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    patterns = [e["Properties"]["Pattern"] for f in functions.values() for e in f.get("Events", {}).values()
                if e["Type"] == "CloudWatchEvent"]
    assert sorted(map(json.dumps, patterns)) == sorted(map(json.dumps, [TUNING_PATTERN, TRAINING_PATTERN,
                                                                         ENDPOINT_PATTERN]))
    assert [e["Properties"]["Schedule"] for f in functions.values() for e in f.get("Events", {}).values()
            if e["Type"] == "Schedule"] == ["rate(1 minute)"] * 2  # quiet_check and drift_check

    def named(logical: str, key: str) -> str:
        return resources[logical]["Properties"][key]["Fn::Sub"].replace("${Stage}", "dev")

    env = functions["OnTrainingData"]["Environment"]["Variables"]
    assert env["BUCKET"] == {"Fn::Sub": named("DataBucket", "BucketName")}
    assert env["PIPELINE_TABLE"] == named("PipelineTable", "TableName")
    assert env["PREDICTIONS_TABLE"] == named("PredictionsTable", "TableName")
    assert env["TRAINING_QUEUE"] == named("TrainingDataQueue", "QueueName")
    assert env["INCOMING_QUEUE"] == named("IncomingQueue", "QueueName")
    assert env["SAGEMAKER_ROLE_ARN"]["Fn::Sub"].endswith("role/" + named("SageMakerRole", "RoleName"))
    queue_arn = functions["OnTrainingData"]["Events"]["OnTrainingDataSqsEventSource"]["Properties"]["Queue"]["Fn::Sub"]
    assert queue_arn.endswith(":" + env["TRAINING_QUEUE"])
    assert template["Parameters"]["Stage"]["Default"] == "dev"


def test_the_feature_cache_expires_where_the_app_writes_it(packaged):
    """Trunk features are a cache (a miss recomputes them): they expire rather than grow the bucket forever."""
    rules = _template(packaged)["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [expiry] = [rule for rule in rules if rule["Id"] == "expire-trunk-feature-cache"]
    for stage in CONFIG["stages"]:
        settings = _settings(stage)
        assert feature_cache_uri(settings) == f"s3://{settings.bucket}/{expiry['Prefix']}", stage
    assert expiry["Status"] == "Enabled" and expiry["ExpirationInDays"] >= 7


def test_the_committed_policies_are_the_generated_ones():
    for path, text in policies.render_all().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m infra.policies"
    statements = json.loads((ROOT / ".chalice" / "policy-prod.json").read_text())["Statement"]
    assert all("*" not in s["Action"] for s in statements), "actions are named, never wildcards"
    [pass_role] = [s for s in statements if "iam:PassRole" in s["Action"]]
    assert pass_role["Resource"].endswith(":role/image-pipeline-prod-sagemaker")


def test_the_zip_holds_the_app_and_only_the_pure_training_modules(packaged):
    names = zipfile.ZipFile(packaged / "deployment.zip").namelist()
    assert "app.py" in names
    ours = {p.relative_to(ROOT).as_posix() for p in (ROOT / "chalice_app").rglob("*.py")}
    assert ours <= set(names)
    # The console's static files, served from the package (vendor/chalice_app is chalice_app).
    assert {f"chalice_app/console/{name}" for name in ASSETS} <= set(names)
    # Exactly what vendor/training holds (tests/app/test_lambda_imports.py says which modules those are).
    assert sorted(n for n in names if n.startswith("training/")) == sorted(
        f"training/{p.name}" for p in (ROOT / "vendor" / "training").iterdir())
    assert not {n.split("/")[0] for n in names} & FORBIDDEN


def test_the_zip_imports_on_its_own_without_torch(unzipped):
    # -I -S: no site-packages and no repository on the path, only the standard library and the zip.
    result = subprocess.run([sys.executable, "-I", "-S", "-c", IMPORT_CHECK.format(forbidden=FORBIDDEN),
                             str(unzipped)], capture_output=True, text=True, cwd=unzipped)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["heavy"] == [] and "on_training_data" in report["handlers"]


def test_the_app_imports_with_only_requirements_txt_installed(requirements_venv, unzipped, tmp_path):
    """A fresh venv with requirements.txt, and from the zip only our code and Chalice's runtime."""
    python, install = requirements_venv
    _, errors = install.communicate(timeout=600)
    if install.returncode != 0:
        if any(s in errors for s in ("Could not find a version", "NewConnectionError", "Network is unreachable",
                                     "Temporary failure in name resolution")):
            pytest.skip(f"pip cannot reach a package registry: {errors.strip().splitlines()[-1]}")
        pytest.fail(errors)
    code = tmp_path / "code"
    code.mkdir()
    for name in ("app.py", "chalice_app", "training", "chalice"):
        subprocess.run(["cp", "-r", str(unzipped / name), str(code)], check=True)
    result = subprocess.run([str(python), "-s", "-c", IMPORT_CHECK.format(forbidden=FORBIDDEN), str(code)],
                            capture_output=True, text=True, cwd=code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["heavy"] == []


OPEN_ROUTES = {"GET /console", "GET /console/{name}", "GET /sign-in"}  # a browser loads them before signing in


def _operations(template: dict) -> dict[str, dict]:
    paths = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    return {f"{method.upper()} {path}": operation for path, methods in paths.items()
            for method, operation in methods.items()}


@pytest.mark.parametrize("stage, secured", [("dev", True), ("prod", True), ("local", False)])
def test_every_data_route_needs_the_stages_user_pool_token_on_dev_and_prod(stages, stage, secured):
    """The reads expose predictions, S3 URIs and hyperparameters: every data route, every method,
    takes the ID token of the stage's own user pool; the console's files and how to sign in are open."""
    template = _template(stages[stage])
    operations = _operations(template)
    assert len(operations) == 15 and {"GET /predictions", "GET /runs/{run_id}", "POST /runs", "GET /review",
                                      "POST /review/{name}", "GET /runs/{run_id}/report", "GET /drift"} <= set(operations)
    assert OPEN_ROUTES <= set(operations)
    secured_ones = {name for name, op in operations.items() if op.get("security") == [{"ConsoleUsers": []}]}
    assert secured_ones == (set(operations) - OPEN_ROUTES if secured else set())
    assert not [name for name, op in operations.items() if op.get("security") not in (None, [{"ConsoleUsers": []}])]
    definitions = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"].get("securityDefinitions", {})
    if secured:
        authorizer = definitions["ConsoleUsers"]["x-amazon-apigateway-authorizer"]
        assert authorizer == {"type": "cognito_user_pools", "providerARNs": [{"Fn::Sub": "${ConsoleUserPool.Arn}"}]}
    else:
        assert definitions == {} and "ConsoleUserPool" not in template["Resources"]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_user_pool_admits_only_admin_created_users_through_the_consoles_own_url(stages, stage):
    resources = _template(stages[stage])["Resources"]
    pool = resources["ConsoleUserPool"]
    assert pool["Properties"]["AdminCreateUserConfig"] == {"AllowAdminCreateUserOnly": True}
    assert pool["DeletionPolicy"] == "Delete"  # a kept pool would hold its users where a new stack cannot find them
    client = resources["ConsoleUserPoolClient"]["Properties"]
    console = {"Fn::Sub": "https://${RestAPI}.execute-api.${AWS::Region}.${AWS::URLSuffix}/api/console"}
    assert client["CallbackURLs"] == [console] and client["LogoutURLs"] == [console]
    assert client["AllowedOAuthFlows"] == ["code"] and client["GenerateSecret"] is False  # PKCE, a public client
    # The functions find the client by this name, and the hosted UI at the stage's COGNITO_DOMAIN.
    env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert client["ClientName"] == f"{env['NAME_PREFIX']}-console"
    domain = resources["ConsoleUserPoolDomain"]["Properties"]["Domain"]["Fn::Sub"]
    assert env["COGNITO_DOMAIN"] == {"Fn::Sub": f"{domain}.auth.${{AWS::Region}}.amazoncognito.com"}
    assert env["COGNITO_USER_POOL_ID"] == {"Fn::Sub": "${ConsoleUserPool}"}
    policy = json.dumps(_role_statements(_template(stages[stage])))
    assert '"arn:aws:cognito-idp:${AWS::Region}:${AWS::AccountId}:userpool/${ConsoleUserPool}"' in policy


def test_the_readmes_deploy_acknowledges_every_capability_the_template_needs(packaged):
    needed = capabilities(json.loads((packaged / "sam.json").read_text()))
    assert "CAPABILITY_NAMED_IAM" in needed  # the template names its SageMaker role
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to AWS"):].split("\n## ")[0]
    assert all(capability in section for capability in needed), section


def _role_statements(template: dict) -> list[dict]:
    roles = [r for r in template["Resources"].values()
             if r["Type"] == "AWS::IAM::Role" and "lambda.amazonaws.com" in json.dumps(r["Properties"]["AssumeRolePolicyDocument"])]
    assert roles
    return [statement for role in roles for policy in role["Properties"]["Policies"]
            for statement in policy["PolicyDocument"]["Statement"]]


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_the_lambda_policy_names_this_account_and_region(stages, stage):
    """No ARN of the packaged policy leaves the account (or, where it has one, the region) to a wildcard."""
    for statement in _role_statements(_template(stages[stage])):
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for resource in resources:
            if resource == "*":  # only for services whose actions take no resource-level permission
                assert {action.split(":")[0] for action in statement["Action"]} <= {"xray", "application-autoscaling"}
                continue
            arn = resource["Fn::Sub"].replace("${AWS::AccountId}", "ACCOUNT").replace("${AWS::Region}", "REGION").split(":")
            assert "ACCOUNT" in arn[5] if arn[2] == "s3" else arn[4] == "ACCOUNT", resource
            if arn[2] not in ("s3", "iam"):
                assert arn[3] == "REGION", resource


def test_the_data_outlives_the_stack():
    """A deleted or replaced stack keeps the bucket and the tables; the queues are transport, but
    explicitly so, and a message lives longer in a dead-letter queue than in its source (SQS keeps
    its first enqueue time when it moves it)."""
    resources = TEMPLATE["Resources"]
    for logical in ("DataBucket", "PipelineTable", "PredictionsTable"):
        assert resources[logical]["DeletionPolicy"] == resources[logical]["UpdateReplacePolicy"] == "Retain", logical
    for resource in resources.values():
        if resource.get("Type") == "AWS::SQS::Queue" and "RedrivePolicy" in resource["Properties"]:
            dlq = resources[resource["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]]
            assert dlq["Properties"]["MessageRetentionPeriod"] > resource["Properties"]["MessageRetentionPeriod"]


def test_the_template_creates_the_alarms_the_rollback_names(stages):
    for stage in ("dev", "prod"):
        template, settings = _template(stages[stage]), _settings(stage)
        alarms = {_cfn(r["Properties"]["AlarmName"], stage, settings.bucket): r["Properties"]
                  for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"}
        [variant] = endpoint_config_request(settings, RUN)["ProductionVariants"]
        assert settings.rollback_alarms and set(settings.rollback_alarms) <= set(alarms), stage
        metrics = set()
        for name in settings.rollback_alarms:  # the endpoint's own metrics, on the variant the deployment makes
            alarm = alarms[name]
            dimensions = {d["Name"]: _cfn(d["Value"], stage, settings.bucket) for d in alarm["Dimensions"]}
            assert alarm["Namespace"] == "AWS/SageMaker" and dimensions == {
                "EndpointName": settings.endpoint_name, "VariantName": variant["VariantName"]}, name
            metrics.add(alarm["MetricName"])
        assert metrics == {"Invocation5XXErrors", "ModelLatency"}
        # The caller of UpdateEndpoint may describe them (SageMaker refuses the update otherwise).
        policy = json.dumps(policies.resolve(policies.policy(policies.stage_env(CONFIG, stage)), REGION, ACCOUNT))
        request = update_endpoint_request(settings, RUN)
        assert [c for c in iam.checks("sagemaker", "UpdateEndpoint", request, REGION, ACCOUNT)
                if c[0] == "cloudwatch:DescribeAlarms"]
        assert iam.denial(policy.replace(settings.bucket, "x"), "sagemaker", "UpdateEndpoint", request, REGION,
                          ACCOUNT) is None


def test_every_dead_letter_queue_and_function_is_watched(packaged):
    resources = _template(packaged)["Resources"]
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    # A queue no function consumes holds what failed: a dead-letter queue or a failure destination.
    consumed = {e["Properties"]["Queue"]["Fn::Sub"].rsplit(":", 1)[1] for r in resources.values()
                if r["Type"] == "AWS::Serverless::Function" for e in r["Properties"].get("Events", {}).values()
                if e["Type"] == "SQS"}
    watched = {d["Value"]["Fn::GetAtt"][0] for a in alarms if a.get("MetricName") == "ApproximateNumberOfMessagesVisible"
               and a["Threshold"] == 0 for d in a["Dimensions"]}
    unconsumed = {name for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"
                  and _cfn(r["Properties"]["QueueName"], "dev", "") not in consumed}
    assert unconsumed and unconsumed <= watched, unconsumed - watched
    [errors] = [a for a in alarms if any("Expression" in m for m in a.get("Metrics", []))]
    functions = {name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}
    assert {m["MetricStat"]["Metric"]["Dimensions"][0]["Value"]["Ref"] for m in errors["Metrics"]
            if "MetricStat" in m} == functions


def test_lifecycle_expires_what_runs_leave_behind_and_never_data_or_models(packaged):
    rules = _template(packaged)["Resources"]["DataBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = [rule["Prefix"] for rule in rules if "ExpirationInDays" in rule]
    assert all(rule["Status"] == "Enabled" and rule["ExpirationInDays"] >= 7 for rule in rules if "ExpirationInDays" in rule)
    settings = _settings("dev", SPOT_TRAINING="true", DEBUGGER_SERVICE="managed")
    tuning = tuning_job_request(settings, RUN)["TrainingJobDefinition"]
    final = final_training_job_request(settings, RUN, {"lr": "0.1"}, None)

    def expires(uri: str) -> bool:
        key = uri.split("/", 3)[3] if uri.startswith("s3://") else uri
        return any(key.startswith(prefix) for prefix in expiring)

    # Tuning trials' models (never deployed), checkpoints, Debugger and profiler output, manifests.
    for uri in (tuning["OutputDataConfig"]["S3OutputPath"], tuning["CheckpointConfig"]["S3Uri"],
                final["CheckpointConfig"]["S3Uri"], final["DebugHookConfig"]["S3OutputPath"],
                final["ProfilerConfig"]["S3OutputPath"], manifest_key(settings, RUN)):
        assert expires(uri), uri
    # The final job's model.tar.gz is what the registry deploys and rolls back to.
    model = final["OutputDataConfig"]["S3OutputPath"] + f"ip-dev-{RUN}-final/output/model.tar.gz"
    for uri in (model, settings.source_dir_uri, f"{settings.training_prefix}cat/1.png", f"{settings.incoming_prefix}1.png"):
        assert not expires(uri), uri


def test_the_sagemaker_role_is_for_this_accounts_sagemaker_and_this_buckets_prefixes(packaged, monkeypatch):
    iam.enable_string_like(monkeypatch)
    settings = _settings("dev", SPOT_TRAINING="true", DEBUGGER_SERVICE="managed")
    role = _template(packaged)["Resources"]["SageMakerRole"]["Properties"]
    [trust] = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    [document] = [_cfn(p["PolicyDocument"], "dev", settings.bucket) for p in role["Policies"]]
    evaluator = iam.IAMPolicy(json.dumps(document))

    def allowed(action: str, key: str, bucket: str = settings.bucket) -> bool:
        if action == "s3:ListBucket":
            return evaluator.is_action_permitted(action, f"arn:aws:s3:::{bucket}", None, {"s3:prefix": key}) == \
                iam.PermissionResult.PERMITTED
        return evaluator.is_action_permitted(action, f"arn:aws:s3:::{bucket}/{key}", None, {}) == \
            iam.PermissionResult.PERMITTED

    def key(uri: str) -> str:
        return uri.strip('"').split("/", 3)[3]

    tuning = tuning_job_request(settings, RUN)["TrainingJobDefinition"]
    live = f"s3://{settings.bucket}/sagemaker/final/ip-dev-r1-final/output/model.tar.gz"
    final = final_training_job_request(settings, RUN, {"lr": "0.1"}, live)
    reads = [key(c["DataSource"]["S3DataSource"]["S3Uri"]) for c in tuning["InputDataConfig"] + final["InputDataConfig"]]
    reads += [f"{settings.training_prefix}cat/1.png"]
    for read in reads:  # the channels (listed in File mode), the images a manifest names, the live model
        assert allowed("s3:GetObject", read) and allowed("s3:ListBucket", read), read
    assert allowed("s3:GetObject", key(final["HyperParameters"]["sagemaker_submit_directory"]))
    writes = [key(final["OutputDataConfig"]["S3OutputPath"]), key(tuning["OutputDataConfig"]["S3OutputPath"]),
              key(final["DebugHookConfig"]["S3OutputPath"]), key(final["ProfilerConfig"]["S3OutputPath"])]
    for write in writes:
        assert allowed("s3:PutObject", write + "x"), write
    for both in (key(final["CheckpointConfig"]["S3Uri"]), key(final["HyperParameters"]["feature-cache"])):
        assert all(allowed(a, both + "x") for a in ("s3:GetObject", "s3:PutObject", "s3:ListBucket")), both
    # Nothing broader: not the incoming images, no writes to the data or the code, no other bucket.
    assert not allowed("s3:GetObject", f"{settings.incoming_prefix}x.png")
    assert not allowed("s3:ListBucket", settings.incoming_prefix) and not allowed("s3:ListBucket", "")
    assert not allowed("s3:PutObject", f"{settings.training_prefix}x.png") and not allowed("s3:PutObject", "code/x")
    assert not allowed("s3:GetObject", reads[0], bucket="someone-elses-bucket")


@pytest.mark.parametrize(("stage", "incoming"), [("local", 2), ("dev", 4), ("prod", 8)])
def test_both_queues_cap_their_lambda_concurrency_and_incoming_follows_the_endpoint(stages, stage, incoming):
    from chalice_app.scaling import REQUESTS_PER_INSTANCE, TRAINING_DATA_CONCURRENCY

    resources = _template(stages[stage])["Resources"]
    caps = {name: source["Properties"].get("ScalingConfig")
            for name in ("OnTrainingData", "OnIncomingImage")
            for source in resources[name]["Properties"]["Events"].values()}
    assert caps["OnTrainingData"] == {"MaximumConcurrency": TRAINING_DATA_CONCURRENCY}
    # Two concurrent requests per instance the endpoint may scale to (ENDPOINT_MAX_INSTANCES), at least 2.
    assert caps["OnIncomingImage"] == {"MaximumConcurrency": incoming}
    assert incoming == max(2, REQUESTS_PER_INSTANCE * _settings(stage).endpoint_max_instances)


def test_every_eventbridge_triggered_function_keeps_the_events_it_fails_on(packaged):
    """Lambda retries an async (EventBridge) event twice, then drops it: each such function sends it
    to the failure queue instead, with its own role, which must allow that."""
    resources = _template(packaged)["Resources"]
    triggered = sorted(name for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function" and any(
        e["Type"] in ("CloudWatchEvent", "Schedule") for e in r["Properties"].get("Events", {}).values()))
    assert triggered == ["DriftCheck", "OnEndpointState", "OnTrainingState", "OnTuningState", "QuietCheck"]
    configs = {r["Properties"]["FunctionName"]["Ref"]: r["Properties"] for r in resources.values()
               if r["Type"] == "AWS::Lambda::EventInvokeConfig"}
    assert sorted(configs) == triggered
    queue = resources["FailedEventsQueue"]["Properties"]
    assert queue["MessageRetentionPeriod"] == 14 * 86400  # SQS's longest
    queue_url = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{_cfn(queue['QueueName'], 'dev', '')}"
    for function, config in configs.items():
        assert config["Qualifier"] == "$LATEST" and config["MaximumRetryAttempts"] == 2
        assert config["DestinationConfig"]["OnFailure"]["Destination"] == {"Fn::GetAtt": ["FailedEventsQueue", "Arn"]}
        role = resources[resources[function]["Properties"]["Role"]["Fn::GetAtt"][0]]["Properties"]
        [policy] = [_cfn(p["PolicyDocument"], "dev", "") for p in role["Policies"]]
        assert iam.denial(json.dumps(policy), "sqs", "SendMessage", {"QueueUrl": queue_url, "MessageBody": "{}"},
                          REGION, ACCOUNT) is None, function
