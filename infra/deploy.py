"""`make deploy STAGE=dev`: the stage to AWS in one command.

    python -m infra.deploy --stage dev [--region eu-west-1] [--dry-run] [--out build/deploy/dev]

1. the region (--region, else AWS_REGION / AWS_DEFAULT_REGION, else the stage's
   AWS_DEFAULT_REGION, else us-east-1) and the account (STS GetCallerIdentity);
2. the region's training, inference and Debugger rules images (infra.images);
3. `chalice package` with those images (infra.package) into the out directory;
4. a private, encrypted artifacts bucket (created if missing) holding the Lambda zip
   (the template's CodeUri) and the template when it exceeds TemplateBody's limit;
5. the stack created or updated through a change set (an empty one is success);
6. the training source (infra.sourcedir) at the stage's SOURCE_DIR_URI, in the data
   bucket the stack created;
7. the API URL and the data bucket.

Pure functions build every request as a `Step` (service, operation, parameters); a
thin runner either calls boto3 or, with --dry-run, prints the step and answers with
what a first deploy would get, so a dry run walks the same path without credentials.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from botocore import xform_name
from botocore.exceptions import BotoCoreError, ClientError

from infra.package import ROOT, capabilities, package
from infra.policies import stage_env

STAGES = ("dev", "prod")
PLACEHOLDER_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
TEMPLATE_BODY_LIMIT = 51_200  # CloudFormation's TemplateBody limit in bytes; beyond it, TemplateURL
CHANGE_SET_POLL_SECONDS = 5.0
STACK_POLL_SECONDS = 15.0
WAIT_LIMIT_SECONDS = 3 * 3600.0  # an endpoint or table change can take long; CloudFormation times out first
# How CloudFormation says a change set changes nothing (update with an identical template).
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
STACK_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}

Log = Callable[[str], None]


class DeployError(Exception):
    """The deploy cannot go on; the message says why (CloudFormation's reasons included)."""


@dataclass(frozen=True)
class Step:
    service: str
    operation: str  # botocore's operation name, e.g. CreateChangeSet
    params: dict[str, Any]
    # The answer a dry run assumes: what a first deploy gets (None: "not found").
    assumed: dict[str, Any] | None = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    stage: str
    region: str
    account: str

    @property
    def stack(self) -> str:
        return f"image-pipeline-{self.stage}"

    @property
    def artifacts_bucket(self) -> str:
        return f"image-pipeline-{self.stage}-deploy-{self.account}-{self.region}"

    def resolve(self, value: str) -> str:
        """A stage setting with CloudFormation's pseudo parameters filled in, as the stack fills them."""
        return value.replace("${AWS::AccountId}", self.account).replace("${AWS::Region}", self.region)


@dataclass(frozen=True)
class Build:
    """What the deploy uploads: the packaged template, the Lambda zip, the training source."""
    template: dict[str, Any]
    code: bytes
    source: bytes
    source_uri: str  # the stage's SOURCE_DIR_URI, resolved
    data_bucket: str  # the stage's BUCKET, resolved (what the dry run assumes the stack outputs)
    tables: tuple[str, ...]  # the stage's tables, which, like the bucket, outlive a deleted stack


@dataclass(frozen=True)
class Deployed:
    api_url: str
    data_bucket: str
    changed: bool


# --- resolving the target ---------------------------------------------------------------------

def resolve_region(flag: str | None, environ: Mapping[str, str], stage: Mapping[str, str]) -> str:
    return (flag or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or stage.get("AWS_DEFAULT_REGION")
            or DEFAULT_REGION)


def caller_identity() -> Step:
    return Step("sts", "GetCallerIdentity", {}, assumed={"Account": PLACEHOLDER_ACCOUNT})


def split_s3_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


# --- the artifacts bucket ----------------------------------------------------------------------

def head_bucket(target: Target) -> Step:
    # ExpectedBucketOwner: a bucket of that name in another account answers 403, never takes our code.
    return Step("s3", "HeadBucket", {"Bucket": target.artifacts_bucket, "ExpectedBucketOwner": target.account},
                assumed=None)


def create_bucket(target: Target) -> list[Step]:
    bucket, owner = target.artifacts_bucket, target.account
    create: dict[str, Any] = {"Bucket": bucket, "ObjectOwnership": "BucketOwnerEnforced"}
    if target.region != "us-east-1":  # us-east-1 refuses a LocationConstraint naming itself
        create["CreateBucketConfiguration"] = {"LocationConstraint": target.region}
    return [
        Step("s3", "CreateBucket", create),
        Step("s3", "PutPublicAccessBlock", {"Bucket": bucket, "ExpectedBucketOwner": owner,
                                            "PublicAccessBlockConfiguration": {
                                                "BlockPublicAcls": True, "IgnorePublicAcls": True,
                                                "BlockPublicPolicy": True, "RestrictPublicBuckets": True}}),
        Step("s3", "PutBucketEncryption", {"Bucket": bucket, "ExpectedBucketOwner": owner,
                                           "ServerSideEncryptionConfiguration": {"Rules": [
                                               {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}}),
    ]


def artifact_key(kind: str, body: bytes, suffix: str) -> str:
    """Named by content, as `aws cloudformation package` does: new code is a new CodeUri, so a change."""
    return f"{kind}/{hashlib.sha256(body).hexdigest()[:32]}{suffix}"


def put_object(bucket: str, key: str, body: bytes, owner: str | None = None) -> Step:
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
    if owner:
        params["ExpectedBucketOwner"] = owner
    return Step("s3", "PutObject", params)


def with_code_uri(template: dict[str, Any], uri: str) -> dict[str, Any]:
    """The template with every function's local CodeUri (Chalice's ./deployment.zip) pointing at S3."""
    resources = {
        name: ({**resource, "Properties": {**resource["Properties"], "CodeUri": uri}}
               if resource.get("Type") == "AWS::Serverless::Function" else resource)
        for name, resource in template["Resources"].items()}
    return {**template, "Resources": resources}


def template_body(template: dict[str, Any]) -> str:
    return json.dumps(template, separators=(",", ":"))


def template_source(body: str, target: Target, key: str) -> dict[str, str]:
    """CreateChangeSet's TemplateBody, or TemplateURL where the body exceeds CloudFormation's limit."""
    if len(body.encode()) <= TEMPLATE_BODY_LIMIT:
        return {"TemplateBody": body}
    return {"TemplateURL": f"https://{target.artifacts_bucket}.s3.{target.region}.amazonaws.com/{key}"}


# --- the stack -----------------------------------------------------------------------------------

def describe_stack(stack: str, assumed: dict[str, Any] | None = None) -> Step:
    return Step("cloudformation", "DescribeStacks", {"StackName": stack}, assumed=assumed)


def change_set_type(described: dict[str, Any] | None) -> str:
    """CREATE for a new stack (or one only ever reviewed), UPDATE for a live one."""
    if described is None:
        return "CREATE"
    [stack] = described["Stacks"]
    status = stack["StackStatus"]
    if status == "REVIEW_IN_PROGRESS":  # a CREATE change set was made but never executed
        return "CREATE"
    if status == "ROLLBACK_COMPLETE":
        raise DeployError(f"stack {stack['StackName']} is ROLLBACK_COMPLETE (its creation failed) and can only be "
                          f"deleted: aws cloudformation delete-stack --stack-name {stack['StackName']}, "
                          "then deploy again")
    return "UPDATE"


def retained_data(target: Target, build: Build) -> list[Step]:
    """Where a new stack's data would go. The template retains the bucket and tables when a stack
    is deleted (or its first creation fails), and a new stack cannot create them again over what
    was kept: a CREATE looks first, to say so before CloudFormation fails half-way."""
    return [Step("s3", "HeadBucket", {"Bucket": build.data_bucket, "ExpectedBucketOwner": target.account},
                 assumed=None),
            *(Step("dynamodb", "DescribeTable", {"TableName": table}, assumed=None) for table in build.tables)]


NOT_FOUND = ("404", "NoSuchBucket", "NotFound", "ResourceNotFoundException")


def change_set_name(now: datetime) -> str:
    return "deploy-" + now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def create_change_set(target: Target, template: dict[str, Any], source: dict[str, str], kind: str,
                      name: str) -> Step:
    params: dict[str, Any] = {
        "StackName": target.stack, "ChangeSetName": name, "ChangeSetType": kind, **source,
        "Parameters": [{"ParameterKey": "Stage", "ParameterValue": target.stage}],
        "Capabilities": capabilities(template),
        "Description": f"make deploy STAGE={target.stage}",
    }
    if kind == "CREATE":
        # A failed first creation deletes the stack rather than leave it ROLLBACK_COMPLETE (only deletable).
        params["OnStackFailure"] = "DELETE"
    arn = f"arn:aws:cloudformation:{target.region}:{target.account}"
    return Step("cloudformation", "CreateChangeSet", params,
                assumed={"Id": f"{arn}:changeSet/{name}/<id>", "StackId": f"{arn}:stack/{target.stack}/<id>"})


def describe_change_set(change_set_id: str) -> Step:
    return Step("cloudformation", "DescribeChangeSet", {"ChangeSetName": change_set_id},
                assumed={"Status": "CREATE_COMPLETE", "ExecutionStatus": "AVAILABLE"})


def change_set_settled(answer: dict[str, Any]) -> bool:
    return answer["Status"] in ("CREATE_COMPLETE", "FAILED")


def no_changes(answer: dict[str, Any]) -> bool:
    return answer["Status"] == "FAILED" and any(s in answer.get("StatusReason", "") for s in NO_CHANGES)


def stack_settled(answer: dict[str, Any]) -> bool:
    return not answer["Stacks"][0]["StackStatus"].endswith("_IN_PROGRESS")


# The stack's outputs a stage with AUTH=cognito adds (infra/console_users.py), as the deploy prints them.
CONSOLE_OUTPUTS = {"ConsoleUrl": "console", "ConsoleUserPoolId": "console users' pool"}


def finished_stack(target: Target, build: Build) -> dict[str, Any]:
    """What a dry run assumes DescribeStacks answers once the stack is created."""
    return {"Stacks": [{"StackName": target.stack, "StackStatus": "CREATE_COMPLETE", "Outputs": [
        {"OutputKey": "EndpointURL",
         "OutputValue": f"https://<api-id>.execute-api.{target.region}.amazonaws.com/api/"},
        {"OutputKey": "DataBucketName", "OutputValue": build.data_bucket},
        *[{"OutputKey": key, "OutputValue": f"<{key}>"} for key in build.template.get("Outputs", {})
          if key in CONSOLE_OUTPUTS]]}]}


def failure_reasons(events: list[dict[str, Any]], token: str) -> list[str]:
    """The failed resources of this deploy's operation (its ClientRequestToken), first failure first."""
    # Without a token on the events (an operation not started by ExecuteChangeSet), every failure listed.
    ours = [e for e in events if e.get("ClientRequestToken") == token] or events
    return [f"{e['LogicalResourceId']} ({e.get('ResourceType', '?')}) {e['ResourceStatus']}: "
            f"{e.get('ResourceStatusReason', '')}"
            for e in reversed(ours) if e.get("ResourceStatus", "").endswith("_FAILED")]


def outputs(described: dict[str, Any]) -> dict[str, str]:
    return {o["OutputKey"]: o["OutputValue"] for o in described["Stacks"][0].get("Outputs", [])}


# --- running steps -----------------------------------------------------------------------------

def summarise(value: Any) -> Any:
    """Request parameters for a log line: bodies by their size."""
    if isinstance(value, bytes):
        return f"<{len(value):,} bytes>"
    if isinstance(value, str) and len(value) > 200:
        return f"<{len(value.encode()):,} bytes of text>"
    if isinstance(value, dict):
        return {k: summarise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [summarise(v) for v in value]
    return value


def describe(step: Step) -> str:
    return f"{step.service} {step.operation} {json.dumps(summarise(step.params))}"


class Runner(Protocol):
    dry: bool

    def call(self, step: Step, missing: tuple[str, ...] = (), quiet: bool = False) -> dict[str, Any] | None:
        """The answer; None where the call fails with one of the `missing` error codes. `quiet`: not logged
        (a poll logs its request once)."""


class DryRunner:
    """Prints each request and answers what a first deploy would get: no AWS call, no credentials."""
    dry = True

    def __init__(self, log: Log) -> None:
        self.log = log

    def call(self, step: Step, missing: tuple[str, ...] = (), quiet: bool = False) -> dict[str, Any] | None:
        if not quiet:
            self.log(f"  [dry run] {describe(step)}")
        return step.assumed


class AwsRunner:
    """Calls boto3; `clients(service)` gives the client (the region's, or a test's)."""
    dry = False

    def __init__(self, clients: Callable[[str], Any], log: Log) -> None:
        self.clients, self.log = clients, log

    def call(self, step: Step, missing: tuple[str, ...] = (), quiet: bool = False) -> dict[str, Any] | None:
        if not quiet:
            self.log(f"  {describe(step)}")
        try:
            answer = getattr(self.clients(step.service), xform_name(step.operation))(**step.params)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in missing:
                return None
            raise
        answer.pop("ResponseMetadata", None)
        return answer


def poll(runner: Runner, step: Step, settled: Callable[[dict[str, Any]], bool], interval: float,
         sleep: Callable[[float], None], log: Log, state: Callable[[dict[str, Any]], str]) -> dict[str, Any]:
    waited, last = 0.0, None
    while True:
        answer = runner.call(step, quiet=last is not None)
        assert answer is not None
        if state(answer) != last:
            last = state(answer)
            log(f"   {last}")
        if settled(answer):
            return answer
        if waited >= WAIT_LIMIT_SECONDS:
            raise DeployError(f"still {last} after {waited:.0f} s: {describe(step)}")
        sleep(interval)
        waited += interval


# --- the deploy ----------------------------------------------------------------------------------

def upload_artifacts(target: Target, build: Build, runner: Runner, log: Log) -> tuple[dict[str, Any], dict[str, str]]:
    """Step 4: the template pointing at the uploaded Lambda zip, and CreateChangeSet's template source."""
    bucket = target.artifacts_bucket
    log(f"4. artifacts bucket {bucket}")
    if runner.call(head_bucket(target), missing=("404", "NoSuchBucket", "NotFound")) is None:
        log("   not found: creating it (private, encrypted)")
        for step in create_bucket(target):
            runner.call(step)
    code_key = artifact_key("lambda", build.code, ".zip")
    runner.call(put_object(bucket, code_key, build.code, target.account))
    template = with_code_uri(build.template, f"s3://{bucket}/{code_key}")
    body = template_body(template).encode()
    template_key = artifact_key("templates", body, ".json")
    source = template_source(body.decode(), target, template_key)
    if "TemplateURL" in source:
        log(f"   the template is {len(body):,} bytes (TemplateBody takes {TEMPLATE_BODY_LIMIT:,}): uploading it")
        runner.call(put_object(bucket, template_key, body, target.account))
    return template, source


def apply_stack(target: Target, build: Build, template: dict[str, Any], source: dict[str, str], runner: Runner,
                log: Log, now: datetime, sleep: Callable[[float], None]) -> tuple[dict[str, Any], bool]:
    """Step 5: the stack created or updated through a change set; its description and whether it changed."""
    log(f"5. stack {target.stack}")
    # Our own well-formed name: DescribeStacks' ValidationError means "does not exist".
    kind = change_set_type(runner.call(describe_stack(target.stack), missing=("ValidationError",)))
    if kind == "CREATE":
        kept = [next(iter(step.params.values())) for step in retained_data(target, build)
                if runner.call(step, missing=NOT_FOUND) is not None]
        if kept:
            raise DeployError(f"{', '.join(kept)} already exist, kept from an earlier {target.stack} stack (its "
                              "data outlives it): import them into the new stack (a change set of type IMPORT) "
                              "or, if their data may go, delete them; then deploy again")
    name = change_set_name(now)
    log(f"   change set {name} ({kind}), capabilities {' '.join(capabilities(template))}")
    created = runner.call(create_change_set(target, template, source, kind, name))
    assert created is not None
    change_set_id, stack_id = created["Id"], created["StackId"]
    change_set = poll(runner, describe_change_set(change_set_id), change_set_settled, CHANGE_SET_POLL_SECONDS,
                      sleep, log, lambda a: f"change set {a['Status']}")
    done = finished_stack(target, build)
    if no_changes(change_set):
        log("   no changes: the stack is up to date")
        runner.call(Step("cloudformation", "DeleteChangeSet", {"ChangeSetName": change_set_id}))
        described = runner.call(describe_stack(stack_id, assumed=done))
        assert described is not None
        return described, False
    if change_set["Status"] == "FAILED":
        raise DeployError(f"change set {name} failed: {change_set.get('StatusReason', '')}")
    runner.call(Step("cloudformation", "ExecuteChangeSet", {"ChangeSetName": change_set_id,
                                                             "ClientRequestToken": name}))
    # By the stack's id: a failed creation deletes the stack, whose name then describes nothing.
    described = poll(runner, describe_stack(stack_id, assumed=done), stack_settled, STACK_POLL_SECONDS, sleep, log,
                     lambda a: f"stack {a['Stacks'][0]['StackStatus']}")
    status = described["Stacks"][0]["StackStatus"]
    if status not in STACK_DONE:
        # One page, the newest 100 events: this operation's, the ones that matter, are the newest.
        events = runner.call(Step("cloudformation", "DescribeStackEvents", {"StackName": stack_id},
                                  assumed={"StackEvents": []}))
        reasons = failure_reasons((events or {}).get("StackEvents", []), name)
        raise DeployError(f"stack {target.stack} ended {status}:\n" + "\n".join(f"  {r}" for r in reasons))
    return described, True


def deploy(target: Target, build: Build, runner: Runner, log: Log, now: datetime | None = None,
           sleep: Callable[[float], None] = time.sleep) -> Deployed:
    """Steps 4 to 7: artifacts, stack, training source, outputs."""
    template, source = upload_artifacts(target, build, runner, log)
    described, changed = apply_stack(target, build, template, source, runner, log,
                                     now or datetime.now(timezone.utc), sleep)
    stack_outputs = outputs(described)
    # After the stack: the data bucket is one of its resources.
    log(f"6. training source ({len(build.source):,} bytes) to {build.source_uri}")
    source_bucket, source_key = split_s3_uri(build.source_uri)
    runner.call(put_object(source_bucket, source_key, build.source, target.account))
    deployed = Deployed(api_url=stack_outputs.get("EndpointURL", ""),
                        data_bucket=stack_outputs.get("DataBucketName", build.data_bucket), changed=changed)
    log(f"7. API: {deployed.api_url}\n   data bucket: {deployed.data_bucket}"
        + "".join(f"\n   {label}: {stack_outputs[key]}" for key, label in CONSOLE_OUTPUTS.items() if key in stack_outputs))
    if "ConsoleUserPoolId" in stack_outputs:
        log(f"   add a console user: aws cognito-idp admin-create-user --user-pool-id "
            f"{stack_outputs['ConsoleUserPoolId']} --username <e-mail> --region {target.region}")
    return deployed


def prepare(stage: str, region: str, account: str, out: Path, log: Log) -> tuple[Target, Build]:
    """Steps 2 and 3, local work only: the region's images, the package, the training source."""
    from infra.images import resolve
    from infra.sourcedir import build_sourcedir

    target = Target(stage, region, account)
    images = resolve(region)
    log(f"2. images for {region}:\n" + "\n".join(f"   {name}={uri}" for name, uri in images.items()))
    log(f"3. package into {out}")
    template_path = package(stage, out, images=images)
    env = stage_env(json.loads((ROOT / ".chalice" / "config.json").read_text()), stage)
    build = Build(template=json.loads(template_path.read_text()), code=(out / "deployment.zip").read_bytes(),
                  source=build_sourcedir(), source_uri=target.resolve(env["SOURCE_DIR_URI"]),
                  data_bucket=target.resolve(env["BUCKET"]),
                  tables=(env["PIPELINE_TABLE"], env["PREDICTIONS_TABLE"]))
    return target, build


def _log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str] | None = None, clients: Callable[[str], Any] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev", choices=STAGES)
    parser.add_argument("--region", help="default: AWS_REGION, AWS_DEFAULT_REGION, the stage's, us-east-1")
    parser.add_argument("--dry-run", action="store_true", help="print every step and request; call no AWS API")
    parser.add_argument("--out", type=Path, help="where to package (default build/deploy/STAGE)")
    args = parser.parse_args(argv)
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    region = resolve_region(args.region, os.environ, stage_env(config, args.stage))
    out = args.out or ROOT / "build" / "deploy" / args.stage
    runner: Runner
    if args.dry_run:
        runner = DryRunner(_log)
        _log(f"Dry run: no AWS call is made; the account is a placeholder, {PLACEHOLDER_ACCOUNT}, and AWS is "
             "assumed to answer as for a first deploy (no artifacts bucket, no stack).")
    else:
        import boto3

        session = boto3.Session(region_name=region)
        runner = AwsRunner(clients or session.client, _log)
    try:
        _log(f"1. stage {args.stage}, region {region}")
        identity = runner.call(caller_identity())
        assert identity is not None
        account = identity["Account"]
        _log(f"   account {account}{' (placeholder)' if runner.dry else ''}")
        target, build = prepare(args.stage, region, account, out, _log)
        deploy(target, build, runner, _log)
    # botocore's errors name the request that failed and carry AWS's message.
    except (DeployError, BotoCoreError, ClientError) as error:
        print(f"deploy failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
