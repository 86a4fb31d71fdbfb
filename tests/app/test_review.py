"""The review queue: predictions marked for review as they are stored (low confidence, or a capped
random sample), GET /review, and POST /review/{name} making the label training data.

Every AWS call goes through the stage's enforced policy (conftest.py), so these scenarios also
prove the role may make them: the transaction with the sample counter, the Query on the `review`
index, the presigned GET, the CopyObject from incoming/ to training-data/.
"""

from __future__ import annotations

import json
import random
from urllib.parse import parse_qs, unquote_plus, urlparse

import pytest
import requests

from chalice_app import config, manifest, review
from chalice_app.store.predictions import SAMPLED, SAMPLES_PK, Marking, sample_hour
from chalice_app.stores import stores

from .conftest import BUCKET, ENV, png_bytes
from .incoming import FN, QUEUE, Images, answer, endpoint, prediction
from .reviews import SURE, UNSURE, label
from .scenario import deliver_training_uploads, deploy_model

TRAINING_QUEUE = ENV["TRAINING_QUEUE"]


def set_env(monkeypatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()


def classify(world, name: str, labels=SURE, seed: int = 0, *, duplicate: bool = False) -> bytes:
    """Upload incoming/<name> and deliver it; the endpoint answers `labels` for it."""
    picture = png_bytes(seed)
    world.upload(f"incoming/{name}", picture)
    with endpoint((Images(picture), answer("v1", labels=labels))):
        delivery = world.deliver(FN, QUEUE, duplicate=duplicate)
    assert delivery is not None and not delivery.failed
    return picture


def queue(world, query: str = "") -> dict:
    response = world.client.http.get(f"/review{query}")
    assert response.status_code == 200, response.json_body
    return response.json_body


def samples_counted(now: float) -> int:
    item = stores().runs._table.get_item(Key={"pk": SAMPLES_PK, "sk": sample_hour(now)}).get("Item")
    return int(item["sampled"]) if item else 0


def training_objects(world, prefix: str = "training-data/") -> dict[str, bytes]:
    """The training images under `prefix` but deploy_model's own uploads (img-NNNN.png)."""
    listed = world.s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: world.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed
            if "/img-" not in o["Key"]}


# Marking ----------------------------------------------------------------------

def test_the_marking_is_a_pure_function_of_top1_threshold_rate_cap_and_draw():
    draws = iter([0.01, 0.5, 0.01, 0.5])
    assert review.mark(0.6, 0.6, 0.02, 100, lambda: next(draws)) == Marking("sampled", True)
    assert review.mark(0.9, 0.6, 0.02, 100, lambda: next(draws)) == Marking(None, False)
    assert review.mark(0.59, 0.6, 0.02, 100, lambda: next(draws)) == Marking("low-confidence", True)
    assert review.mark(0.59, 0.6, 0.02, 100, lambda: next(draws)) == Marking("low-confidence", False)
    assert review.mark(0.9, 0.6, 0.0, 100, lambda: pytest.fail("no draw when the rate is 0")) == Marking(None, False)
    assert review.mark(0.1, 0.6, 1.0, 0, lambda: pytest.fail("no draw when the cap is 0")) == Marking(
        "low-confidence", False)
    seeded = random.Random(7)
    marks = [review.mark(0.9, 0.6, 0.25, 100, seeded.random) for _ in range(400)]
    assert 60 < marks.count(Marking("sampled", True)) < 140  # a quarter of 400, give or take a seeded spread
    assert {m.reason for m in marks} == {"sampled", None}


def test_a_low_confidence_prediction_waits_for_review_and_a_confident_one_does_not(world, never_sampled):
    deploy_model(world)
    classify(world, "unsure.png", UNSURE, seed=1)
    classify(world, "sure.png", SURE, seed=2)
    assert prediction(world, "unsure.png")["review_reason"] == "low-confidence"
    assert "review_reason" not in prediction(world, "sure.png")
    assert [item["image_key"] for item in queue(world)["items"]] == ["incoming/unsure.png"]
    assert samples_counted(world.clock[0]) == 0  # low confidence is not a sample


