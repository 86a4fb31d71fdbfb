"""Image drift (#17 part 3): each prediction keeps its embedding summary, the minute's drift check
compares the live version's newest window with the reference in its model.tar.gz, records one
drift event per episode, raises the review sampling rate while the version drifts, and GET /drift
shows it all.

The endpoint is played by a fake that answers each image from its bytes (the test's own mapping),
with embeddings when asked (CustomAttributes). The artefact is a real gzipped tar in moto's S3 at
the key the registry names. Every AWS call goes through the stage's enforced policy (conftest.py),
so these scenarios also prove the role may make them.
"""

from __future__ import annotations

import base64
import io
import json
import math
from contextlib import contextmanager
from urllib.parse import urlparse

import pytest
from botocore.awsrequest import AWSResponse
from botocore.response import StreamingBody

from chalice_app import aws, config, drift_reference, invocations, review
from chalice_app.stores import stores
from training.drift import EMBEDDING_DIMS, REFERENCE_FILE, DriftInputError, Reference

from .conftest import TEMPLATE, png_bytes
from .incoming import FN, QUEUE, prediction
from .scenario import deploy_model
from .tar_archives import gzipped_tar

DRIFT_FN = "drift_check"
WINDOW, LEAST = 40, 30
SHIFT = 3.0  # reference spreads, in every embedding component: far over the default threshold


def pattern(index: int) -> tuple[str, float, list[float]]:
    """The index-th image of the test split as the model saw it: top-1 class, confidence, embedding."""
    return (str(index % 10), 0.6 + 0.39 * ((index * 7) % WINDOW) / WINDOW,
            [math.sin(index * (d + 1)) for d in range(EMBEDDING_DIMS)])


def reference() -> Reference:
    """The test split: the WINDOW patterns five times over, so a live window of them matches it exactly."""
    rows = [pattern(i % WINDOW) for i in range(5 * WINDOW)]
    return Reference.of([r[1] for r in rows], [r[0] for r in rows], [r[2] for r in rows])


class FakeEndpoint:
    """InvokeEndpoint answered from the images' bytes: png_bytes(i) is pattern(i), its embedding moved
    by `shift`; embeddings only when the request asks for them and `embeddings` is on."""

    def __init__(self, version: str) -> None:
        self.version, self.shift, self.embeddings = version, 0.0, True
        self.patterns = {png_bytes(i): i for i in range(WINDOW)}
        self.requests: list[dict] = []

    def _images(self, params: dict) -> list[bytes]:
        if params["ContentType"] == invocations.IMAGE_TYPE:
            return [params["Body"]]
        return [base64.b64decode(text) for text in json.loads(params["Body"])["images"]]

    def answer(self, params: dict) -> dict:
        self.requests.append(params)
        rows, embeddings = [], []
        for image in self._images(params):
            label, confidence, embedding = pattern(self.patterns[image])
            other = str((int(label) + 1) % 10)
            rows.append([{"label": label, "probability": confidence},
                         {"label": other, "probability": round(1 - confidence, 6)}])
            embeddings.append([value + self.shift for value in embedding])
        body = {"model_version": self.version, "num_classes": 10, "predictions": rows}
        if self.embeddings and params.get("CustomAttributes") == "embeddings=1":
            body["embeddings"] = embeddings
        return body


@contextmanager
def fake_endpoint(version: str):
    """The runtime client, with its IAM check, answering through FakeEndpoint instead of the network."""
    fake = FakeEndpoint(version)
    client = aws._make("sagemaker-runtime")

    def keep_params(params, context, **_):
        context["invoke_params"] = dict(params)

    def respond(context, **_):
        body = json.dumps(fake.answer(context["invoke_params"])).encode()
        return AWSResponse(None, 200, {}, None), {"Body": StreamingBody(io.BytesIO(body), len(body)),
                                                  "ContentType": invocations.JSON_TYPE}

    client.meta.events.register("before-parameter-build.sagemaker-runtime.InvokeEndpoint", keep_params)
    client.meta.events.register("before-call.sagemaker-runtime.InvokeEndpoint", respond)
    try:
        yield fake
    finally:
        client.meta.events.unregister("before-call.sagemaker-runtime.InvokeEndpoint", respond)
        client.meta.events.unregister("before-parameter-build.sagemaker-runtime.InvokeEndpoint", keep_params)


def set_env(monkeypatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    config.settings.cache_clear()


def put_artefact(world, version: str, with_reference: bool = True, document: bytes | None = None) -> None:
    """The version's model.tar.gz where the registry says it is: weights first, then the reference."""
    uri = stores().registry.get(version)["artifact"]
    members = {"model.pth": bytes(range(256)) * 256, "classes.json": b'["0","1"]', "code/inference.py": b"# served"}
    if with_reference:
        members[REFERENCE_FILE] = document if document is not None else json.dumps(reference().to_dict()).encode()
    parsed = urlparse(uri)
    world.s3.put_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=gzipped_tar(members))


