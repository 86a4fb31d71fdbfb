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
from chalice_app.events import ENDPOINT_PATTERN, TRAINING_PATTERN, TUNING_PATTERN
from chalice_app.sagemaker_requests import feature_cache_uri
from infra import policies
from infra.package import capabilities, package

ROOT = Path(__file__).resolve().parents[2]
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


def test_the_template_passes_cfn_lint(packaged):
    lint = subprocess.run([str(Path(sys.executable).with_name("cfn-lint")), str(packaged / "sam.json")],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


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
            if e["Type"] == "Schedule"] == ["rate(1 minute)"]

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
    [expiry] = [rule for rule in rules if "ExpirationInDays" in rule]
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    for stage in config["stages"]:
        env = {**policies.stage_env(config, stage), "AWS_DEFAULT_REGION": "us-east-1"}
        settings = settings_from_env({k: v.replace("${AWS::AccountId}", "123456789012") for k, v in env.items()})
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
    assert sorted(n for n in names if n.startswith("training/")) == [
        "training/__init__.py", "training/metrics.py", "training/splits.py"]
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


def test_state_changing_routes_need_iam_on_dev(packaged):
    paths = _template(packaged)["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]
    secured = sorted(f"{method.upper()} {path}" for path, methods in paths.items()
                     for method, operation in methods.items() if operation.get("security") == [{"sigv4": []}])
    assert secured == ["POST /runs", "POST /uploads"]
    assert len([m for methods in paths.values() for m in methods]) == 8


def test_the_readmes_deploy_acknowledges_every_capability_the_template_needs(packaged):
    needed = capabilities(json.loads((packaged / "sam.json").read_text()))
    assert "CAPABILITY_NAMED_IAM" in needed  # the template names its SageMaker role
    readme = (ROOT / "README.md").read_text()
    command = readme[readme.index("aws cloudformation deploy"):].split("\n\n")[0]
    assert all(capability in command for capability in needed), command
