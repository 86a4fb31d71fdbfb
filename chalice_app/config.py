"""The app's configuration: environment variables set per stage in `.chalice/config.json`.

Names, URIs, images and tuning settings reach the Lambda here and nowhere else, so
the same code runs on AWS and on one machine. JSON-valued variables hold the
structured settings (static hyperparameters, tuning ranges, alarms).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from collections.abc import Mapping
from typing import Any

from training.drift import DEFAULT_THRESHOLDS, Thresholds
from training.image_contract import MAX_IMAGE_BYTES
from training.metrics import DEBUGGER_RULES, DEFAULT_MIN_AGREEMENT

# The seed projects' search space (lr 0.001-0.1 log-scaled, batch sizes 32..256,
# a few epochs, SGD momentum); the configuration may replace any of it.
DEFAULT_TUNING_RANGES: dict[str, dict[str, Any]] = {
    "lr": {"type": "continuous", "min": 0.001, "max": 0.1, "scaling": "Logarithmic"},
    "batch-size": {"type": "categorical", "values": ["32", "64", "128", "256"]},
    "epochs": {"type": "integer", "min": 2, "max": 5},
    "momentum": {"type": "continuous", "min": 0.5, "max": 0.9},
}
DEFAULT_STATIC_HYPERPARAMETERS: dict[str, str] = {
    "arch": "resnet18",
    "optimizer": "sgd",
    "freeze": "backbone",
    "pretrained": "imagenet",
    "patience": "3",
}
# Where the Debugger rules run: in the final job itself (training/rules.py on its own tensors), or
# SageMaker's managed Debugger and Profiler, which are closed to new accounts since 2026-07-30.
DEBUGGER_SERVICES = ("in-job", "managed")
VETO, WARN = "veto", "warn"
# What IssuesFound means per rule: "veto", the model is broken and is not deployed; "warn", a finding
# for the report and the run's reason. Measured over seeds and budgets by bench/rule_verdicts.py.
# Over 7 healthy runs (seeds, learning rates, frozen or not) and 3 broken ones (lr 50, lr 1000, lr 0):
# Overfit fired on 5 healthy runs (BatchNorm settling, frozen random trunks), Overtraining on 3,
# LossNotDecreasing (single-batch losses) on 1; VanishingGradient, PoorWeightInitialization and
# ExplodingTensor on none, and ExplodingTensor on every diverged run (its losses turn NaN).
DEFAULT_RULE_POLICY: dict[str, str] = {
    "VanishingGradient": VETO,
    "ExplodingTensor": VETO,
    "PoorWeightInitialization": VETO,
    "Overfit": WARN,
    "Overtraining": WARN,
    "LossNotDecreasing": WARN,
}


# Who may call the API (chalice_app/auth.py says what each means).
AUTH_MODES = ("none", "iam", "cognito")
# What SageMaker allows in a name, lower case only (ARNs carry names lower-cased).
NAME_PREFIX_PATTERN = re.compile(r"^[a-z0-9](-*[a-z0-9])*$")


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


def _json(env: dict[str, str], name: str, default: Any) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{name} is not valid JSON: {error}") from error
    if not isinstance(value, type(default)):
        raise ConfigError(f"{name} must be a JSON {'object' if isinstance(default, dict) else 'array'}, "
                          f"not {raw!r}")
    return value


def _number(env: dict[str, str], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {noun}, not {raw!r}") from None


def _int(env: dict[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int)


def _float(env: dict[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float)


def _bool(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    return default if raw is None or raw == "" else raw.strip().lower() in {"1", "true", "yes", "on"}


def _debugger_rules(env: dict[str, str]) -> tuple[str, ...]:
    """The rules the final job runs, and so the gate's vetoes (AWS's defaults fire readily
    on short runs from random weights: a stage may run fewer)."""
    raw = env.get("DEBUGGER_RULES")
    if raw is None or not raw.strip():
        return DEBUGGER_RULES
    rules = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = sorted(set(rules) - set(DEBUGGER_RULES))
    if unknown:
        raise ConfigError(f"DEBUGGER_RULES names unknown rules {unknown}; known: {', '.join(DEBUGGER_RULES)}")
    return rules


def _rule_policy(env: dict[str, str]) -> dict[str, str]:
    policy = {**DEFAULT_RULE_POLICY, **_json(env, "DEBUGGER_RULE_POLICY", {})}
    unknown = sorted(set(policy) - set(DEBUGGER_RULES))
    bad = sorted(rule for rule, action in policy.items() if action not in (VETO, WARN))
    if unknown or bad:
        raise ConfigError(f"DEBUGGER_RULE_POLICY: unknown rules {unknown}, or actions not {VETO!r}/{WARN!r} "
                          f"for {bad}")
    return policy


def _int_in(env: dict[str, str], name: str, default: int, low: int, high: int | None = None,
            unit: str = "") -> int:
    """An integer setting within [low, high] (no upper bound when high is None)."""
    value = _int(env, name, default)
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be {bounds}{unit}, not {value}")
    return value


def _fraction(env: dict[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a fraction from 0 to 1, not {value}")
    return value


def endpoint_max_instances(env: dict[str, str]) -> int:
    """ENDPOINT_MAX_INSTANCES: the endpoint's autoscaling ceiling; app.py sizes the incoming
    queue's Lambda concurrency from it at packaging, where only the environment exists."""
    return _int_in(env, "ENDPOINT_MAX_INSTANCES", 1, 1)


