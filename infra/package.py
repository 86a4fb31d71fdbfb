"""Build the deployable template: `chalice package` with infra/template.json merged in.

    python -m infra.package --stage dev build/package/dev

The stage's environment is exported while Chalice imports app.py, so the queue
names the handlers declare are the stage's. Afterwards, environment values that
name `${AWS::...}` (the account in the bucket and role names) become Fn::Sub, and
the template's Stage parameter defaults to the packaged stage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from infra.policies import stage_env

ROOT = Path(__file__).resolve().parent.parent


def resolve_placeholders(template: dict[str, Any], stage: str) -> dict[str, Any]:
    template.setdefault("Parameters", {}).setdefault("Stage", {"Type": "String"})["Default"] = stage
    for resource in template["Resources"].values():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        variables = resource["Properties"].get("Environment", {}).get("Variables", {})
        for name, value in variables.items():
            if isinstance(value, str) and "${AWS::" in value:
                variables[name] = {"Fn::Sub": value}
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


def package(stage: str, out: Path) -> Path:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    env = {**os.environ, **{k: v for k, v in stage_env(config, stage).items() if "${" not in v}}
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    chalice = Path(sys.executable).with_name("chalice")
    subprocess.run([str(chalice), "package", "--stage", stage, "--merge-template", str(ROOT / "infra" / "template.json"),
                    str(out)], cwd=ROOT, env=env, check=True)
    template_path = out / "sam.json"
    template = resolve_placeholders(json.loads(template_path.read_text()), stage)
    template_path.write_text(json.dumps(template, indent=2) + "\n")
    return template_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev", choices=["local", "dev", "prod"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    template = package(args.stage, args.out)
    print(template)
    print(f"deploy with --capabilities {' '.join(capabilities(json.loads(template.read_text())))}")


if __name__ == "__main__":
    main()
