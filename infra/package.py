"""Build the deployable template: `chalice package` with infra/template.json merged in.

    python -m infra.package --stage dev [--region eu-west-1] build/package/dev

The stage's environment is exported while Chalice imports app.py, so the queue
names the handlers declare are the stage's. Afterwards, environment values and the
Lambda roles' policy ARNs that name `${...}` (the account in the bucket and
role names, the account and region in every ARN, the user pool) become Fn::Sub,
a stage with AUTH=cognito gets its user pool (infra/console_users.py), and the
template's Stage parameter defaults to the packaged stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chalice_app.config import auth_mode
from infra import console_users
from infra.policies import stage_env

ROOT = Path(__file__).resolve().parent.parent


def _sub(value: Any) -> Any:
    return {"Fn::Sub": value} if isinstance(value, str) and "${" in value else value


def resolve_placeholders(template: dict[str, Any], stage: str) -> dict[str, Any]:
    template.setdefault("Parameters", {}).setdefault("Stage", {"Type": "String"})["Default"] = stage
    # A Cognito authoriser names its user pool as `${ConsoleUserPool.Arn}` (chalice_app/auth.py).
    api = template["Resources"].get("RestAPI", {}).get("Properties", {}).get("DefinitionBody", {})
    for definition in api.get("securityDefinitions", {}).values():
        authorizer = definition.get("x-amazon-apigateway-authorizer", {})
        if "providerARNs" in authorizer:
            authorizer["providerARNs"] = [_sub(arn) for arn in authorizer["providerARNs"]]
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            variables = resource["Properties"].get("Environment", {}).get("Variables", {})
            for name, value in variables.items():
                variables[name] = _sub(value)
        elif resource.get("Type") == "AWS::IAM::Role":
            # Chalice copies .chalice/policy-<stage>.json into each function's role as it is:
            # its ARNs name the account and region as placeholders (infra.policies).
            for policy in resource["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    resources = statement.get("Resource")
                    statement["Resource"] = ([_sub(r) for r in resources] if isinstance(resources, list)
                                             else _sub(resources))
    return template


# IAM resources whose name the template fixes: CloudFormation then wants CAPABILITY_NAMED_IAM.
_IAM_NAMES = {"AWS::IAM::Role": "RoleName", "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
              "AWS::IAM::User": "UserName", "AWS::IAM::Group": "GroupName", "AWS::IAM::InstanceProfile":
              "InstanceProfileName"}


def capabilities(template: dict[str, Any]) -> list[str]:
    """What `aws cloudformation deploy --capabilities` must acknowledge for this template, as
    CloudFormation refuses it otherwise: named IAM resources, any IAM resource (SAM's functions
    create roles), the SAM transform."""
    resources = template.get("Resources", {}).values()
    types = {resource.get("Type") for resource in resources}
    needed = []
    if any(_IAM_NAMES.get(r.get("Type")) in r.get("Properties", {}) for r in resources):
        needed.append("CAPABILITY_NAMED_IAM")
    elif any(t and t.startswith("AWS::IAM::") for t in types) or "AWS::Serverless::Function" in types:
        needed.append("CAPABILITY_IAM")
    if template.get("Transform"):
        needed.append("CAPABILITY_AUTO_EXPAND")
    return needed


def with_images(template: dict[str, Any], images: Mapping[str, str]) -> dict[str, Any]:
    """The functions' image settings (TRAINING_IMAGE, ...) replaced by `images`: the committed
    config names us-east-1's, a deploy to another region passes that region's (infra.images)."""
    for resource in template["Resources"].values():
        if resource.get("Type") == "AWS::Serverless::Function":
            variables = resource["Properties"].get("Environment", {}).get("Variables", {})
            variables.update({name: uri for name, uri in images.items() if name in variables})
    return template


def with_console_users(template: dict[str, Any], env: Mapping[str, str], api_stage: str) -> dict[str, Any]:
    """The stage's Cognito user pool, app client and hosted-UI domain, where it signs in with them."""
    if auth_mode(env) == "cognito":
        template["Resources"].update(console_users.resources(env, api_stage))
        template.setdefault("Outputs", {}).update(console_users.outputs(api_stage))
    return template


def package(stage: str, out: Path, images: Mapping[str, str] | None = None) -> Path:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    variables = stage_env(config, stage)
    # Placeholders included: app.py names the Cognito authoriser's pool as one.
    env = {**os.environ, **variables}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    chalice = Path(sys.executable).with_name("chalice")
    subprocess.run([str(chalice), "package", "--stage", stage, "--merge-template", str(ROOT / "infra" / "template.json"),
                    str(out)], cwd=ROOT, env=env, check=True)
    template_path = out / "sam.json"
    template = json.loads(template_path.read_text())
    template = with_console_users(template, variables, config["stages"][stage].get("api_gateway_stage", "api"))
    template = with_images(resolve_placeholders(template, stage), images or {})
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    return template_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev", choices=["local", "dev", "prod"])
    parser.add_argument("--region", help="the region's images instead of the committed (us-east-1) ones")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.region:
        from infra.images import resolve

        template = package(args.stage, args.out, images=resolve(args.region))
    else:
        template = package(args.stage, args.out)
    print(template)
    print(f"deploy with --capabilities {' '.join(capabilities(json.loads(template.read_text())))}")


if __name__ == "__main__":
    main()