# A presigned URL signed with SigV4 lives at most 7 days (one signed with a Lambda role's session
# credentials dies with them sooner).
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600


# A window is one Query on the predictions table's `drift` index (a few hundred bytes an image):
# past this many images a minute's check reads megabytes for no better statistic.
MAX_DRIFT_WINDOW = 5000


def _drift_window(env: dict[str, str]) -> tuple[int, int]:
    """DRIFT_WINDOW_IMAGES and DRIFT_MIN_IMAGES: the window's size, and the fewest images it needs
    before it is compared at all (a window that could never reach it would never be checked)."""
    window = _int_in(env, "DRIFT_WINDOW_IMAGES", 200, 1, MAX_DRIFT_WINDOW)
    least = _int(env, "DRIFT_MIN_IMAGES", 100)
    if not 1 <= least <= window:
        raise ConfigError(f"DRIFT_MIN_IMAGES must be from 1 to DRIFT_WINDOW_IMAGES ({window}), not {least}")
    return window, least


def _above_zero(env: dict[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not 0.0 < value < float("inf"):
        raise ConfigError(f"{name} must be a number above 0, not {value}")
    return value


def auth_mode(env: Mapping[str, str]) -> str:
    """The stage's AUTH, checked."""
    return _choice(env, "AUTH", "none", AUTH_MODES)


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    region: str
    name_prefix: str
    bucket: str
    pipeline_table: str
    predictions_table: str
    training_queue: str
    incoming_queue: str
    training_prefix: str
    incoming_prefix: str
    manifest_prefix: str
    output_prefix: str
    sagemaker_role_arn: str
    training_image: str
    inference_image: str
    rules_image: str
    source_dir_uri: str
    endpoint_name: str
    training_instance_type: str
    inference_instance_type: str
    static_hyperparameters: dict[str, str] = field(default_factory=dict)
    tuning_ranges: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning_strategy: str = "Bayesian"
    max_training_jobs: int = 4
    max_parallel_jobs: int = 2
    early_stopping: str = "Auto"
    spot_training: bool = False
    max_runtime_seconds: int = 3600
    max_wait_seconds: int = 7200
    quiet_window_seconds: int = 300
    # How long the schedule leaves an active run's step to its event (and Lambda's own two retries
    # of it, about 3 minutes) before it drives the step itself; every step is idempotent.
    reconcile_after_seconds: int = 300
    min_images: int = 20
    # Runs that new data may start per UTC day (each costs a tuning job); then a burst waits for the next day.
    max_runs_per_day: int = 10
    gate_margin: float = 0.0
    rollback_alarms: tuple[str, ...] = ()
    max_image_bytes: int = MAX_IMAGE_BYTES
    top_k: int = 5
    # The endpoint's variant scales between 1 and this many instances on its invocations per instance
    # per minute (chalice_app/scaling.py says how the target was chosen).
    endpoint_max_instances: int = 1
    target_invocations_per_instance: float = 30.0
    upload_url_seconds: int = 900
    debugger_service: str = "in-job"
    debugger_rules: tuple[str, ...] = DEBUGGER_RULES
    debugger_rule_policy: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RULE_POLICY))
    debugger_rule_parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    debug_save_interval: int = 100
    # The final job's optimised model goes into the artefact only at this top-1 agreement with the eager model.
    optimised_min_agreement: float = DEFAULT_MIN_AGREEMENT
    # The review queue (chalice_app/review.py): a prediction whose top-1 probability is below the
    # threshold waits for a person's label; so does a random sample of the others, at most so many
    # an hour; the image's URL in GET /review lives this long.
    review_threshold: float = 0.6
    review_sample_rate: float = 0.02
    review_samples_per_hour: int = 100
    review_url_seconds: int = 900
    # Image drift (chalice_app/drift_watch.py): each model version's newest window of live images is
    # compared with its test split's reference once it holds at least drift_min_images; over any
    # threshold it is drifting, and its predictions are sampled for review at the drift rate.
    drift_window_images: int = 200
    drift_min_images: int = 100
    drift_psi_threshold: float = DEFAULT_THRESHOLDS.psi
    drift_class_p_value: float = DEFAULT_THRESHOLDS.class_p_value
    drift_embedding_threshold: float = DEFAULT_THRESHOLDS.embedding_distance
    drift_review_sample_rate: float = 0.2
    # Who may call the API (chalice_app/auth.py); with cognito, the user pool and its hosted UI's
    # domain (<prefix>.auth.<region>.amazoncognito.com) the console signs in through.
    auth: str = "none"
    cognito_user_pool_id: str = ""
    cognito_domain: str = ""

    @property
    def drift_thresholds(self) -> Thresholds:
        return Thresholds(psi=self.drift_psi_threshold, class_p_value=self.drift_class_p_value,
                          embedding_distance=self.drift_embedding_threshold)

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def settings_from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)

    def need(name: str) -> str:
        value = env.get(name, "")
        if not value:
            raise ConfigError(f"environment variable {name} is not set (see .chalice/config.json)")
        return value

    prefix = env.get("NAME_PREFIX", "imgpipe")
    # Tuning job names are limited to 32 characters; the run id takes 20 of them.
    if len(prefix) > 11:
        raise ConfigError(f"NAME_PREFIX {prefix!r} is longer than 11 characters")
    # SageMaker lower-cases names in its ARNs, and the policies scope sagemaker:* to "<prefix>-*":
    # an upper-case prefix would name jobs the policies do not match.
    if not NAME_PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigError(f"NAME_PREFIX {prefix!r} must be lower-case letters, digits and inner hyphens "
                          f"({NAME_PREFIX_PATTERN.pattern})")
    static = {**DEFAULT_STATIC_HYPERPARAMETERS, **_json(env, "STATIC_HYPERPARAMETERS", {})}
    drift_window, drift_min = _drift_window(env)
    auth = auth_mode(env)
    return Settings(
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        name_prefix=prefix,
        bucket=need("BUCKET"),
        pipeline_table=need("PIPELINE_TABLE"),
        predictions_table=need("PREDICTIONS_TABLE"),
        training_queue=need("TRAINING_QUEUE"),
        incoming_queue=need("INCOMING_QUEUE"),
        training_prefix=env.get("TRAINING_PREFIX", "training-data/"),
        incoming_prefix=env.get("INCOMING_PREFIX", "incoming/"),
        manifest_prefix=env.get("MANIFEST_PREFIX", "manifests/"),
        output_prefix=env.get("OUTPUT_PREFIX", "sagemaker/"),
        sagemaker_role_arn=need("SAGEMAKER_ROLE_ARN"),
        training_image=need("TRAINING_IMAGE"),
        inference_image=need("INFERENCE_IMAGE"),
        # The rule container image only the managed Debugger uses.
        rules_image=need("DEBUGGER_RULES_IMAGE") if env.get("DEBUGGER_SERVICE") == "managed"
        else env.get("DEBUGGER_RULES_IMAGE", ""),
        source_dir_uri=need("SOURCE_DIR_URI"),
        endpoint_name=need("ENDPOINT_NAME"),
        training_instance_type=env.get("TRAINING_INSTANCE_TYPE", "ml.m5.xlarge"),
        inference_instance_type=env.get("INFERENCE_INSTANCE_TYPE", "ml.m5.large"),
        static_hyperparameters={k: str(v) for k, v in static.items()},
        tuning_ranges=_json(env, "TUNING_RANGES", DEFAULT_TUNING_RANGES),
        tuning_strategy=env.get("TUNING_STRATEGY", "Bayesian"),
        max_training_jobs=_int(env, "MAX_TRAINING_JOBS", 4),
        max_parallel_jobs=_int(env, "MAX_PARALLEL_JOBS", 2),
        early_stopping=env.get("EARLY_STOPPING", "Auto"),
        spot_training=_bool(env, "SPOT_TRAINING", False),
        max_runtime_seconds=_int(env, "MAX_RUNTIME_SECONDS", 3600),
        max_wait_seconds=_int(env, "MAX_WAIT_SECONDS", 7200),
        quiet_window_seconds=_int(env, "QUIET_WINDOW_SECONDS", 300),
        reconcile_after_seconds=_int_in(env, "RECONCILE_AFTER_SECONDS", 300, 1),
        min_images=_int(env, "MIN_IMAGES", 20),
        max_runs_per_day=_int_in(env, "MAX_RUNS_PER_DAY", 10, 1),
        gate_margin=_float(env, "GATE_MARGIN", 0.0),
        rollback_alarms=tuple(_json(env, "ROLLBACK_ALARMS", [])),
        # A stage may accept smaller images than the contract, never larger: training and the endpoint
        # refuse anything over the contract's limit whatever the stage says.
        max_image_bytes=_int_in(env, "MAX_IMAGE_BYTES", MAX_IMAGE_BYTES, 1, MAX_IMAGE_BYTES, " bytes"),
        top_k=_int(env, "TOP_K", 5),
        endpoint_max_instances=endpoint_max_instances(env),
        target_invocations_per_instance=_float(env, "TARGET_INVOCATIONS_PER_INSTANCE", 30.0),
        upload_url_seconds=_int_in(env, "UPLOAD_URL_SECONDS", 900, 1, MAX_PRESIGNED_SECONDS, " seconds"),
        debugger_service=_choice(env, "DEBUGGER_SERVICE", "in-job", DEBUGGER_SERVICES),
        debugger_rules=_debugger_rules(env),
        debugger_rule_policy=_rule_policy(env),
        debugger_rule_parameters={rule: {k: str(v) for k, v in params.items()}
                                  for rule, params in _json(env, "DEBUGGER_RULE_PARAMETERS", {}).items()},
        debug_save_interval=_int(env, "DEBUG_SAVE_INTERVAL", 100),
        # A fraction of the test split; 1 asks for every answer the same.
        optimised_min_agreement=_fraction(env, "OPTIMISED_MIN_AGREEMENT", DEFAULT_MIN_AGREEMENT),
        review_threshold=_fraction(env, "REVIEW_THRESHOLD", 0.6),
        review_sample_rate=_fraction(env, "REVIEW_SAMPLE_RATE", 0.02),
        review_samples_per_hour=_int_in(env, "REVIEW_SAMPLES_PER_HOUR", 100, 0),
        review_url_seconds=_int_in(env, "REVIEW_URL_SECONDS", 900, 1, MAX_PRESIGNED_SECONDS, " seconds"),
        drift_window_images=drift_window,
        drift_min_images=drift_min,
        drift_psi_threshold=_above_zero(env, "DRIFT_PSI_THRESHOLD", DEFAULT_THRESHOLDS.psi),
        drift_class_p_value=_fraction(env, "DRIFT_CLASS_P_VALUE", DEFAULT_THRESHOLDS.class_p_value),
        drift_embedding_threshold=_above_zero(env, "DRIFT_EMBEDDING_THRESHOLD", DEFAULT_THRESHOLDS.embedding_distance),
        drift_review_sample_rate=_fraction(env, "DRIFT_REVIEW_SAMPLE_RATE", 0.2),
        auth=auth,
        cognito_user_pool_id=need("COGNITO_USER_POOL_ID") if auth == "cognito" else "",
        cognito_domain=need("COGNITO_DOMAIN") if auth == "cognito" else "",
    )


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The settings of this Lambda's environment (read once per container)."""
    return settings_from_env()
