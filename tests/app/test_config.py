"""The stages in .chalice/config.json: complete, parseable, and with the region's current images."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from chalice_app.config import ConfigError, settings_from_env
from infra.images import resolve
from training.drift import DEFAULT_THRESHOLDS, Thresholds
from infra.policies import stage_env

from .conftest import CONFIG, ROOT


@pytest.mark.parametrize("stage", ["local", "dev", "prod"])
def test_every_stage_configures_the_app_completely(stage):
    settings = settings_from_env(stage_env(CONFIG, stage))
    assert settings.bucket and settings.endpoint_name.startswith(f"image-pipeline-{stage}")
    assert settings.source_dir_uri.startswith(f"s3://{settings.bucket}/")
    assert settings.tuning_ranges and settings.static_hyperparameters["arch"].startswith("resnet")


def test_the_local_stage_trains_small_and_fast():
    static = settings_from_env(stage_env(CONFIG, "local")).static_hyperparameters
    assert (static["image-size"], static["pretrained"], static["hflip-prob"]) == ("32", "none", "0")


def test_the_images_are_the_ones_the_sagemaker_sdk_resolves_for_the_region():
    images = resolve("us-east-1")
    for stage in CONFIG["stages"]:
        env = stage_env(CONFIG, stage)
        assert {name: env[name] for name in images} == images, f"run python -m infra.images --write ({stage})"


def valid_env(**changes: str) -> dict[str, str]:
    return {**stage_env(CONFIG, "local"), **changes}


@pytest.mark.parametrize("name, value, says", [
    ("MAX_TRAINING_JOBS", "four", "MAX_TRAINING_JOBS must be an integer, not 'four'"),
    ("QUIET_WINDOW_SECONDS", "1.5", "QUIET_WINDOW_SECONDS must be an integer"),
    ("GATE_MARGIN", "a bit", "GATE_MARGIN must be a number, not 'a bit'"),
    ("TUNING_RANGES", "{lr: 1}", "TUNING_RANGES is not valid JSON"),
    ("TUNING_RANGES", "[1, 2]", "TUNING_RANGES must be a JSON object"),
    ("DEBUGGER_RULE_POLICY", '["veto"]', "DEBUGGER_RULE_POLICY must be a JSON object"),
    ("DEBUGGER_RULES", "Overfit,NoSuchRule", "DEBUGGER_RULES names unknown rules ['NoSuchRule']"),
    ("MAX_RUNS_PER_DAY", "0", "MAX_RUNS_PER_DAY must be at least 1, not 0"),
    ("RECONCILE_AFTER_SECONDS", "0", "RECONCILE_AFTER_SECONDS must be at least 1, not 0"),
    ("RECONCILE_AFTER_SECONDS", "soon", "RECONCILE_AFTER_SECONDS must be an integer, not 'soon'"),
    ("MAX_RUNS_PER_DAY", "many", "MAX_RUNS_PER_DAY must be an integer, not 'many'"),
    ("MAX_IMAGE_BYTES", str(64 * 1024 * 1024), "MAX_IMAGE_BYTES must be from 1 to 6291456"),
    ("MAX_IMAGE_BYTES", "0", "MAX_IMAGE_BYTES must be from 1 to 6291456"),
    ("OPTIMISED_MIN_AGREEMENT", "99.5", "OPTIMISED_MIN_AGREEMENT must be a fraction from 0 to 1, not 99.5"),
    ("REVIEW_THRESHOLD", "60", "REVIEW_THRESHOLD must be a fraction from 0 to 1, not 60.0"),
    ("REVIEW_THRESHOLD", "high", "REVIEW_THRESHOLD must be a number, not 'high'"),
    ("REVIEW_SAMPLE_RATE", "-0.1", "REVIEW_SAMPLE_RATE must be a fraction from 0 to 1, not -0.1"),
    ("REVIEW_SAMPLES_PER_HOUR", "-1", "REVIEW_SAMPLES_PER_HOUR must be at least 0, not -1"),
    ("REVIEW_SAMPLES_PER_HOUR", "1.5", "REVIEW_SAMPLES_PER_HOUR must be an integer, not '1.5'"),
    ("REVIEW_URL_SECONDS", "0", "REVIEW_URL_SECONDS must be from 1 to 604800 seconds, not 0"),
    ("REVIEW_URL_SECONDS", "604801", "REVIEW_URL_SECONDS must be from 1 to 604800 seconds, not 604801"),
    ("UPLOAD_URL_SECONDS", "604801", "UPLOAD_URL_SECONDS must be from 1 to 604800 seconds, not 604801"),
    ("ENDPOINT_MAX_INSTANCES", "0", "ENDPOINT_MAX_INSTANCES must be at least 1, not 0"),
    ("DRIFT_WINDOW_IMAGES", "0", "DRIFT_WINDOW_IMAGES must be from 1 to 5000, not 0"),
    ("DRIFT_WINDOW_IMAGES", "5001", "DRIFT_WINDOW_IMAGES must be from 1 to 5000, not 5001"),
    ("DRIFT_WINDOW_IMAGES", "lots", "DRIFT_WINDOW_IMAGES must be an integer, not 'lots'"),
    ("DRIFT_MIN_IMAGES", "0", "DRIFT_MIN_IMAGES must be from 1 to DRIFT_WINDOW_IMAGES (200), not 0"),
    ("DRIFT_MIN_IMAGES", "201", "DRIFT_MIN_IMAGES must be from 1 to DRIFT_WINDOW_IMAGES (200), not 201"),
    ("DRIFT_PSI_THRESHOLD", "0", "DRIFT_PSI_THRESHOLD must be a number above 0, not 0.0"),
    ("DRIFT_PSI_THRESHOLD", "inf", "DRIFT_PSI_THRESHOLD must be a number above 0, not inf"),
    ("DRIFT_EMBEDDING_THRESHOLD", "-1", "DRIFT_EMBEDDING_THRESHOLD must be a number above 0, not -1.0"),
    ("DRIFT_EMBEDDING_THRESHOLD", "far", "DRIFT_EMBEDDING_THRESHOLD must be a number, not 'far'"),
    ("DRIFT_CLASS_P_VALUE", "5", "DRIFT_CLASS_P_VALUE must be a fraction from 0 to 1, not 5.0"),
    ("DRIFT_REVIEW_SAMPLE_RATE", "1.5", "DRIFT_REVIEW_SAMPLE_RATE must be a fraction from 0 to 1, not 1.5"),
])
def test_a_malformed_setting_is_a_config_error_naming_it(name, value, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        settings_from_env(valid_env(**{name: value}))


def test_numbers_are_read_and_an_empty_one_is_its_default():
    settings = settings_from_env(valid_env(MAX_TRAINING_JOBS="7", GATE_MARGIN="0.25", TOP_K=""))
    assert (settings.max_training_jobs, settings.gate_margin, settings.top_k) == (7, 0.25, 5)
    assert settings.optimised_min_agreement == 0.995
    assert settings_from_env(valid_env(OPTIMISED_MIN_AGREEMENT="0.99")).optimised_min_agreement == 0.99
    review = (settings.review_threshold, settings.review_sample_rate, settings.review_samples_per_hour,
              settings.review_url_seconds)
    assert review == (0.6, 0.02, 100, 900)
    changed = settings_from_env(valid_env(REVIEW_THRESHOLD="0.5", REVIEW_SAMPLE_RATE="0", REVIEW_SAMPLES_PER_HOUR="0",
                                          REVIEW_URL_SECONDS="60"))
    assert (changed.review_threshold, changed.review_sample_rate, changed.review_samples_per_hour,
            changed.review_url_seconds) == (0.5, 0.0, 0, 60)
    drift = (settings.drift_window_images, settings.drift_min_images, settings.drift_thresholds,
             settings.drift_review_sample_rate)
    assert drift == (200, 100, DEFAULT_THRESHOLDS, 0.2)
    changed = settings_from_env(valid_env(DRIFT_WINDOW_IMAGES="50", DRIFT_MIN_IMAGES="50", DRIFT_PSI_THRESHOLD="0.1",
                                          DRIFT_CLASS_P_VALUE="0.01", DRIFT_EMBEDDING_THRESHOLD="2",
                                          DRIFT_REVIEW_SAMPLE_RATE="1"))
    assert (changed.drift_window_images, changed.drift_min_images, changed.drift_thresholds,
            changed.drift_review_sample_rate) == (50, 50, Thresholds(0.1, 0.01, 2.0), 1.0)


@pytest.mark.parametrize("prefix", ["IP-dev", "ip_dev", "ip.dev", "-ip", "ip-", "ip dev", ""])
def test_the_name_prefix_must_be_a_lower_case_sagemaker_name(prefix):
    with pytest.raises(ConfigError, match="NAME_PREFIX"):
        settings_from_env(valid_env(NAME_PREFIX=prefix))


@pytest.mark.parametrize("prefix", ["ip-dev", "a", "ip--2", "0abc"])
def test_lower_case_prefixes_are_accepted(prefix):
    assert settings_from_env(valid_env(NAME_PREFIX=prefix)).name_prefix == prefix


def import_app_in_lambda(**changes: str) -> subprocess.CompletedProcess:
    """`import app` as Lambda's runtime does at a cold start (it sets AWS_LAMBDA_FUNCTION_NAME)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(valid_env(**changes), AWS_LAMBDA_FUNCTION_NAME="image-pipeline-local-on_incoming_image",
               AWS_DEFAULT_REGION="us-east-1", POWERTOOLS_TRACE_DISABLED="true")
    return subprocess.run([sys.executable, "-c", "import app"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_bad_setting_fails_the_lambda_cold_start_with_its_message():
    started = import_app_in_lambda(DEBUGGER_RULES="Overfit,NoSuchRule")
    assert started.returncode != 0
    assert "ConfigError: DEBUGGER_RULES names unknown rules ['NoSuchRule']" in started.stderr
    healthy = import_app_in_lambda()
    assert healthy.returncode == 0, healthy.stderr
