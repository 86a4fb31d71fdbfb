"""Live accuracy (#17 part 2): the sampled review labels measure each model version on live
traffic (count, accuracy, 95 % Wilson interval) in GET /models and as CloudWatch metrics; every
label counts in the version's confusion, the low-confidence ones apart.

The counters are written in the transaction that records the label, through the stage's enforced
policy (conftest.py), so these scenarios also prove the role may write them.
"""

from __future__ import annotations

import json

import pytest
from moto.core import DEFAULT_ACCOUNT_ID

from chalice_app import accuracy, review
from chalice_app.stores import stores
from infra import policies

from . import iam
from .conftest import ENV, REGION, png_bytes
from .incoming import FN, QUEUE, Images, answer, endpoint
from .scenario import deploy_model
from .reviews import SURE, UNSURE, label


def classify(world, version: str, name: str, labels=SURE, seed: int = 0) -> None:
    """incoming/<name> classified by `version` (the endpoint answers with the deployed model's version)."""
    picture = png_bytes(seed)
    world.upload(f"incoming/{name}", picture)
    with endpoint((Images(picture), answer(version, labels=labels))):
        delivery = world.deliver(FN, QUEUE)
    assert delivery is not None and not delivery.failed


def models(world) -> dict:
    response = world.client.http.get("/models")
    assert response.status_code == 200, response.json_body
    return response.json_body


def figures(world, version: str) -> dict:
    [model] = [m for m in models(world)["items"] if m["model_version"] == version]
    return model


