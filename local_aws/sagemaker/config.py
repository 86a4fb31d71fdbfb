"""Configuration of one local SageMaker service."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    region: str = "us-east-1"
    account: str = "123456789012"  # moto's default account, so ARNs line up with moto's
    # Training processes at once (ResourceLimitExceeded past it): keeps a small machine usable.
    max_running_jobs: int = 2
    # Seconds an endpoint host has to answer /ping and a real request.
    host_start_timeout: float = 120.0
    # What the training image has imported before a job starts (framework_image.py); () starts each
    # job as a fresh interpreter, which pays the imports itself (~4 s for torch and torchvision).
    framework_preload: tuple[str, ...] = ("torch", "torchvision")
    # The training image: its interpreter (one holding the image's packages: AWS's training toolkit
    # and the framework) and the framework module it names in SAGEMAKER_TRAINING_MODULE.
    training_python: str = sys.executable
    training_module: str = "sagemaker_pytorch_container.training:main"
    # What the product's containers hold, which AWS knows from its images and this service is told:
    # the program a managed Debugger rule runs, a path inside the job's source dir (None: such
    # rules end in Error);
    debug_rules_program: str | None = None
    # where a job with a ProfilerConfig writes the profiler's data and its report, under its
    # output data (None: nothing to upload, the ProfilerReport rule ends in Error);
    profiler_output_dir: str | None = None
    profiler_report_dir: str | None = None
    # a real request (body, content type) a new endpoint host must answer before it takes
    # traffic (None: /ping only).
    health_probe: tuple[bytes, str] | None = None

    @classmethod
    def from_env(cls, state_dir: Path, **overrides) -> "Settings":
        values = {
            "region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            "max_running_jobs": int(os.environ.get("LOCAL_SAGEMAKER_MAX_RUNNING_JOBS", "2")),
            "training_python": os.environ.get("LOCAL_SAGEMAKER_TRAINING_PYTHON") or sys.executable,
        }
        if "LOCAL_SAGEMAKER_PRELOAD" in os.environ:  # "" for fresh processes
            values["framework_preload"] = tuple(filter(None, os.environ["LOCAL_SAGEMAKER_PRELOAD"].split(",")))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(state_dir=Path(state_dir), **values)

    def job_threads(self, running_jobs: int) -> int:
        """Torch threads for a job that starts while `running_jobs` jobs (itself included) run: the
        cores shared among them. Torch's default (all cores in every process) would oversubscribe
        the machine; a share fixed for max_running_jobs would leave a job alone half the cores."""
        return max(1, (os.cpu_count() or 1) // max(1, min(running_jobs, self.max_running_jobs)))

    def arn(self, kind: str, name: str) -> str:
        # AWS lower-cases the resource name in SageMaker ARNs.
        return f"arn:aws:sagemaker:{self.region}:{self.account}:{kind}/{name.lower()}"