def test_a_low_confidence_prediction_drawn_in_the_sample_is_flagged_and_counted(world, always_sampled):
    """The sample is of all predictions (part of it low-confidence too), so it stays unbiased."""
    deploy_model(world)
    classify(world, "unsure.png", UNSURE, seed=1)
    item = prediction(world, "unsure.png")
    assert item["review_reason"] == "low-confidence" and item["sampled"] is True
    assert samples_counted(world.clock[0]) == 1
    status, body = label(world, "unsure.png", {"label": "3"})
    assert status == 200 and body["sampled"] is True and body["review_reason"] == "low-confidence"


def test_the_threshold_is_the_stages_setting(world, never_sampled, monkeypatch):
    set_env(monkeypatch, REVIEW_THRESHOLD="0.75")
    deploy_model(world)
    classify(world, "sure.png", SURE, seed=2)  # 0.7 is below 0.75
    assert prediction(world, "sure.png")["review_reason"] == "low-confidence"


def test_a_sample_of_confident_predictions_is_flagged_sampled(world, monkeypatch):
    draws = iter([0.01, 0.5])  # the first is below the 0.02 rate, the second is not
    monkeypatch.setattr(review, "draw", lambda: next(draws))
    deploy_model(world)
    classify(world, "picked.png", seed=1)
    classify(world, "left.png", seed=2)
    assert prediction(world, "picked.png")["review_reason"] == SAMPLED and prediction(world, "picked.png")["sampled"]
    assert "review_reason" not in prediction(world, "left.png") and "sampled" not in prediction(world, "left.png")
    [waiting] = queue(world)["items"]
    assert waiting["image_key"] == "incoming/picked.png" and waiting["review_reason"] == "sampled"
    assert waiting["sampled"] is True
    assert samples_counted(world.clock[0]) == 1


def test_samples_stop_at_the_hourly_cap_and_start_again_the_next_hour(world, always_sampled, monkeypatch):
    set_env(monkeypatch, REVIEW_SAMPLES_PER_HOUR="2")
    deploy_model(world)
    world.advance(3600 - world.clock[0] % 3600 - 10)  # 10 s before the hour ends
    for index in range(3):
        classify(world, f"hour1-{index}.png", seed=index)
    marked = [prediction(world, f"hour1-{index}.png").get("review_reason") for index in range(3)]
    assert marked == ["sampled", "sampled", None]
    assert samples_counted(world.clock[0]) == 2
    classify(world, "unsure-over-cap.png", UNSURE, seed=9)  # drawn, but over the cap: only low confidence
    over = prediction(world, "unsure-over-cap.png")
    assert over["review_reason"] == "low-confidence" and "sampled" not in over
    assert samples_counted(world.clock[0]) == 2
    world.advance(20)  # the next hour
    classify(world, "hour2.png", seed=5)
    assert prediction(world, "hour2.png")["review_reason"] == "sampled"
    assert samples_counted(world.clock[0]) == 1 and samples_counted(world.clock[0] - 20) == 2


def test_a_redelivered_prediction_is_sampled_and_counted_once(world, always_sampled):
    deploy_model(world)
    classify(world, "twice.png", seed=3, duplicate=True)  # the batch is invoked twice
    assert prediction(world, "twice.png")["review_reason"] == "sampled"
    assert samples_counted(world.clock[0]) == 1
    assert [item["image_key"] for item in queue(world)["items"]] == ["incoming/twice.png"]
    # Two attempts that both classified before either stored: the second write is refused whole.
    store = stores().predictions
    stored = [store.save("incoming/race.png", "e1", "OK", world.clock[0], labels=[], review=Marking(SAMPLED, True),
                         samples_per_hour=100) for _ in range(2)]
    assert stored == [True, False] and samples_counted(world.clock[0]) == 2


# GET /review ---------------------------------------------------------------------

