"""Runs a training job the way SageMaker's script mode does, as a local process.

Per job, a directory mirrors the container's /opt/ml:

    input/data/<channel>/   the S3 channels, downloaded (File mode)
    input/config/           hyperparameters.json, inputdataconfig.json, resourceconfig.json,
                            debughookconfig.json (when DebugHookConfig is set)
    code/                   the unpacked sagemaker_submit_directory (the process's cwd)
    model/                  SM_MODEL_DIR, tarred to <S3OutputPath>/<job>/output/model.tar.gz, or with
                            OutputDataConfig.CompressionType NONE uploaded as it is under .../output/model/
    output/data/            SM_OUTPUT_DATA_DIR, tarred to .../output/output.tar.gz
    output/tensors/         smdebug's tensors, uploaded to DebugHookConfig.S3OutputPath

The log (stdout and stderr) is kept under <state>/logs/<job>.log, as CloudWatch keeps it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from . import aws
from .exceptions import ValidationException
from .framework_image import FrameworkImage, JobProcess, start_process, terminate, time_limit
from .models import now
from .rules import run_debug_rules

if TYPE_CHECKING:
    from .models import SageMakerBackend, TrainingJob

logger = Logger(service="local-sagemaker")

FAILURE_REASON_MAX = 1024
# Where training/train.py writes its profile and its HTML report, inside SM_OUTPUT_DATA_DIR.
PROFILER_DIR, REPORT_DIR = "profiler", "report"
_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*)$")


def decode_hyperparameters(raw: dict[str, str]) -> dict[str, Any]:
    """The SDK JSON-encodes every value ('"train.py"', '0.01'); plain strings pass as they are."""
    decoded: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            decoded[name] = json.loads(value)
        except (TypeError, ValueError):
            decoded[name] = value
    return decoded


# The training toolkit keeps these from the script (its SAGEMAKER_HYPERPARAMETERS, TUNING_METRIC_PARAM).
TUNING_METRIC_PARAM = "_tuning_objective_metric"


def is_sagemaker_hyperparameter(name: str) -> bool:
    return name.startswith("sagemaker_") or name == TUNING_METRIC_PARAM


def script_arguments(hyperparameters: dict[str, Any]) -> list[str]:
    """`--name value` for each hyperparameter the script should see (SageMaker's own stay out)."""
    argv: list[str] = []
    for name, value in hyperparameters.items():
        if is_sagemaker_hyperparameter(name):
            continue
        argv += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return argv


def failure_reason(log_tail: str, returncode: int, command: list[str], failure_file: Path | None = None) -> str:
    """AWS's shape of a script failure, with the script's own error message in it."""
    message = failure_file.read_text().strip() if failure_file and failure_file.exists() else ""
    if not message:
        lines = [line for line in log_tail.splitlines() if line.strip()]
        errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
        message = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
    reason = (f'AlgorithmError: ExecuteUserScriptError:\nExitCode {returncode}\nErrorMessage "{message}"\n'
              f'Command "{shlex.join(command)}", exit code: {returncode}')
    return reason[:FAILURE_REASON_MAX]


def final_metrics(log_text: str, definitions: list[dict[str, str]]) -> list[dict[str, Any]]:
    """FinalMetricDataList: the last value each MetricDefinitions regex found in the log."""
    found: dict[str, float] = {}
    for line in log_text.splitlines():
        for definition in definitions:
            match = re.search(definition["Regex"], line)
            if match:
                try:
                    found[definition["Name"]] = float(match.group(1))
                except (IndexError, ValueError):
                    continue
    stamp = now()
    return [{"MetricName": name, "Value": value, "Timestamp": stamp} for name, value in found.items()]


def debug_hook_config(config: dict[str, Any], local_path: Path) -> dict[str, Any]:
    """debughookconfig.json as SageMaker's container writes it for smdebug's hook."""
    return {
        "S3OutputPath": config.get("S3OutputPath", ""),
        "LocalPath": str(local_path),
        "HookParameters": config.get("HookParameters", {}),
        "CollectionConfigurations": config.get("CollectionConfigurations", []),
    }


def output_prefix(request: dict[str, Any], job_name: str) -> str:
    return aws.join_s3(request["OutputDataConfig"]["S3OutputPath"], job_name, "output")


def _tar_directory(directory: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(directory).as_posix())
    return tarball


class JobStopped(Exception):
    """The job ended on request or on its time limit, not by failing."""


class TrainingRunner:
    def __init__(self, backend: "SageMakerBackend") -> None:
        self.backend = backend
        self.settings = backend.settings
        self._processes: dict[str, JobProcess] = {}
        preload = self.settings.framework_preload
        # The image itself starts no OpenMP pool (one would not survive a fork); each job sets its count.
        self.image = FrameworkImage(preload, env={**os.environ, "OMP_NUM_THREADS": "1"}) if preload else None
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # ----- the operations' side ----------------------------------------------------------

    def validate(self, params: dict[str, Any]) -> None:
        hyperparameters = decode_hyperparameters(params.get("HyperParameters", {}))
        for needed in ("sagemaker_program", "sagemaker_submit_directory"):
            if needed not in hyperparameters:
                raise ValidationException(
                    f"The local SageMaker runs script mode only: hyperparameter {needed!r} is required")
        for channel in params.get("InputDataConfig", []):
            source = channel["DataSource"].get("S3DataSource")
            if not source or source.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise ValidationException(
                    f"Channel {channel['ChannelName']!r}: the local SageMaker supports S3DataSource with S3Prefix only")
            if channel.get("InputMode", "File") != "File":
                raise ValidationException(f"Channel {channel['ChannelName']!r}: only File input mode is supported")

    def start(self, name: str, on_line: Callable[[str], None] | None = None) -> None:
        thread = threading.Thread(target=self._run, args=(name, on_line), name=f"training-{name}", daemon=True)
        with self._lock:
            self._threads[name] = thread
        thread.start()

    def stop(self, name: str) -> None:
        with self._lock:
            process = self._processes.get(name)
        if process and process.poll() is None:
            terminate(process)

    def wait(self, name: str, timeout: float | None = None) -> None:
        with self._lock:
            thread = self._threads.get(name)
        if thread:
            thread.join(timeout)

    def shutdown(self) -> None:
        with self._lock:
            names = list(self._threads)
        for name in names:
            job = self.backend.training_jobs.get(name)
            if job and job.status == "InProgress":
                self.backend.stop_training_job({"TrainingJobName": name})
        for name in names:
            self.wait(name, timeout=30)
        if self.image:
            self.image.stop()

    # ----- the job --------------------------------------------------------------------------

    def _run(self, name: str, on_line: Callable[[str], None] | None) -> None:
        job = self.backend.training_jobs[name]
        workdir = self.settings.state_dir / "jobs" / name
        log_path = Path(job.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._download(job, workdir)
            command, env = self._prepare(job, workdir)
            self.backend.change_training_job(name, lambda j: j.move_to(
                "Training", "Training image download completed. Training in progress."))
            try:
                returncode = self._execute(name, command, env, workdir / "code", log_path, on_line)
            finally:
                # Before any final status: whoever reacts to it reads FinalMetricDataList.
                self._record_metrics(name, log_path)
            job = self.backend.training_jobs[name]
            if job.stop_requested:
                raise JobStopped("The training job was stopped on request")
            if returncode != 0:
                reason = failure_reason(_tail(log_path), returncode, command, workdir / "output" / "failure")
                self._fail(name, reason)
                return
            self.backend.change_training_job(name, lambda j: j.move_to("Uploading", "Uploading generated training model"))
            self._upload(job, workdir, log_path)
            self.backend.change_training_job(name, lambda j: j.move_to("Completed", "Training job completed",
                                                                        status="Completed"))
        except JobStopped as stopped:
            self.backend.change_training_job(name, lambda j: (
                j.move_to("MaxRuntimeExceeded" if "time limit" in str(stopped) else "Stopped", str(stopped),
                          status="Stopped")))
        except Exception as error:  # noqa: BLE001 - any error ends the job as Failed, with its reason
            logger.exception("training job failed", job=name)
            self._fail(name, f"ClientError: {error}"[:FAILURE_REASON_MAX])
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._processes.pop(name, None)

    def _fail(self, name: str, reason: str) -> None:
        def mark(job: "TrainingJob") -> None:
            job.failure_reason = reason
            job.move_to("Failed", reason.splitlines()[0], status="Failed")
        self.backend.change_training_job(name, mark)

    def _record_metrics(self, name: str, log_path: Path) -> None:
        job = self.backend.training_jobs[name]
        definitions = job.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        metrics = final_metrics(text, definitions)
        if metrics:
            self.backend.change_training_job(name, lambda j: setattr(j, "final_metrics", metrics))

    def _download(self, job: "TrainingJob", workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        self.backend.change_training_job(job.name, lambda j: (
            setattr(j, "training_start_time", now()),
            j.move_to("Downloading", "Downloading input data")))
        s3 = aws.s3_client(self.settings.region)
        for channel in job.request.get("InputDataConfig", []):
            target = workdir / "input" / "data" / channel["ChannelName"]
            target.mkdir(parents=True, exist_ok=True)
            uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
            if aws.download_prefix(s3, uri, target, cache=self.settings.state_dir / "cache" / "s3") == 0:
                raise RuntimeError(f"Data download failed: no objects under {uri} for channel {channel['ChannelName']}")
        hyperparameters = decode_hyperparameters(job.request.get("HyperParameters", {}))
        submit = str(hyperparameters["sagemaker_submit_directory"])
        code = workdir / "code"
        code.mkdir(parents=True)
        archive = aws.download_object(s3, submit, workdir / "sourcedir.tar.gz") if submit.startswith("s3://") \
            else Path(submit.removeprefix("file://"))
        with tarfile.open(archive) as tar:
            tar.extractall(code, filter="data")

    def _prepare(self, job: "TrainingJob", workdir: Path) -> tuple[list[str], dict[str, str]]:
        request = job.request
        hyperparameters = decode_hyperparameters(request.get("HyperParameters", {}))
        channels = [c["ChannelName"] for c in request.get("InputDataConfig", [])]
        config_dir = workdir / "input" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        model_dir, output_data = workdir / "model", workdir / "output" / "data"
        for directory in (model_dir, output_data):
            directory.mkdir(parents=True, exist_ok=True)
        resource = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "lo"}
        (config_dir / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
        (config_dir / "resourceconfig.json").write_text(json.dumps(resource))
        (config_dir / "inputdataconfig.json").write_text(json.dumps(
            {c["ChannelName"]: {k: v for k, v in c.items() if k != "ChannelName"} for c in request.get("InputDataConfig", [])}))
        program = str(hyperparameters["sagemaker_program"])
        command = [sys.executable, program, *script_arguments(hyperparameters)]
        cpus = os.cpu_count() or 1
        script_hps = {k: v for k, v in hyperparameters.items() if not is_sagemaker_hyperparameter(k)}
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(self.settings.job_threads(self.backend.running_training_jobs())),
            "PYTHONPATH": os.pathsep.join([str(workdir / "code"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1",
            "TRAINING_JOB_NAME": job.name,
            "TRAINING_JOB_ARN": job.arn,
            "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_data),
            "SM_OUTPUT_DIR": str(workdir / "output"),
            "SM_INPUT_DIR": str(workdir / "input"),
            "SM_INPUT_CONFIG_DIR": str(config_dir),
            "SM_CHANNELS": json.dumps(channels),
            "SM_NUM_GPUS": "0",
            "SM_NUM_CPUS": str(cpus),
            "SM_HOSTS": json.dumps(["algo-1"]),
            "SM_CURRENT_HOST": "algo-1",
            "SM_USER_ENTRY_POINT": program,
            "SM_MODULE_DIR": str(hyperparameters["sagemaker_submit_directory"]),
            "SM_HPS": json.dumps(script_hps),
            "SM_USER_ARGS": json.dumps(script_arguments(hyperparameters)),
        }
        for channel in channels:
            env[f"SM_CHANNEL_{channel.upper()}"] = str(workdir / "input" / "data" / channel)
        for key, value in script_hps.items():
            env[f"SM_HP_{key.upper().replace('-', '_')}"] = value if isinstance(value, str) else json.dumps(value)
        env["SM_TRAINING_ENV"] = json.dumps({
            "job_name": job.name, "channel_input_dirs": {c: env[f"SM_CHANNEL_{c.upper()}"] for c in channels},
            "hyperparameters": script_hps, "model_dir": str(model_dir), "output_data_dir": str(output_data),
            "current_host": "algo-1", "hosts": ["algo-1"], "num_gpus": 0, "num_cpus": cpus,
            "user_entry_point": program, "module_dir": env["SM_MODULE_DIR"],
        })
        if "DebugHookConfig" in request:
            path = config_dir / "debughookconfig.json"
            path.write_text(json.dumps(debug_hook_config(request["DebugHookConfig"], workdir / "output" / "tensors")))
            env["SMDEBUG_CONFIG_FILE_PATH"] = str(path)
        env.update(request.get("Environment", {}))
        return command, env

    def _execute(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                 on_line: Callable[[str], None] | None) -> int:
        limit = self.backend.training_jobs[name].request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        with open(log_path, "a", buffering=1) as log:
            log.write(f"Invoking script with the following command:\n{shlex.join(command)}\n")
            process = start_process(command, cwd, env, self.image)
            with self._lock:
                self._processes[name] = process
                # A stop that came before the process was registered (while the data downloaded) found
                # nothing to stop; from here on stop() finds it.
                stopped_early = self.backend.training_jobs[name].stop_requested
            if stopped_early:
                terminate(process)
            with time_limit(process, limit) as timed_out:
                assert process.stdout is not None
                for line in process.stdout:
                    log.write(line)
                    if on_line:
                        try:
                            on_line(line)
                        except Exception:  # noqa: BLE001 - a tuner's bookkeeping must not kill the job
                            logger.exception("line callback failed", job=name)
                process.stdout.close()
                returncode = process.wait()
        if timed_out.is_set():
            raise JobStopped(f"Training job reached its time limit of {limit} seconds (MaxRuntimeInSeconds)")
        return returncode

    def _upload(self, job: "TrainingJob", workdir: Path, log_path: Path) -> None:
        s3 = aws.s3_client(self.settings.region)
        prefix = output_prefix(job.request, job.name)
        if job.request["OutputDataConfig"].get("CompressionType") == "NONE":
            # AWS's choice for large models: no time spent compressing weights that barely compress.
            model_uri = aws.join_s3(prefix, "model") + "/"
            aws.upload_tree(s3, workdir / "model", model_uri)
        else:
            model_uri = aws.upload_file(s3, _tar_directory(workdir / "model", workdir / "model.tar.gz"),
                                        aws.join_s3(prefix, "model.tar.gz"))
        self.backend.change_training_job(job.name, lambda j: setattr(j, "model_artifacts", model_uri))
        output_data = workdir / "output" / "data"
        if any(output_data.iterdir()):
            aws.upload_file(s3, _tar_directory(output_data, workdir / "output.tar.gz"), aws.join_s3(prefix, "output.tar.gz"))
        request = job.request
        if "DebugHookConfig" in request:
            tensors = workdir / "output" / "tensors"
            if tensors.exists() and request["DebugHookConfig"].get("S3OutputPath"):
                aws.upload_tree(s3, tensors, request["DebugHookConfig"]["S3OutputPath"])
            if request.get("DebugRuleConfigurations"):
                self._evaluate_rules(job, tensors, workdir / "code")
        if "ProfilerConfig" in request:
            self._upload_profiler_report(job, output_data, s3)

    def _evaluate_rules(self, job: "TrainingJob", tensors: Path, code: Path) -> None:
        configurations = job.request["DebugRuleConfigurations"]
        pending = [{"RuleConfigurationName": c["RuleConfigurationName"],
                    "RuleEvaluationJobArn": self.settings.arn("processing-job", f"{job.name}-{c['RuleConfigurationName']}"),
                    "RuleEvaluationStatus": "InProgress", "LastModifiedTime": now()} for c in configurations]
        self.backend.change_training_job(job.name, lambda j: setattr(j, "debug_rule_statuses", pending))
        results = run_debug_rules(configurations, tensors, code, self.image)
        statuses = [{**status, **results[status["RuleConfigurationName"]], "LastModifiedTime": now()}
                    for status in pending]
        self.backend.change_training_job(job.name, lambda j: setattr(j, "debug_rule_statuses", statuses))

    def _upload_profiler_report(self, job: "TrainingJob", output_data: Path, s3) -> None:
        """The job's profiler output and report go where AWS's ProfilerReport rule puts its own:
        <S3OutputPath>/<job>/rule-output/ProfilerReport/profiler-output/ (profiler-report.html at its root)."""
        base = job.request["ProfilerConfig"].get("S3OutputPath") or job.request["OutputDataConfig"]["S3OutputPath"]
        target = aws.join_s3(base, job.name, "rule-output", "ProfilerReport", "profiler-output")
        uploaded = 0
        if (output_data / PROFILER_DIR).is_dir():
            uploaded += aws.upload_tree(s3, output_data / PROFILER_DIR, aws.join_s3(target, "profiler-reports"))
        if (output_data / REPORT_DIR).is_dir():
            uploaded += aws.upload_tree(s3, output_data / REPORT_DIR, target)
            report = output_data / REPORT_DIR / "report.html"
            if report.exists():
                aws.upload_file(s3, report, aws.join_s3(target, "profiler-report.html"))
        found = uploaded > 0
        statuses = [{
            "RuleConfigurationName": c["RuleConfigurationName"],
            "RuleEvaluationJobArn": self.settings.arn("processing-job", f"{job.name}-{c['RuleConfigurationName']}"),
            "RuleEvaluationStatus": "NoIssuesFound" if found else "Error",
            **({} if found else {"StatusDetails": "The training job wrote no profiler output"}),
            "LastModifiedTime": now(),
        } for c in job.request.get("ProfilerRuleConfigurations", [])]
        if statuses:
            self.backend.change_training_job(job.name, lambda j: setattr(j, "profiler_rule_statuses", statuses))


def _tail(path: Path, size: int = 20_000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")
