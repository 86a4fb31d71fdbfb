"""The app's HTTP API alone, in Chalice's local server, on the local stage with overrides: what the
console's sign-in test serves, as a stage with AUTH=cognito cannot run in the whole stack (its user
pool is made by the test). AWS is wherever AWS_ENDPOINT_URL points.

    python -m tests.e2e.api_alone PORT NAME=VALUE...
"""

from __future__ import annotations

import os
import sys

from local_aws.project.stage import REPO_ROOT, load_stage, parse_overrides


def main() -> None:
    port, overrides = int(sys.argv[1]), parse_overrides(sys.argv[2:])
    os.environ.update(load_stage("local", overrides).environment)
    from chalice.cli.factory import CLIFactory
    from chalice.local import create_local_server

    from app import app

    config = CLIFactory(str(REPO_ROOT)).create_config_obj(chalice_stage_name="local")
    create_local_server(app, config, "127.0.0.1", port).serve_forever()


if __name__ == "__main__":
    main()