def test_the_queue_lists_oldest_first_in_pages_with_a_url_to_each_image(world, never_sampled):
    deploy_model(world)
    pictures = {}
    for index in range(3):
        pictures[f"incoming/q{index}.png"] = classify(world, f"q{index}.png", UNSURE, seed=index)
        world.advance(5)
    first = queue(world, "?limit=2")
    assert [item["image_key"] for item in first["items"]] == ["incoming/q0.png", "incoming/q1.png"]
    second = queue(world, f"?limit=2&cursor={first['next']}")
    assert [item["image_key"] for item in second["items"]] == ["incoming/q2.png"] and second["next"] is None
    for item in first["items"] + second["items"]:
        assert item["name"] == item["image_key"].removeprefix("incoming/")
        assert item["labels"][0] == {"label": "3", "probability": 0.45} and item["model_version"] == "v1"
        assert "review" not in item and "feed" not in item and item["sampled"] is False
        url = urlparse(item["url"])
        assert parse_qs(url.query)["X-Amz-Expires"] == ["900"] and item["expires_in"] == 900
        assert requests.get(item["url"]).content == pictures[item["image_key"]]


def test_the_url_lifetime_is_the_stages_setting_and_a_bad_cursor_is_400(world, never_sampled, monkeypatch):
    set_env(monkeypatch, REVIEW_URL_SECONDS="120")
    deploy_model(world)
    classify(world, "u.png", UNSURE)
    classify(world, "v.png", SURE, seed=1)
    [item] = queue(world)["items"]
    assert parse_qs(urlparse(item["url"]).query)["X-Amz-Expires"] == ["120"] and item["expires_in"] == 120
    for bad in ("?cursor=garbage", "?limit=0", "?limit=101"):
        response = world.client.http.get(f"/review{bad}")
        assert response.status_code == 400 and set(response.json_body) == {"Code", "Message"}, bad
    # A cursor of the predictions listing is not one of the queue's.
    other = world.client.http.get("/predictions?limit=1").json_body["next"]
    assert other and world.client.http.get(f"/review?cursor={other}").status_code == 400


# POST /review/{name} -----------------------------------------------------------

