"""What this project's containers hold, told to the local SageMaker, which cannot know it."""

from __future__ import annotations

import dataclasses
import io

from ..sagemaker.config import Settings

# The Debugger rules' program, inside the job's source dir (`training/rules.py`).
DEBUG_RULES_PROGRAM = "training/rules.py"
# Under the job's output data: where training/train.py writes the profiler's data and its report.
PROFILER_OUTPUT_DIR, PROFILER_REPORT_DIR = "profiler", "report"


def health_probe() -> tuple[bytes, str]:
    """A real request a new endpoint host must answer: a small PNG, what this project's models classify."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 64, 32)).save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"


def with_project_containers(settings: Settings) -> Settings:
    return dataclasses.replace(settings, debug_rules_program=DEBUG_RULES_PROGRAM,
                               profiler_output_dir=PROFILER_OUTPUT_DIR, profiler_report_dir=PROFILER_REPORT_DIR,
                               health_probe=health_probe())
