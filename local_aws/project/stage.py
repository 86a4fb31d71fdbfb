"""The Chalice stage the stack plays: its environment, read with Chalice's own config loader.

The handlers' names, URIs and tuning knobs live in `.chalice/config.json` (stage
`local`); the stack adds only what differs on one machine: where AWS is (endpoint
URLs), fake credentials, and overrides a caller asks for (`--set NAME=VALUE`).
"""

from __future__ import annotations

from pathlib import Path

from chalice.cli.factory import CLIFactory

from ..dispatcher.stage import Stage

REPO_ROOT = Path(__file__).resolve().parents[2]
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


def load_stage(name: str = "local", overrides: dict[str, str] | None = None,
               project_dir: Path = REPO_ROOT) -> Stage:
    config = CLIFactory(str(project_dir)).create_config_obj(chalice_stage_name=name)
    environment = {**config.environment_variables, **(overrides or {})}
    unresolved = sorted(k for k, v in environment.items() if "${" in v)
    if unresolved:
        raise ValueError(f"stage {name!r} has CloudFormation placeholders in {', '.join(unresolved)}: "
                         "it cannot run on one machine (use the 'local' stage)")
    return Stage(name=name, app_name=config.app_name, environment=environment,
                 lambda_timeout=int(config.lambda_timeout or 60),
                 lambda_memory_size=int(config.lambda_memory_size or 128))


def handler_environment(stage: Stage, moto_url: str, sagemaker_url: str) -> dict[str, str]:
    """The environment the handlers (and the local SageMaker) run in on one machine."""
    return {
        **stage.environment,
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": stage.region,
        "AWS_REGION": stage.region,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ENDPOINT_URL_SAGEMAKER": sagemaker_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": sagemaker_url,
    }


def parse_overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes NAME=VALUE, not {item!r}")
        overrides[name] = value
    return overrides