@pytest.fixture
def live(world, monkeypatch, never_sampled) -> str:
    """A deployed model whose artefact holds a reference; windows of WINDOW images, checked from LEAST."""
    set_env(monkeypatch, DRIFT_WINDOW_IMAGES=str(WINDOW), DRIFT_MIN_IMAGES=str(LEAST))
    version = deploy_model(world)["model_version"]
    put_artefact(world, version)
    return version


def classify(world, fake: FakeEndpoint, batch: str, count: int = WINDOW) -> None:
    """`count` images (png_bytes 0..count-1) under incoming/<batch>-<i>.png, delivered; a second later."""
    world.advance(1)
    for index in range(count):
        world.upload(f"incoming/{batch}-{index}.png", png_bytes(index))
    world.drain(FN, QUEUE)


def check(world) -> list[dict]:
    event = world.client.events.generate_cw_event("aws.events", "Scheduled Event", {}, [])
    return world.client.lambda_.invoke(DRIFT_FN, event).payload


def drift(world, query: str = "") -> dict:
    response = world.client.http.get(f"/drift{query}")
    assert response.status_code == 200, response.json_body
    return response.json_body


def version_view(world, version: str) -> dict:
    [view] = [v for v in drift(world)["versions"] if v["model_version"] == version]
    return view


def emitted(out: str, metric: str) -> list[dict]:
    return [record for record in (json.loads(line) for line in out.splitlines() if line.startswith('{"_aws"'))
            if metric in record]


# The incoming path ----------------------------------------------------------------

def test_each_prediction_keeps_its_embedding_and_one_answered_without_is_stored_all_the_same(world, live):
    with fake_endpoint(live) as fake:
        classify(world, fake, "with", count=2)
        fake.embeddings = False
        classify(world, fake, "without", count=1)
    assert all(r["CustomAttributes"] == "embeddings=1" for r in fake.requests)  # every request asks
    item = prediction(world, "with-1.png")
    assert item["status"] == "OK" and item["embedding"] == pytest.approx(pattern(1)[2])
    assert item["labels"][0] == {"label": "1", "probability": pytest.approx(pattern(1)[1])}
    assert "drift_version" not in item  # the index's key is the store's business
    plain = prediction(world, "without-0.png")
    assert plain["status"] == "OK" and "embedding" not in plain
    # The version's window: only the images with an embedding, newest first, with what the statistics read.
    window = stores().predictions.drift_window(live, 10)
    assert sorted(i["image_key"] for i in window) == ["incoming/with-0.png", "incoming/with-1.png"]
    assert set(window[0]) == {"image_key", "drift_version", "created_at", "labels", "embedding"}
    assert stores().predictions.drift_window("another-version", 10) == []


# The check -------------------------------------------------------------------------