def emitted(out: str) -> list[dict]:
    """The review metrics' EMF records Powertools printed."""
    return [record for record in (json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"'))
            if "ReviewedSamples" in record]


@pytest.fixture
def version(world) -> str:
    """The deployed model's version: the one the endpoint answers with (its training job's name)."""
    return deploy_model(world)["model_version"]


# The interval -------------------------------------------------------------------

@pytest.mark.parametrize(("correct", "total", "expected"), [
    (8, 10, (0.4902, 0.9433)),   # the textbook example
    (0, 10, (0.0, 0.2775)),      # no collapse to [0, 0] at zero successes
    (10, 10, (0.7225, 1.0)),
    (50, 100, (0.4038, 0.5962)),
    (1, 1, (0.2065, 1.0)),
])
def test_the_wilson_interval_matches_known_values(correct, total, expected):
    low, high = accuracy.wilson_interval(correct, total)
    assert (round(low, 4), round(high, 4)) == expected


def test_no_interval_and_no_accuracy_without_samples_and_a_bad_count_is_refused():
    assert accuracy.wilson_interval(0, 0) is None
    assert accuracy.live_accuracy(None) == {"sampled": 0, "correct": 0, "accuracy": None, "interval": None}
    assert accuracy.live_accuracy({"sampled_reviews": 10, "sampled_correct": 8}) == {
        "sampled": 10, "correct": 8, "accuracy": 0.8, "interval": [0.4902, 0.9433]}
    with pytest.raises(ValueError):
        accuracy.wilson_interval(11, 10)


def test_the_confusion_lists_low_confidence_pairs_first_most_frequent_first_and_is_capped():
    pairs = [{"predicted": "3", "label": "8", "reviews": 5, "low_confidence": 1},
             {"predicted": "1", "label": "7", "reviews": 2, "low_confidence": 2},
             {"predicted": "5", "label": "5", "reviews": 9, "low_confidence": 0}]
    shown = accuracy.confusion({"reviews": 16, "low_confidence_reviews": 3}, pairs, limit=2)
    assert shown == {"reviewed": 16, "low_confidence": 3, "more_pairs": 1, "pairs": [
        {"predicted": "1", "label": "7", "low_confidence": 2, "reviewed": 2},
        {"predicted": "3", "label": "8", "low_confidence": 1, "reviewed": 5}]}


# Counting, through the handlers -------------------------------------------------------

def test_sampled_labels_give_the_versions_live_accuracy_and_unsampled_ones_only_its_confusion(
        world, version, monkeypatch):
    draws = iter([0.0, 0.0, 0.0, 0.99, 0.99])  # three drawn in the sample, two not
    monkeypatch.setattr(review, "draw", lambda: next(draws))
    classify(world, version, "right.png", SURE, seed=1)        # sampled, top-1 "3"
    classify(world, version, "wrong.png", SURE, seed=2)        # sampled
    classify(world, version, "unsure.png", UNSURE, seed=3)     # sampled and low-confidence
    classify(world, version, "doubt-1.png", UNSURE, seed=4)    # low-confidence only
    classify(world, version, "doubt-2.png", UNSURE, seed=5)    # low-confidence only
    before = figures(world, version)
    assert before["live_accuracy"] == {"sampled": 0, "correct": 0, "accuracy": None, "interval": None}
    assert before["confusion"] == {"reviewed": 0, "low_confidence": 0, "pairs": [], "more_pairs": 0}
    for name, given in (("right.png", "3"), ("wrong.png", "8"), ("unsure.png", "3"), ("doubt-1.png", "8"),
                        ("doubt-2.png", "8")):
        status, body = label(world, name, {"label": given})
        assert status == 200, body
    model = figures(world, version)
    low, high = accuracy.wilson_interval(2, 3)
    assert model["live_accuracy"] == {"sampled": 3, "correct": 2, "accuracy": pytest.approx(2 / 3),
                                      "interval": [round(low, 4), round(high, 4)]}
    assert model["confusion"] == {"reviewed": 5, "low_confidence": 3, "more_pairs": 0, "pairs": [
        {"predicted": "3", "label": "8", "low_confidence": 2, "reviewed": 3},
        {"predicted": "3", "label": "3", "low_confidence": 1, "reviewed": 2}]}
    # The registry's own fields are still there; the live pointer carries the same figures.
    assert model["status"] == "LIVE" and "test_accuracy" in model
    live = models(world)["live"]
    assert live["model_version"] == version and live["live_accuracy"] == model["live_accuracy"]
    assert live["confusion"] == model["confusion"]
    only_live = world.client.http.get("/models/live").json_body
    assert only_live["live_accuracy"] == model["live_accuracy"] and only_live["confusion"] == model["confusion"]


def test_the_counts_are_per_model_version(world, version, always_sampled):
    classify(world, version, "mine.png", SURE, seed=1)
    classify(world, "another-model", "theirs.png", SURE, seed=2)
    assert label(world, "mine.png", {"label": "3"})[0] == 200
    assert label(world, "theirs.png", {"label": "8"})[0] == 200
    assert figures(world, version)["live_accuracy"]["sampled"] == 1
    assert figures(world, version)["live_accuracy"]["correct"] == 1
    counted = accuracy.by_version(stores().accuracy.all())
    assert counted["another-model"]["live_accuracy"] == {**counted["another-model"]["live_accuracy"],
                                                         "sampled": 1, "correct": 0, "accuracy": 0.0}
    # A version named as a prefix of another is not mixed up with it.
    assert all(item["model_version"] == version for item in stores().accuracy.of(version))
    assert stores().accuracy.of("another") == []


def test_labels_with_dots_and_dashes_count_in_the_confusion(world, version, never_sampled):
    classify(world, version, "odd.png", UNSURE, seed=1)
    assert label(world, "odd.png", {"label": "tabby-cat.v2_x"})[0] == 200
    assert figures(world, version)["confusion"]["pairs"] == [
        {"predicted": "3", "label": "tabby-cat.v2_x", "low_confidence": 1, "reviewed": 1}]


# Exactly once -------------------------------------------------------------------

def test_a_repeated_post_counts_once_and_publishes_once(world, version, always_sampled, capsys):
    classify(world, version, "again.png", SURE, seed=1)
    capsys.readouterr()
    first = label(world, "again.png", {"label": "8"})
    assert first[0] == 200
    [record] = emitted(capsys.readouterr().out)
    assert record["ReviewedSamples"] == [1.0] and record["ReviewedSamplesCorrect"] == [0.0]
    assert record["ModelVersion"] == version and record["service"] == "image-pipeline"
    [definition] = record["_aws"]["CloudWatchMetrics"]
    assert definition["Namespace"] == "ImagePipeline"
    assert [sorted(dimensions) for dimensions in definition["Dimensions"]] == [["ModelVersion", "service"]]
    assert {m["Name"]: m["Unit"] for m in definition["Metrics"]} == {"ReviewedSamples": "Count",
                                                                    "ReviewedSamplesCorrect": "Count"}
    for _ in range(2):
        assert label(world, "again.png", {"label": "8"}) == first
    assert emitted(capsys.readouterr().out) == []
    assert figures(world, version)["live_accuracy"]["sampled"] == 1
    assert figures(world, version)["confusion"]["reviewed"] == 1


def test_a_correct_sample_publishes_correct_1_and_an_unsampled_label_publishes_nothing(world, version, monkeypatch,
                                                                                      capsys):
    draws = iter([0.0, 0.99])
    monkeypatch.setattr(review, "draw", lambda: next(draws))
    classify(world, version, "sampled.png", SURE, seed=1)
    classify(world, version, "unsure.png", UNSURE, seed=2)
    capsys.readouterr()
    assert label(world, "sampled.png", {"label": "3"})[0] == 200
    [record] = emitted(capsys.readouterr().out)
    assert record["ReviewedSamples"] == [1.0] and record["ReviewedSamplesCorrect"] == [1.0]
    assert label(world, "unsure.png", {"label": "3"})[0] == 200
    assert emitted(capsys.readouterr().out) == []


def test_a_crash_before_the_label_is_recorded_then_the_same_label_again_counts_once(world, version, always_sampled,
                                                                                     monkeypatch, capsys):
    """The request died after its claim and copy, before the record (and its counts): nothing was
    counted; the same label again records and counts it, once."""
    classify(world, version, "crash.png", SURE, seed=1)
    store = stores().predictions
    finish = store.finish_review

    def crash(*args, **kwargs):
        raise RuntimeError("the Lambda died here")

    monkeypatch.setattr(store, "finish_review", crash)
    with pytest.raises(RuntimeError):
        review.label_image("incoming/crash.png", "8")
    assert figures(world, version)["live_accuracy"]["sampled"] == 0
    monkeypatch.setattr(store, "finish_review", finish)
    capsys.readouterr()
    assert label(world, "crash.png", {"label": "8"})[0] == 200
    assert label(world, "crash.png", {"label": "8"})[0] == 200
    assert len(emitted(capsys.readouterr().out)) == 1
    assert figures(world, version)["live_accuracy"] == {**figures(world, version)["live_accuracy"],
                                                        "sampled": 1, "correct": 0}


def test_a_crash_after_the_label_is_recorded_then_the_same_label_again_counts_once(world, version, always_sampled,
                                                                                    monkeypatch):
    """The record and the counts are one transaction: a request that died right after it leaves
    them counted, and the retry finds the label recorded and counts nothing more."""
    classify(world, version, "late.png", SURE, seed=1)
    store = stores().predictions
    finish = store.finish_review

    def finish_then_crash(*args, **kwargs):
        assert finish(*args, **kwargs)
        raise RuntimeError("the Lambda died here")

    monkeypatch.setattr(store, "finish_review", finish_then_crash)
    with pytest.raises(RuntimeError):
        review.label_image("incoming/late.png", "3")
    monkeypatch.setattr(store, "finish_review", finish)
    assert label(world, "late.png", {"label": "3"})[0] == 200
    assert figures(world, version)["live_accuracy"] == {"sampled": 1, "correct": 1, "accuracy": 1.0,
                                                        "interval": [0.2065, 1.0]}


def test_two_requests_recording_the_same_label_at_once_count_once(world, version, always_sampled):
    """Both claimed and copied; both try to record: the second transaction is refused whole."""
    classify(world, version, "race.png", SURE, seed=1)
    item = stores().predictions.get("incoming/race.png")
    assert stores().predictions.claim_review("incoming/race.png", item["etag"], "8")
    outcome = accuracy.outcome_of(item, "8")
    counters = accuracy.counter_updates(stores().runs._table.name, outcome)
    recorded = [stores().predictions.finish_review("incoming/race.png", item["etag"], "8", world.clock[0], counters,
                                                   correct=False) for _ in range(2)]
    assert recorded == [True, False]
    assert figures(world, version)["live_accuracy"]["sampled"] == 1
    assert figures(world, version)["confusion"]["pairs"] == [
        {"predicted": "3", "label": "8", "low_confidence": 0, "reviewed": 1}]


def test_a_label_for_a_replaced_upload_is_not_recorded_or_counted(world, version, always_sampled):
    """The record is conditional on the eTag the label was given for."""
    classify(world, version, "old.png", SURE, seed=1)
    item = stores().predictions.get("incoming/old.png")
    assert stores().predictions.claim_review("incoming/old.png", item["etag"], "8")
    counters = accuracy.counter_updates(stores().runs._table.name, accuracy.outcome_of(item, "8"))
    assert not stores().predictions.finish_review("incoming/old.png", "another-etag", "8", world.clock[0], counters,
                                                  correct=False)
    assert figures(world, version)["live_accuracy"]["sampled"] == 0


def test_a_request_that_loses_the_race_to_record_publishes_nothing(world, version, always_sampled, monkeypatch,
                                                                     capsys):
    """Two requests with the same label, both past their claim and copy: the one whose record the
    other beat answers as it does, counts nothing and publishes nothing (the winner published)."""
    classify(world, version, "raced.png", SURE, seed=1)
    store = stores().predictions
    finish = store.finish_review

    def beaten(*args, **kwargs):
        assert finish(*args, **kwargs)  # the other request records it first (and would publish)
        return finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish_review", beaten)
    capsys.readouterr()
    assert review.label_image("incoming/raced.png", "3")["label"] == "3"
    assert emitted(capsys.readouterr().out) == []
    assert figures(world, version)["live_accuracy"]["sampled"] == 1


# IAM -----------------------------------------------------------------------------

def test_the_counters_need_update_item_on_the_pipeline_table_which_the_stage_policy_grants():
    """The record's transaction updates the prediction and the pipeline table's counter items: IAM
    checks UpdateItem on each table (the scenarios above run under the enforced policy)."""
    outcome = accuracy.Outcome("m1", "3", "8", sampled=True, low_confidence=True)
    request = {"TransactItems": [{"Update": {"TableName": ENV["PREDICTIONS_TABLE"], "Key": {}}},
                                 *accuracy.counter_updates(ENV["PIPELINE_TABLE"], outcome)]}
    table = f"arn:aws:dynamodb:{REGION}:{DEFAULT_ACCOUNT_ID}:table/"
    assert [(action, arn) for action, arn, _ in iam.checks("dynamodb", "TransactWriteItems", request, REGION,
                                                           DEFAULT_ACCOUNT_ID)] == [
        ("dynamodb:UpdateItem", table + ENV["PREDICTIONS_TABLE"]),
        ("dynamodb:UpdateItem", table + ENV["PIPELINE_TABLE"]), ("dynamodb:UpdateItem", table + ENV["PIPELINE_TABLE"])]
    policy = policies.resolve(policies.policy(ENV), REGION, DEFAULT_ACCOUNT_ID)
    assert iam.denial(json.dumps(policy), "dynamodb", "TransactWriteItems", request, REGION, DEFAULT_ACCOUNT_ID) is None
    for statement in policy["Statement"]:
        if statement["Sid"] == "Tables":
            statement["Resource"] = [table + ENV["PREDICTIONS_TABLE"]]
    assert "dynamodb:UpdateItem on resource: " + table + ENV["PIPELINE_TABLE"] in iam.denial(
        json.dumps(policy), "dynamodb", "TransactWriteItems", request, REGION, DEFAULT_ACCOUNT_ID)
