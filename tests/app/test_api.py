"""The HTTP API through chalice.test.Client: JSON bodies, status codes, pagination, upload URLs."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import requests

from chalice_app import aws

from .conftest import BUCKET, png_bytes
from .scenario import deliver_training_uploads, runs, start_run, tick, tuning_done, tuning_jobs


def test_predictions_list_newest_first_in_pages(world):
    for index in range(5):
        world.upload(f"incoming/p{index}.png", png_bytes(index))
        world.drain("on_incoming_image", "image-pipeline-test-incoming")
        world.advance(1)
    first = world.client.http.get("/predictions?limit=2").json_body
    assert [i["image_key"] for i in first["items"]] == ["incoming/p4.png", "incoming/p3.png"]
    second = world.client.http.get(f"/predictions?limit=2&cursor={first['next']}").json_body
    assert [i["image_key"] for i in second["items"]] == ["incoming/p2.png", "incoming/p1.png"]
    third = world.client.http.get(f"/predictions?limit=2&cursor={second['next']}").json_body
    assert [i["image_key"] for i in third["items"]] == ["incoming/p0.png"] and third["next"] is None


def test_errors_are_json_with_the_right_status(world):
    for path, status in [("/predictions/nothing.png", 404), ("/predictions?limit=0", 400),
                         ("/predictions?cursor=garbage", 400), ("/runs/r270101000000-abcdef", 404),
                         ("/runs/not-a-run", 404), ("/models/live", 404), ("/runs?limit=1000", 400)]:
        response = world.client.http.get(path)
        assert response.status_code == status, path
        assert set(response.json_body) == {"Code", "Message"}, path


def test_upload_urls_for_incoming_and_for_a_label(world):
    incoming = world.client.http.post("/uploads", headers={"Content-Type": "application/json"},
                                      body=json.dumps({"target": "incoming", "filename": "cat.JPG"})).json_body
    assert incoming["method"] == "PUT" and incoming["key"].startswith("incoming/") and incoming["key"].endswith(".jpg")
    url = urlparse(incoming["url"])
    assert BUCKET in url.netloc + url.path and "X-Amz-Signature" in parse_qs(url.query)
    assert requests.put(incoming["url"], data=png_bytes(1)).status_code == 200
    assert world.s3.head_object(Bucket=BUCKET, Key=incoming["key"])["ContentLength"] == len(png_bytes(1))
    training = world.client.http.post("/uploads", headers={"Content-Type": "application/json"},
                                      body=json.dumps({"target": "training", "label": "tabby", "split": "valid",
                                                       "filename": "x.png"})).json_body
    assert training["key"].startswith("training-data/valid/tabby/") and training["key"].endswith("-x.png")
    for bad in ({"target": "training", "label": "../etc"}, {"target": "elsewhere"},
                {"target": "incoming", "filename": "notes.txt"}, {"target": "training", "label": "a", "split": "x"}):
        response = world.client.http.post("/uploads", headers={"Content-Type": "application/json"},
                                          body=json.dumps(bad))
        assert response.status_code == 400, bad


def test_runs_list_get_and_manual_start_conflict(world):
    run = start_run(world)
    listed = world.client.http.get("/runs").json_body
    assert [r["run_id"] for r in listed["items"]] == [run["run_id"]] and listed["next"] is None
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body["tuning_job"] == run["tuning_job"]
    response = world.client.http.post("/runs")
    assert response.status_code == 409 and run["run_id"] in response.json_body["Message"]


def test_a_manual_start_answers_202_at_once_and_the_schedule_starts_the_run(world):
    world.upload_training(20)
    deliver_training_uploads(world)  # a burst, not yet quiet
    calls: list[str] = []
    for service in ("s3", "sagemaker"):
        aws.client(service).meta.events.register(f"before-call.{service}", lambda model, **_: calls.append(model.name))
    response = world.client.http.post("/runs")
    run = response.json_body
    assert response.status_code == 202 and response.headers["Location"] == f"runs/{run['run_id']}"
    assert run["status"] == "STARTING" and run["trigger"] == "manual"
    assert calls == [], "the request lists no data and creates no job"
    assert world.client.http.get(f"/runs/{run['run_id']}").json_body == run
    conflict = world.client.http.post("/runs")
    assert conflict.status_code == 409 and run["run_id"] in conflict.json_body["Message"]

    tick(world)  # the schedule's next minute
    assert {"ListObjectsV2", "CreateHyperParameterTuningJob"} <= set(calls)
    started = world.client.http.get(f"/runs/{run['run_id']}").json_body
    assert started["status"] == "TUNING" and started["images"] == 20 and started["created_at"] == run["created_at"]
    tick(world)
    assert tuning_jobs(world) == [started["tuning_job"]]
    # The run took the burst it snapshotted: when it ends, no second run starts on the same data.
    world.advance(61)
    tuning_done(world, started, "Failed")
    assert [r["run_id"] for r in runs(world)] == [run["run_id"]] and world.client.http.post("/runs").status_code == 202


def test_models_list_is_empty_before_any_deployment(world):
    assert world.client.http.get("/models").json_body == {"items": [], "live": None}