def test_a_window_like_the_reference_records_no_event_and_publishes_its_statistics(world, live, capsys):
    with fake_endpoint(live) as fake:
        classify(world, fake, "a", count=LEAST - 1)
    capsys.readouterr()
    [first] = check(world)
    assert first["compared"] is False and first["images"] == LEAST - 1
    assert "fewer than DRIFT_MIN_IMAGES" in first["reason"]
    assert emitted(capsys.readouterr().out, "Drifted") == []  # nothing compared, nothing published
    with fake_endpoint(live) as fake:
        classify(world, fake, "b")
    [result] = check(world)
    assert result["compared"] is True and result["reasons"] == [] and not result["began"]
    records = emitted(capsys.readouterr().out, "Drifted")
    [per_version] = [r for r in records if "ModelVersion" in r]
    assert per_version["ModelVersion"] == live and per_version["Drifted"] == [0.0]
    assert per_version["DriftEmbeddingDistance"] == [pytest.approx(0.0, abs=1e-9)]
    assert per_version["DriftConfidencePSI"][0] < 0.1 and per_version["DriftClassPValue"][0] > 0.99
    assert per_version["DriftWindowImages"] == [WINDOW]
    [service] = [r for r in records if "ModelVersion" not in r]  # the alarm's metric: the service's
    assert service["Drifted"] == [0.0] and service["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    view = drift(world)
    assert view["items"] == [] and view["next"] is None
    [mine] = [v for v in view["versions"] if v["model_version"] == live]
    assert mine["has_reference"] is True and mine["drifting"] is False and mine["episode"] is None
    assert mine["statistics"]["images"] == WINDOW and mine["reasons"] == []
    # The reference kept on the registry item is the check's, not GET /models' to show.
    models = world.client.http.get("/models").json_body
    assert [m for m in models["items"] if "drift_reference" in m] == [] and "drift_reference" not in models["live"]


def test_a_shifted_window_records_exactly_one_event_however_often_it_is_checked(world, live, monkeypatch):
    with fake_endpoint(live) as fake:
        fake.shift = SHIFT
        classify(world, fake, "shifted")
    [result] = check(world)
    assert result["began"] is True and result["reasons"][0].startswith("embedding distance")
    [again] = check(world)  # the next minute: the same window, still drifting
    assert again["compared"] and again["reasons"] and not again["began"]
    # A check that read the state before the first one wrote it (a concurrent or retried Lambda)
    # still writes no second event: the episode begins on a condition, not on what was read.
    monkeypatch.setattr(type(stores().drift), "state", lambda self, version, **_: None)
    [stale] = check(world)
    assert stale["reasons"] and not stale["began"]
    [event] = drift(world)["items"]
    assert event["model_version"] == live and "ended_at" not in event
    shifted = math.sqrt(sum((SHIFT / std) ** 2 for std in reference().embedding_std) / EMBEDDING_DIMS)
    assert event["statistics"]["embedding_distance"] == pytest.approx(shifted, rel=1e-4)
    assert event["thresholds"] == {"psi": 0.25, "class_p_value": 0.001, "embedding_distance": 0.3}
    assert event["reasons"] == result["reasons"]
    view = version_view(world, live)
    assert view["drifting"] is True and view["episode"] == event["event_id"]


def test_the_episode_ends_when_a_later_window_is_back_under_the_thresholds(world, live):
    with fake_endpoint(live) as fake:
        fake.shift = SHIFT
        classify(world, fake, "shifted")
        check(world)
        fake.shift = 0.0
        classify(world, fake, "back")  # the newest WINDOW images are like the reference again
    [result] = check(world)
    assert result["ended"] is True and result["reasons"] == []
    [event] = drift(world)["items"]
    assert event["ended_at"] == world.clock[0] and event["end_statistics"]["embedding_distance"] < 0.01
    [repeated] = check(world)
    assert not repeated["ended"] and not repeated["began"]
    assert drift(world)["items"] == [event]  # a repeated check changes nothing
    assert version_view(world, live)["drifting"] is False


def test_while_drifting_predictions_are_sampled_at_the_drift_rate_within_the_hourly_cap(world, live, monkeypatch):
    monkeypatch.setattr(review, "draw", lambda: 0.1)  # above REVIEW_SAMPLE_RATE 0.02, below the drift rate 0.2
    with fake_endpoint(live) as fake:
        fake.shift = SHIFT
        classify(world, fake, "shifted")  # stored before the check: drawn at the ordinary rate
        assert not any(prediction(world, f"shifted-{i}.png").get("sampled") for i in range(WINDOW))
        assert check(world)[0]["began"]
        set_env(monkeypatch, REVIEW_SAMPLES_PER_HOUR="3")
        classify(world, fake, "during", count=5)
    during = [prediction(world, f"during-{i}.png") for i in range(5)]
    sampled = [item for item in during if item.get("sampled")]
    assert len(sampled) == 3  # every draw is under the drift rate; the hour's cap stops the last two
    assert all(item["review_reason"] == "sampled" for item in sampled)
    assert [item["image_key"] for item in review_queue(world)] == sorted(item["image_key"] for item in sampled)


def review_queue(world) -> list[dict]:
    response = world.client.http.get("/review?limit=100")
    assert response.status_code == 200, response.json_body
    return sorted(response.json_body["items"], key=lambda item: item["image_key"])


# GET /drift ----------------------------------------------------------------------------

def test_get_drift_before_any_check_shows_the_settings_and_no_events(world, monkeypatch):
    set_env(monkeypatch, DRIFT_PSI_THRESHOLD="0.3")
    view = drift(world)
    assert view == {"thresholds": {"psi": 0.3, "class_p_value": 0.001, "embedding_distance": 0.3},
                    "window_images": 200, "min_images": 100, "review_sample_rate": 0.2, "versions": [],
                    "items": [], "next": None}
    version = deploy_model(world)["model_version"]
    [model] = drift(world)["versions"]
    assert model["model_version"] == version and model["status"] == "LIVE"
    assert model["has_reference"] is None and model["statistics"] is None  # not read until checked


def test_events_are_listed_newest_first_in_pages_and_a_bad_cursor_is_400(world, live):
    with fake_endpoint(live) as fake:
        for episode in range(3):
            fake.shift = SHIFT
            classify(world, fake, f"shifted-{episode}")
            assert check(world)[0]["began"]
            if episode < 2:
                fake.shift = 0.0
                classify(world, fake, f"back-{episode}")
                assert check(world)[0]["ended"]
    first = drift(world, "?limit=2")
    assert len(first["items"]) == 2 and first["next"]
    assert "ended_at" not in first["items"][0] and "ended_at" in first["items"][1]
    second = drift(world, f"?limit=2&cursor={first['next']}")
    assert len(second["items"]) == 1 and second["next"] is None
    started = [e["started_at"] for e in first["items"] + second["items"]]
    assert started == sorted(started, reverse=True)
    for query in ("?cursor=not-a-cursor", "?cursor=" + base64.urlsafe_b64encode(b"RUN#x").decode(), "?limit=0"):
        response = world.client.http.get(f"/drift{query}")
        assert response.status_code == 400, query


def test_a_version_without_a_reference_is_not_checked_and_says_why_logged_once(world, monkeypatch, never_sampled,
                                                                                caplog):
    set_env(monkeypatch, DRIFT_WINDOW_IMAGES=str(WINDOW), DRIFT_MIN_IMAGES=str(LEAST))
    version = deploy_model(world)["model_version"]
    put_artefact(world, version, with_reference=False)
    with fake_endpoint(version) as fake:
        fake.embeddings = False  # a model with no reference answers none
        classify(world, fake, "x")
    caplog.clear()
    [first] = check(world)
    [second] = check(world)
    assert not first["compared"] and first["reason"] == f"no drift reference: its model.tar.gz has no {REFERENCE_FILE}"
    assert second == first
    assert [r.getMessage() for r in caplog.records].count("no drift check for this model version") == 1
    view = version_view(world, version)
    assert view["has_reference"] is False and view["no_reference_reason"] == f"its model.tar.gz has no {REFERENCE_FILE}"
    assert view["statistics"] is None and drift(world)["items"] == []


def test_a_version_whose_artefact_is_gone_is_not_checked_and_says_so_once(world, live, caplog):
    """A deleted model.tar.gz is a lasting answer (NoSuchKey, as the policy may list final jobs'
    output), not an error that fails the schedule every minute (AccessDenied, had it not)."""
    uri = urlparse(stores().registry.get(live)["artifact"])
    world.s3.delete_object(Bucket=uri.netloc, Key=uri.path.lstrip("/"))
    caplog.clear()
    [first] = check(world)
    [second] = check(world)
    assert not first["compared"] and first["reason"] == f"no drift reference: its model.tar.gz is gone ({uri.geturl()})"
    assert second == first
    assert [r.getMessage() for r in caplog.records].count("no drift check for this model version") == 1


def test_a_reference_that_does_not_add_up_is_refused_with_its_reason(world, live):
    put_artefact(world, live, document=json.dumps({**reference().to_dict(), "images": 7}).encode())
    with pytest.raises(DriftInputError, match="do not add up"):
        drift_reference.read_reference(stores().registry.get(live)["artifact"])
    put_artefact(world, live, document=b"{not json")
    with pytest.raises(DriftInputError, match="not JSON"):
        drift_reference.read_reference(stores().registry.get(live)["artifact"])
    put_artefact(world, live)
    assert drift_reference.read_reference(stores().registry.get(live)["artifact"]) == reference()


def test_the_drift_alarm_watches_the_metric_the_check_publishes(app_env, capsys):
    """An alarm names its metric's exact dimensions: the service-wide Drifted, in the namespace and
    with the dimension values EMF gives it, is what the ImageDriftAlarm reads."""
    from chalice_app import drift_watch
    from training.drift import Statistics

    alarm = TEMPLATE["Resources"]["ImageDriftAlarm"]["Properties"]
    drift_watch.publish("some-version", Statistics(100, 0.5, 0.5, 0.1), drifted=True)
    records = emitted(capsys.readouterr().out, "Drifted")
    watched = [r for r in records if r["_aws"]["CloudWatchMetrics"][0]["Namespace"] == alarm["Namespace"]
               and all(r.get(d["Name"]) == d["Value"] for d in alarm["Dimensions"])
               and r["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[d["Name"] for d in alarm["Dimensions"]]]]
    assert [r[alarm["MetricName"]] for r in watched] == [[1.0]]
    assert alarm["Statistic"] == "Maximum" and alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1


def test_a_p_value_too_small_for_dynamodb_and_cloudwatch_is_kept_as_zero(app_env, capsys):
    """DynamoDB refuses numbers under 1e-130 and CloudWatch under 2^-360: such a p-value says no more than 0."""
    from chalice_app import drift_watch
    from training.drift import Statistics

    statistics = Statistics(100, 0.1234567891, 1e-300, 2.0)
    assert drift_watch.figures(statistics, ["x"]) == {
        "statistics": {"images": 100, "confidence_psi": 0.123457, "class_p_value": 0.0, "embedding_distance": 2.0},
        "reasons": ["x"]}
    drift_watch.publish("v", statistics, drifted=True)
    [record] = [r for r in emitted(capsys.readouterr().out, "DriftClassPValue")]
    assert record["DriftClassPValue"] == [0.0]
