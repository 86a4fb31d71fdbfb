"""The stages in .chalice/config.json: complete, parseable, and with the region's current images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalice_app.config import settings_from_env
from infra.images import resolve
from infra.policies import stage_env

CONFIG = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())


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