def test_a_label_is_recorded_and_the_image_is_copied_as_training_data_that_arrives_as_an_upload(world, never_sampled):
    deploy_model(world)
    cat = classify(world, "cat.png", UNSURE, seed=1)
    three = classify(world, "three.png", UNSURE, seed=2)
    before = stores().arrivals.current()
    status, body = label(world, "cat.png", {"label": "cat"})  # a new class: allowed
    assert status == 200, body
    assert body["label"] == "cat" and body["predicted"] == "3" and body["correct"] is False
    assert body["review_reason"] == "low-confidence" and body["image_key"] == "incoming/cat.png"
    assert body["training_key"].startswith("training-data/cat/cat-") and body["training_key"].endswith(".png")
    status, right = label(world, "three.png", {"label": "3"})
    assert status == 200 and right["correct"] is True and right["training_key"].startswith("training-data/3/")
    assert training_objects(world, "training-data/cat/") == {body["training_key"]: cat}
    # The training side's contract (a suffix it reads, the <label>/<file> layout) takes the copy as a cat.
    entry = manifest.entry_for(body["training_key"], "etag", "training-data/", len(cat))
    assert entry is not None and entry.label == "cat"
    assert training_objects(world, "training-data/3/") == {right["training_key"]: three}
    item = prediction(world, "cat.png")
    assert (item["review_label"], item["correct"], item["training_key"]) == ("cat", False, body["training_key"])
    assert item["status"] == "OK" and "review" not in item
    assert queue(world)["items"] == []
    # The copies reach the training-data queue and the burst, as uploads do.
    notified = [unquote_plus(json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"])
                for m in world.peek(TRAINING_QUEUE)]
    assert sorted(notified) == sorted([body["training_key"], right["training_key"]])
    deliver_training_uploads(world)
    after = stores().arrivals.current()
    assert after.pending and after.arrivals == (before.arrivals if before and before.pending else 0) + 2


def test_a_repeated_post_answers_as_the_first_and_changes_nothing(world, never_sampled):
    deploy_model(world)
    classify(world, "again.png", UNSURE)
    first = label(world, "again.png", {"label": "dog"})
    assert first[0] == 200
    deliver_training_uploads(world)
    item = prediction(world, "again.png")
    copied = world.s3.head_object(Bucket=BUCKET, Key=first[1]["training_key"])
    world.advance(30)
    assert label(world, "again.png", {"label": "dog"}) == first
    assert prediction(world, "again.png") == item
    assert world.s3.head_object(Bucket=BUCKET, Key=first[1]["training_key"])["LastModified"] == copied["LastModified"]
    assert world.peek(TRAINING_QUEUE) == []  # no second copy, so no second notification
    assert list(training_objects(world, "training-data/dog/")) == [first[1]["training_key"]]


def test_a_different_label_for_a_labelled_image_is_409_and_changes_nothing(world, never_sampled):
    deploy_model(world)
    classify(world, "taken.png", UNSURE)
    assert label(world, "taken.png", {"label": "cat"})[0] == 200
    item = prediction(world, "taken.png")
    status, body = label(world, "taken.png", {"label": "dog"})
    assert status == 409 and "already labelled 'cat'" in body["Message"]
    assert prediction(world, "taken.png") == item
    assert training_objects(world, "training-data/dog/") == {}


@pytest.mark.parametrize("body", [{"label": "../etc"}, {"label": ""}, {"label": "cat\n"}, {"label": 5}, {},
                                  {"label": "x" * 65}, ["cat"]])
def test_a_label_that_breaks_the_upload_rules_is_400(world, never_sampled, body):
    deploy_model(world)
    classify(world, "bad.png", UNSURE)
    status, answer_body = label(world, "bad.png", body)
    assert status == 400 and answer_body["Message"].startswith("label must be"), answer_body
    assert prediction(world, "bad.png")["review_reason"] == "low-confidence" and "review_label" not in prediction(
        world, "bad.png")
    assert training_objects(world) == {}


def test_an_unknown_image_or_one_not_waiting_for_review_is_404(world, never_sampled):
    deploy_model(world)
    classify(world, "sure.png", SURE)
    for name in ("never-uploaded.png", "sure.png"):
        status, body = label(world, name, {"label": "cat"})
        assert status == 404 and set(body) == {"Code", "Message"}, name
    assert "review_label" not in prediction(world, "sure.png")


def test_a_label_for_an_image_whose_object_is_gone_is_410_and_the_item_is_untouched(world, never_sampled):
    deploy_model(world)
    classify(world, "gone.png", UNSURE)
    item = prediction(world, "gone.png")
    world.s3.delete_object(Bucket=BUCKET, Key="incoming/gone.png")
    status, body = label(world, "gone.png", {"label": "cat"})
    assert status == 410 and "no longer exists" in body["Message"], body
    assert prediction(world, "gone.png") == item
    assert [i["image_key"] for i in queue(world)["items"]] == ["incoming/gone.png"]
    assert training_objects(world, "training-data/cat/") == {}


def test_a_key_without_an_image_suffix_is_copied_with_its_formats(world, never_sampled):
    deploy_model(world)
    picture = png_bytes(4)
    world.upload("incoming/no-suffix", picture)
    with endpoint((Images(picture), answer("v1", labels=UNSURE))):
        world.deliver(FN, QUEUE)
    status, body = label(world, "no-suffix", {"label": "cat"})
    assert status == 200 and body["training_key"].endswith(".png"), body
    assert training_objects(world, "training-data/cat/") == {body["training_key"]: picture}


def test_a_label_claimed_by_a_request_that_died_is_completed_by_the_same_label_only(world, never_sampled):
    """The claim is the first step: a request that died after it (before or during the copy) leaves the
    item waiting with its label; the same label asked again completes it, another is refused."""
    deploy_model(world)
    picture = classify(world, "half.png", UNSURE)
    item = prediction(world, "half.png")
    assert stores().predictions.claim_review("incoming/half.png", item["etag"], "husky")
    [waiting] = queue(world)["items"]
    assert waiting["review_label"] == "husky"
    status, body = label(world, "half.png", {"label": "cat"})
    assert status == 409 and "already labelled 'husky'" in body["Message"]
    status, body = label(world, "half.png", {"label": "husky"})
    assert status == 200 and training_objects(world, "training-data/husky/") == {body["training_key"]: picture}
    assert queue(world)["items"] == []
