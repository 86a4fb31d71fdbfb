"""local_aws.moto_patches: every patch applied at once, once per process, and undone exactly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import moto.core.responses as core_responses
import moto.dynamodb.models as dynamodb_models
import pytest
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.moto_server.werkzeug_app import BackendRequest, DomainDispatcherApplication
from moto.sqs.models import Queue, SQSBackend

from local_aws import moto_dispatch, moto_dynamodb, moto_patches
from local_aws.moto_patches import MotoPatches

# Every class and module the patches change.
OWNERS = (Queue, SQSBackend, DomainDispatcherApplication, BackendRequest, core_responses, ConditionExpressionParser,
          dynamodb_models, DynamoDBBackend)


def state() -> dict[Any, dict[str, Any]]:
    return {owner: dict(vars(owner)) for owner in OWNERS}


@pytest.fixture
def unpatched(moto_patches: MotoPatches) -> Iterator[None]:
    """moto as installed, for one test: the session's patches are undone, and applied again after it."""
    moto_patches.undo()
    yield
    moto_patches.apply()


def test_undo_puts_moto_back_exactly(unpatched):
    # The session's patches were undone: moto's own code is back.
    assert DomainDispatcherApplication.get_backend_for_host is moto_dispatch.moto_backend_for_host
    assert vars(ConditionExpressionParser)["_lex_condition_expression"] is moto_dynamodb.moto_lexer
    assert DynamoDBBackend.transact_write_items is moto_dynamodb.moto_transact_write_items
    assert "_load_form_data" not in vars(BackendRequest)  # inherited again, as moto has it
    pristine = state()
    with MotoPatches():
        applied = state()
        assert [owner for owner in OWNERS if applied[owner] == pristine[owner]] == []
    assert state() == pristine


def test_moto_is_patched_once_per_process():
    before = state()
    with pytest.raises(RuntimeError, match="already patched"):
        MotoPatches().apply()  # the session's are applied
    assert state() == before


def test_a_patch_that_fails_leaves_moto_as_it_was(unpatched, monkeypatch):
    def moto_changed_shape(_patches: object) -> None:
        raise RuntimeError("moto's Queue.messages is gone")

    pristine = state()
    monkeypatch.setattr(moto_patches, "PATCHES", (*moto_patches.PATCHES, moto_changed_shape))
    with pytest.raises(RuntimeError, match="is gone"):
        MotoPatches().apply()
    assert state() == pristine
    monkeypatch.undo()
    with MotoPatches():  # nothing counted as applied: the patches apply
        assert state() != pristine
