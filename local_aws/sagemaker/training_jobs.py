"""Runs a training job the way SageMaker runs a framework container, as a local process.

Per job, a directory plays the container's /opt/ml (`SAGEMAKER_BASE_DIR`, which AWS's
training toolkit honours):

    input/data/<channel>/   the S3 channels, downloaded (File mode)
    input/config/           hyperparameters.json, inputdataconfig.json, resourceconfig.json,
                            debughookconfig.json (when DebugHookConfig is set)
    checkpoints/            CheckpointConfig's S3Uri, downloaded before and uploaded after the job
    code/                   the toolkit unpacks sagemaker_submit_directory here
    model/                  SM_MODEL_DIR, tarred to <S3OutputPath>/<job>/output/model.tar.gz, or with
                            OutputDataConfig.CompressionType NONE uploaded as it is under .../output/model/
    output/data/            SM_OUTPUT_DATA_DIR, tarred to .../output/output.tar.gz
    output/failure          the toolkit's failure message: the job's FailureReason
    output/tensors/         smdebug's tensors, uploaded to DebugHookConfig.S3OutputPath

The process is the image's own entry point: AWS's `sagemaker-training` toolkit (its `train`
command), which imports the framework module the image names (`SAGEMAKER_TRAINING_MODULE`),
pip-installs the source's requirements.txt, maps the hyperparameters to arguments and runs
the script, in the interpreter the settings name for the image (`training_python`). What the
toolkit refuses, AWS refuses.

The log (stdout and stderr) is kept under <state>/logs/<job>.log, as CloudWatch keeps it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from . import s3_transfer
from .exceptions import ValidationException
from .framework_image import FrameworkImage, JobProcess, start_process, terminate, time_limit
from .image_packages import with_constraints, write_constraints
from .records import now
from .rules import run_debug_rules

if TYPE_CHECKING:
    from .config import Settings
    from .records import TrainingJob
    from .state import SageMakerState

logger = Logger(service="local-sagemaker")

FAILURE_REASON_MAX = 1024
# The training image's entry point: `train`, the console script of AWS's sagemaker-training toolkit.
TOOLKIT_ENTRY_POINT = "sagemaker_training.cli.train"
HOST = "algo-1"
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


def failure_reason(log_tail: str, returncode: int, failure_file: Path) -> str:
    """FailureReason as AWS takes it: the container's /opt/ml/output/failure (the toolkit writes its
    ExecuteUserScriptError there, with the script's stderr), else the log's last error."""
    message = failure_file.read_text(errors="replace").strip() if failure_file.exists() else ""
    if not message:
        lines = [line for line in log_tail.splitlines() if line.strip()]
        errors = [m.group(1) for m in map(_ERROR_LINE.match, lines) if m]
        detail = errors[-1] if errors else (lines[-1].strip() if lines else "no output")
        message = f"AlgorithmError: the container exited {returncode}: {detail}"
    return message[:FAILURE_REASON_MAX]


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
    return s3_transfer.join_s3(request["OutputDataConfig"]["S3OutputPath"], job_name, "output")


def _tar_directory(directory: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(directory).as_posix())
    return tarball


class JobStopped(Exception):
    """The job ended on request or on its time limit, not by failing."""


class TrainingRunner:
    def __init__(self, settings: "Settings", state: "SageMakerState") -> None:
        self.settings = settings
        self.state = state
        self._processes: dict[str, JobProcess] = {}
        preload = self.settings.framework_preload
        # The image (forked for rule evaluations) starts no OpenMP pool (one would not survive a fork).
        self.image = FrameworkImage(preload, env={**os.environ, "OMP_NUM_THREADS": "1"}) if preload else None
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._constraints: Path | None = None  # the image's packages, pinned (image_packages.py)
        self._constraints_lock = threading.Lock()

    # ----- the operations' side ----------------------------------------------------------

    def validate(self, params: dict[str, Any]) -> None:
        hyperparameters = decode_hyperparameters(params.get("HyperParameters", {}))
        for needed in ("sagemaker_program", "sagemaker_submit_directory"):
            if needed not in hyperparameters:
                raise ValidationException(
                    f"The local SageMaker runs script mode only: hyperparameter {needed!r} is required")
        for channel in params.get("InputDataConfig", []):
            source = channel["DataSource"].get("S3DataSource")
            if not source or source.get("S3DataType", "S3Prefix") not in ("S3Prefix", "ManifestFile"):
                raise ValidationException(f"Channel {channel['ChannelName']!r}: the local SageMaker supports "
                                          "S3DataSource with S3Prefix or ManifestFile only")
            if channel.get("InputMode", "File") != "File":
                raise ValidationException(f"Channel {channel['ChannelName']!r}: only File input mode is supported")

    def start(self, name: str, on_line: Callable[[str], None] | None = None) -> None:
        thread = threading.Thread(target=self._run, args=(name, on_line), name=f"training-{name}", daemon=True)
        with self._lock:
            self._threads[name] = thread
        thread.start()

    def stop(self, name: str) -> None:
        """StopTrainingJob's work: the job is marked Stopping and its process ended."""
        self.request_stop(name)
        self.end_process(name)

    def request_stop(self, name: str) -> None:
        """Mark the job Stopping. From here it ends Stopped, even if its process exits 0 before it
        is ended, as on AWS; this does not wait, so a job's own log thread may call it."""
        def mark(job: "TrainingJob") -> None:
            if job.status != "InProgress":  # checked under the state's lock, with the change
                raise ValidationException(
                    f"The request was rejected because the training job is in status {job.status}.")
            job.stop_requested = True
            job.move_to("Stopping", "Stopping the training job", status="Stopping")

        self.state.change_training_job(name, mark)

    def end_process(self, name: str) -> None:
        """SIGTERM a stopping job's process, then SIGKILL after a grace period; waits for it to end."""
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
            job = self.state.training_jobs.get(name)
            if job and job.status == "InProgress":
                self.stop(name)
        for name in names:
            self.wait(name, timeout=30)
        if self.image:
            self.image.stop()

    # ----- the job --------------------------------------------------------------------------

    def _run(self, name: str, on_line: Callable[[str], None] | None) -> None:
        job = self.state.training_jobs[name]
        workdir = self.settings.state_dir / "jobs" / name
        log_path = Path(job.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._download(job, workdir)
            command, env = self._prepare(job, workdir)
            cwd = workdir
            self.state.change_training_job(name, lambda j: j.move_to(
                "Training", "Training image download completed. Training in progress."))
            try:
                returncode = self._execute(name, command, env, cwd, log_path, on_line)
            finally:
                # Before any final status: whoever reacts to it reads FinalMetricDataList, and a
                # restarted job its checkpoints (SageMaker syncs them while the job runs).
                self._record_metrics(name, log_path)
                self._save_checkpoints(self.state.training_jobs[name], workdir)
            job = self.state.training_jobs[name]
            if job.stop_requested:
                raise JobStopped("The training job was stopped on request")
            if returncode != 0:
                reason = failure_reason(_tail(log_path), returncode, workdir / "output" / "failure")
                self._fail(name, reason)
                return
            self.state.change_training_job(name, lambda j: j.move_to("Uploading", "Uploading generated training model"))
            self._upload(job, workdir, log_path)
            self.state.change_training_job(name, lambda j: j.move_to("Completed", "Training job completed",
                                                                      status="Completed"))
        except JobStopped as stopped:
            why = str(stopped)  # bound here: `stopped` is unbound when the except block ends
            secondary = "MaxRuntimeExceeded" if "time limit" in why else "Stopped"
            self.state.change_training_job(name, lambda j: j.move_to(secondary, why, status="Stopped"))
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
        self.state.change_training_job(name, mark)

    def _record_metrics(self, name: str, log_path: Path) -> None:
        job = self.state.training_jobs[name]
        definitions = job.request["AlgorithmSpecification"].get("MetricDefinitions", [])
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        metrics = final_metrics(text, definitions)
        if metrics:
            self.state.change_training_job(name, lambda j: setattr(j, "final_metrics", metrics))

    def _download(self, job: "TrainingJob", workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        self.state.change_training_job(job.name, lambda j: (
            setattr(j, "training_start_time", now()),
            j.move_to("Downloading", "Downloading input data")))
        s3 = s3_transfer.s3_client(self.settings.region)
        for channel in job.request.get("InputDataConfig", []):
            target = workdir / "input" / "data" / channel["ChannelName"]
            target.mkdir(parents=True, exist_ok=True)
            source, cache = channel["DataSource"]["S3DataSource"], self.settings.state_dir / "cache" / "s3"
            uri = source["S3Uri"]
            if source.get("S3DataType") == "ManifestFile":
                try:
                    s3_transfer.download_manifest(s3, uri, target, cache=cache)
                except s3_transfer.ManifestError as error:
                    raise RuntimeError(f"Data download failed: channel {channel['ChannelName']}: {error}") from None
            elif s3_transfer.download_prefix(s3, uri, target, cache=cache) == 0:
                raise RuntimeError(f"Data download failed: no objects under {uri} for channel {channel['ChannelName']}")
        checkpoints = job.request.get("CheckpointConfig")
        if checkpoints:
            # A restarted (spot) job finds its earlier checkpoints where it wrote them.
            target = workdir / "checkpoints"
            target.mkdir(parents=True, exist_ok=True)
            s3_transfer.download_prefix(s3, s3_transfer.join_s3(checkpoints["S3Uri"], ""), target)

    def _save_checkpoints(self, job: "TrainingJob", workdir: Path) -> None:
        """SageMaker syncs the checkpoint folder to CheckpointConfig.S3Uri; here once, as the job ends."""
        config = job.request.get("CheckpointConfig")
        folder = workdir / "checkpoints"
        if not config or not folder.is_dir():
            return
        try:
            s3_transfer.upload_tree(s3_transfer.s3_client(self.settings.region), folder, config["S3Uri"])
        except Exception:  # noqa: BLE001 - the job's own outcome stands; the log says what was lost
            logger.exception("checkpoints not uploaded", job=job.name)

    def _prepare(self, job: "TrainingJob", workdir: Path) -> tuple[list[str], dict[str, str]]:
        """The container's configuration files and environment, and the image's entry point."""
        request = job.request
        config_dir = workdir / "input" / "config"
        config_dir.mkdir(parents=True, exist_ok=True)
        for directory in (workdir / "model", workdir / "output" / "data"):
            directory.mkdir(parents=True, exist_ok=True)
        instance = request["ResourceConfig"]["InstanceType"]
        resource = {"current_host": HOST, "current_instance_type": instance, "current_group_name": "homogeneousCluster",
                    "hosts": [HOST], "network_interface_name": "lo",
                    "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance,
                                         "hosts": [HOST]}]}
        (config_dir / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
        (config_dir / "resourceconfig.json").write_text(json.dumps(resource))
        (config_dir / "inputdataconfig.json").write_text(json.dumps(
            {c["ChannelName"]: {k: v for k, v in c.items() if k != "ChannelName"} for c in request.get("InputDataConfig", [])}))
        env = {
            **os.environ,  # the stack's: credentials and endpoints, as the role and the network give them on AWS
            "SAGEMAKER_BASE_DIR": str(workdir),
            "SAGEMAKER_TRAINING_MODULE": self.settings.training_module,
            # One host whose name only AWS's network resolves: the toolkit's switch for local mode skips
            # its wait for `algo-1` to resolve, and nothing else.
            "SM_STUDIO_LOCAL_MODE": "true",
            "TRAINING_JOB_NAME": job.name,
            "TRAINING_JOB_ARN": job.arn,
            "AWS_REGION": self.settings.region,
            "OMP_NUM_THREADS": str(self.settings.job_threads(self.state.running_training_jobs())),
            "PYTHONUNBUFFERED": "1",
        }
        if "DebugHookConfig" in request:
            path = config_dir / "debughookconfig.json"
            path.write_text(json.dumps(debug_hook_config(request["DebugHookConfig"], workdir / "output" / "tensors")))
            env["SMDEBUG_CONFIG_FILE_PATH"] = str(path)  # smdebug's default path is /opt/ml's
        env.update(request.get("Environment", {}))
        return [self.settings.training_python, "-m", TOOLKIT_ENTRY_POINT], with_constraints(env, self._image_constraints())

    def _image_constraints(self) -> Path:
        """The image's packages as pip constraints, read once per service: a job's requirements may add
        packages but not change the ones every job shares."""
        with self._constraints_lock:
            if self._constraints is None:
                self._constraints = write_constraints(self.settings.training_python,
                                                      self.settings.state_dir / "image-constraints.txt")
            return self._constraints

    def _execute(self, name: str, command: list[str], env: dict[str, str], cwd: Path, log_path: Path,
                 on_line: Callable[[str], None] | None) -> int:
        limit = self.state.training_jobs[name].request.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        with open(log_path, "a", buffering=1) as log:
            log.write(f"Invoking script with the following command:\n{shlex.join(command)}\n")
            # A fresh interpreter, as a container starts: the toolkit then runs the script as its own child.
            process = start_process(command, cwd, env, None)
            with self._lock:
                self._processes[name] = process
                # A stop that came before the process was registered (while the data downloaded) found
                # nothing to stop; from here on stop() finds it.
                stopped_early = self.state.training_jobs[name].stop_requested
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
        s3 = s3_transfer.s3_client(self.settings.region)
        prefix = output_prefix(job.request, job.name)
        if job.request["OutputDataConfig"].get("CompressionType") == "NONE":
            # AWS's choice for large models: no time spent compressing weights that barely compress.
            model_uri = s3_transfer.join_s3(prefix, "model") + "/"
            s3_transfer.upload_tree(s3, workdir / "model", model_uri)
        else:
            model_uri = s3_transfer.upload_file(s3, _tar_directory(workdir / "model", workdir / "model.tar.gz"),
                                        s3_transfer.join_s3(prefix, "model.tar.gz"))
        self.state.change_training_job(job.name, lambda j: setattr(j, "model_artifacts", model_uri))
        output_data = workdir / "output" / "data"
        if any(output_data.iterdir()):
            s3_transfer.upload_file(s3, _tar_directory(output_data, workdir / "output.tar.gz"), s3_transfer.join_s3(prefix, "output.tar.gz"))
        request = job.request
        if "DebugHookConfig" in request:
            tensors = workdir / "output" / "tensors"
            if tensors.exists() and request["DebugHookConfig"].get("S3OutputPath"):
                s3_transfer.upload_tree(s3, tensors, request["DebugHookConfig"]["S3OutputPath"])
            if request.get("DebugRuleConfigurations"):
                self._evaluate_rules(job, tensors, workdir / "code")
        if "ProfilerConfig" in request:
            self._upload_profiler_report(job, output_data, s3)

    def _evaluate_rules(self, job: "TrainingJob", tensors: Path, code: Path) -> None:
        configurations = job.request["DebugRuleConfigurations"]
        pending = [{"RuleConfigurationName": c["RuleConfigurationName"],
                    "RuleEvaluationJobArn": self.settings.arn("processing-job", f"{job.name}-{c['RuleConfigurationName']}"),
                    "RuleEvaluationStatus": "InProgress", "LastModifiedTime": now()} for c in configurations]
        self.state.change_training_job(job.name, lambda j: setattr(j, "debug_rule_statuses", pending))
        results = run_debug_rules(configurations, tensors, code, self.settings.debug_rules_program, self.image)
        statuses = [{**status, **results[status["RuleConfigurationName"]], "LastModifiedTime": now()}
                    for status in pending]
        self.state.change_training_job(job.name, lambda j: setattr(j, "debug_rule_statuses", statuses))

    def _upload_profiler_report(self, job: "TrainingJob", output_data: Path, s3) -> None:
        """The job's profiler output and report go where AWS's ProfilerReport rule puts its own:
        <S3OutputPath>/<job>/rule-output/ProfilerReport/profiler-output/ (profiler-report.html at its root)."""
        base = job.request["ProfilerConfig"].get("S3OutputPath") or job.request["OutputDataConfig"]["S3OutputPath"]
        target = s3_transfer.join_s3(base, job.name, "rule-output", "ProfilerReport", "profiler-output")
        uploaded = 0
        profiler_dir, report_dir = self.settings.profiler_output_dir, self.settings.profiler_report_dir
        if profiler_dir and (output_data / profiler_dir).is_dir():
            uploaded += s3_transfer.upload_tree(s3, output_data / profiler_dir, s3_transfer.join_s3(target, "profiler-reports"))
        if report_dir and (output_data / report_dir).is_dir():
            uploaded += s3_transfer.upload_tree(s3, output_data / report_dir, target)
            report = output_data / report_dir / "report.html"
            if report.exists():
                s3_transfer.upload_file(s3, report, s3_transfer.join_s3(target, "profiler-report.html"))
        found = uploaded > 0
        statuses = [{
            "RuleConfigurationName": c["RuleConfigurationName"],
            "RuleEvaluationJobArn": self.settings.arn("processing-job", f"{job.name}-{c['RuleConfigurationName']}"),
            "RuleEvaluationStatus": "NoIssuesFound" if found else "Error",
            **({} if found else {"StatusDetails": "The training job wrote no profiler output"}),
            "LastModifiedTime": now(),
        } for c in job.request.get("ProfilerRuleConfigurations", [])]
        if statuses:
            self.state.change_training_job(job.name, lambda j: setattr(j, "profiler_rule_statuses", statuses))


def _tail(path: Path, size: int = 20_000) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode(errors="replace")
