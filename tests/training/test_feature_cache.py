"""Frozen-trunk features shared between training jobs, through train.py's script-mode contract.

Each job is a real process on a few classes of the digits; the cache is a directory here
(the S3 store is exercised by the local SageMaker's tuning test and below with moto).
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws

from tests.training.digits_subset import small_copy
from tests.training_job import TINY_HYPERPARAMETERS, metric_lines, run_training_job, run_training_script
from training import feature_cache
from training.data import Sample

FROZEN = {**TINY_HYPERPARAMETERS, "freeze": "backbone", "epochs": "2", "min-images-per-class": "3", "report": "off",
          "optimise": "off"}


def entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir()) if cache.exists() else []


def job(tmp: Path, name: str, data_dir: Path, cache: Path, **hyperparameters: str):
    (tmp / name).mkdir()
    run = run_training_job(tmp / name, {"training": data_dir},
                           {**FROZEN, "feature-cache": str(cache), **hyperparameters})
    assert run.returncode == 0, run.log[-3000:]
    return run


@pytest.fixture
def data_dir(tmp_path, digits_labels) -> Path:
    return small_copy(digits_labels, tmp_path / "data")


def test_a_second_job_loads_the_features_and_trains_exactly_as_the_first(tmp_path, data_dir):
    cache = tmp_path / "cache"
    first = job(tmp_path, "first", data_dir, cache)
    assert "feature cache miss" in first.log and "feature cache written" in first.log
    assert [p.suffix for p in entries(cache)] == [".pt"]

    second = job(tmp_path, "second", data_dir, cache)
    assert "feature cache hit" in second.log and "cached frozen-trunk features" not in second.log
    assert metric_lines(second.log) == metric_lines(first.log)
    assert (second.model_dir / "model.pth").read_bytes() == (first.model_dir / "model.pth").read_bytes()
    assert not (second.output_dir / "report").exists()  # --report off


def test_trials_tuning_the_batch_size_share_one_entry_and_train_as_if_alone(tmp_path, data_dir):
    job(tmp_path, "writer", data_dir, tmp_path / "shared", **{"batch-size": "64"})
    reader = job(tmp_path, "reader", data_dir, tmp_path / "shared", **{"batch-size": "16"})
    alone = job(tmp_path, "alone", data_dir, tmp_path / "own", **{"batch-size": "16"})
    assert "feature cache hit" in reader.log and "feature cache miss" in alone.log
    assert metric_lines(reader.log) == metric_lines(alone.log)


def test_changed_images_miss_and_get_their_own_entry(tmp_path, data_dir):
    cache = tmp_path / "cache"
    job(tmp_path, "first", data_dir, cache)
    images = sorted((data_dir / "7").iterdir())
    shutil.copy(images[0], images[1])  # same names and labels, one image's bytes differ
    changed = job(tmp_path, "changed", data_dir, cache)
    assert "feature cache miss" in changed.log
    assert len(entries(cache)) == 2


def test_corrupt_images_stay_rejected_on_a_hit(tmp_path, data_dir):
    (data_dir / "1" / "not-an-image.png").write_text("hello")
    cache = tmp_path / "cache"
    job(tmp_path, "first", data_dir, cache)
    second = job(tmp_path, "second", data_dir, cache)
    assert "feature cache hit" in second.log and "skipped 1 unreadable image(s)" in second.log


@pytest.mark.parametrize("damage", [lambda data: data[: len(data) // 2], lambda data: b"garbage",
                                    lambda data: data[:-10] + b"0123456789"])
def test_a_corrupt_entry_is_ignored_and_written_again(tmp_path, data_dir, damage):
    cache = tmp_path / "cache"
    first = job(tmp_path, "first", data_dir, cache)
    [entry] = entries(cache)
    entry.write_bytes(damage(entry.read_bytes()))
    again = job(tmp_path, "again", data_dir, cache)
    assert "feature cache entry is corrupt" in again.log and "feature cache written" in again.log
    assert metric_lines(again.log) == metric_lines(first.log)
    assert feature_cache.decode(entry.read_bytes()).features["train"].shape[1] == 512


def test_jobs_starting_together_both_train_and_leave_one_whole_entry(tmp_path, data_dir):
    cache = tmp_path / "cache"

    def start(name: str):
        (tmp_path / name).mkdir()
        return run_training_script(tmp_path / name, {"training": data_dir}, {**FROZEN, "feature-cache": str(cache)},
                                   extra_env={"OMP_NUM_THREADS": "1"})

    with ThreadPoolExecutor(2) as pool:  # two processes at once: each thread waits on its own
        runs = list(pool.map(start, ("a", "b")))
    assert [run.returncode for run in runs] == [0, 0], runs[0].log[-2000:] + runs[1].log[-2000:]
    assert metric_lines(runs[0].log) == metric_lines(runs[1].log)
    [entry] = entries(cache)  # no temporary file left behind
    feature_cache.decode(entry.read_bytes())


def test_directory_store_readers_never_see_half_an_entry(tmp_path):
    store = feature_cache.DirectoryStore(tmp_path / "cache")
    payloads = [bytes([i]) * 2_000_000 for i in range(4)]
    seen: list[bytes | None] = []

    def write(data: bytes) -> None:
        for _ in range(5):
            store.put("entry.pt", data)

    def read() -> None:
        for _ in range(200):
            seen.append(store.get("entry.pt"))

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(data is None or data in payloads for data in seen)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["entry.pt"]


def test_entry_name_changes_with_everything_the_features_depend_on(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    samples = [Sample(image, "3", "train")]
    trunk = feature_cache.Trunk("resnet18", "backbone", "random init, seed 0", 32, "cpu")
    name = feature_cache.entry_name(trunk, samples)
    assert feature_cache.entry_name(trunk, samples) == name
    for changed in (replace(trunk, arch="resnet34"), replace(trunk, freeze="all-but-last-block"),
                    replace(trunk, weights="random init, seed 1"), replace(trunk, image_size=64),
                    replace(trunk, device="cuda-bf16")):
        assert feature_cache.entry_name(changed, samples) != name
    assert feature_cache.entry_name(trunk, [Sample(image, "5", "train")]) != name
    assert feature_cache.entry_name(trunk, [Sample(image, "3", "valid")]) != name
    image.write_bytes(b"other pixels")
    assert feature_cache.entry_name(trunk, samples) != name


def test_warm_pool_cache_directory_is_the_default_store(tmp_path):
    store = feature_cache.open_store("", {feature_cache.WARM_POOL_CACHE_ENV: str(tmp_path)})
    assert store == feature_cache.DirectoryStore(tmp_path / "trunk-features")
    assert feature_cache.open_store("", {}) is None


@mock_aws
def test_s3_store_round_trip_and_miss():
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="cache-bucket")
    store = feature_cache.open_store("s3://cache-bucket/features/")
    assert store.get("x.pt") is None
    entry = feature_cache.Entry({s: torch.ones(2, 4) for s in feature_cache.SPLITS},
                                {s: torch.zeros(2, dtype=torch.int64) for s in feature_cache.SPLITS}, {3: "bad"})
    store.put("x.pt", feature_cache.encode(entry))
    loaded = feature_cache.load(store, "x.pt")
    assert loaded is not None and loaded.rejected == {3: "bad"}
    assert torch.equal(loaded.features["valid"], torch.ones(2, 4))
