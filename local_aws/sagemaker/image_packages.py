"""The training image's installed packages as pip constraints, so that no job can change them.

On AWS each job gets a fresh container: whatever the toolkit's `pip install -r requirements.txt`
changes in it is gone with the job. Here every job runs in one shared interpreter (the
settings' `training_python`, often the stack's own virtual environment), so a job whose
requirements downgrade a package (smdebug's `protobuf<=3.20.3`, say) would change it for
every later job, for the service itself and for whatever else runs in that environment.

The job's environment therefore carries `PIP_CONSTRAINT` naming a file that pins every
installed distribution to its version. A requirement the image already satisfies installs
nothing, a new package still installs (as on AWS), and one that would replace an installed
version fails the install, so the job fails with pip's own conflict message instead of
silently changing the image. That is stricter than AWS, never kinder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

CONSTRAINT_ENV = "PIP_CONSTRAINT"


def freeze(python: str) -> list[str]:
    """`name==version` for every distribution installed in `python`'s environment (editables left out:
    a local path is not a constraint pip can meet)."""
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze", "--exclude-editable",
                             "--disable-pip-version-check"], capture_output=True, text=True, check=True)
    return sorted(line for line in listed.stdout.splitlines() if "==" in line)


def write_constraints(python: str, path: Path) -> Path:
    """The constraints file for `python`'s environment, written to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in freeze(python)))
    return path


def with_constraints(env: dict[str, str], constraints: Path) -> dict[str, str]:
    """`env` with the image's constraints added to any the job's request names (pip reads a
    space-separated list)."""
    named = env.get(CONSTRAINT_ENV, "").split()
    return {**env, CONSTRAINT_ENV: " ".join([*named, str(constraints)])}
