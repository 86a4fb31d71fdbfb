"""A run's report: the HTML page the final training job writes (curves, confusion matrix, Debugger
verdicts, profiler findings; its figures inlined), read from the job's output.tar.gz.

The report exists only inside that archive (SageMaker uploads SM_OUTPUT_DATA_DIR as one
output.tar.gz), so a presigned URL could only download the archive: the API reads the one member
(chalice_app/archives.py) and answers it. The page is self-contained (training/report.py inlines its PNGs).
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from . import aws
from .archives import ArchiveError, read_member
from .config import Settings, settings

REPORT_MEMBER = "report/report.html"  # training/train.py: SM_OUTPUT_DATA_DIR/report/report.html
# Lambda answers at most 6 MB; a report is a few hundred KB (three or five PNGs inlined).
MAX_REPORT_BYTES = 5 * 1024 * 1024
# Before these the final job has not ended: there is nothing to read yet.
_ENDED = ("DEPLOYING", "DEPLOYED", "REJECTED", "FAILED")


class NoReport(LookupError):
    """The run has no report (yet, or at all), with the reason."""


def output_key(config: Settings, training_job: str) -> str:
    """Where SageMaker puts the final job's output.tar.gz (its OutputDataConfig, chalice_app/sagemaker_requests.py)."""
    return f"{config.output_prefix}final/{training_job}/output/output.tar.gz"


def report_html(run: dict[str, Any]) -> str:
    """The run's report page; NoReport when the run's final job has none."""
    job = run.get("training_job")
    if not job or run.get("status") not in _ENDED:
        raise NoReport(f"run {run['run_id']} has no final job report yet (status {run.get('status')})")
    config = settings()
    try:
        data = read_member(config.bucket, output_key(config, job), REPORT_MEMBER, MAX_REPORT_BYTES)
    except ClientError as error:
        # A missing key is NoSuchKey: the policy lets this caller list final jobs' output (S3 answers
        # AccessDenied for a missing key to a caller that may not), so an AccessDenied is a real one.
        if aws.error_code(error) in {"NoSuchKey", "404"}:
            raise NoReport(f"the final job {job} left no output") from error
        raise
    except ArchiveError as error:
        raise NoReport(f"the final job {job}'s output cannot be read: {error}") from error
    if data is None:
        raise NoReport(f"the final job {job} wrote no report (its report hyperparameter is off?)")
    return data.decode("utf-8")
