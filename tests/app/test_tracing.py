"""What the Tracer records as metadata is JSON: X-Ray serialises each subsegment with
`json.dumps(..., default=str)`, which fails on a dict with non-string keys (classify_batch's
Upload → outcome) and reduces any other object (a StartOutcome) to its repr."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any

import pytest

from chalice_app import observability

from .conftest import ENV, png_bytes


class Subsegment:
    def __init__(self, name: str, recorded: dict[str, Any]) -> None:
        self.name, self.recorded = name, recorded

    def put_metadata(self, key: str, value: Any, namespace: str = "default") -> None:
        self.recorded[key] = value

    def put_annotation(self, key: str, value: Any) -> None:
        pass


class Provider:
    """Powertools' tracing provider, recording each subsegment's metadata."""

    def __init__(self) -> None:
        self.metadata: dict[str, Any] = {}

    @contextmanager
    def in_subsegment(self, name: str | None = None, **_: Any):
        yield Subsegment(name or "", self.metadata)


@pytest.fixture
def traced(monkeypatch) -> Provider:
    provider = Provider()
    monkeypatch.setattr(observability.tracer, "provider", provider)
    return provider


def not_json(metadata: dict[str, Any]) -> dict[str, str]:
    failed = {}
    for key, value in metadata.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            failed[key] = f"{type(value).__name__}: {error}"
    return failed


def test_the_sqs_handlers_record_only_json_responses(world, traced):
    world.upload("incoming/early.png", png_bytes(1))
    world.drain("on_incoming_image", ENV["INCOMING_QUEUE"])
    world.upload_training(3)
    world.drain("on_training_data", ENV["TRAINING_QUEUE"])
    assert {"incoming_images response", "training_data response"} <= set(traced.metadata)
    assert not_json(traced.metadata) == {}
