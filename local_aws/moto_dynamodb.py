"""moto 5.2's DynamoDB, made cheaper per request with the same answers.

Two patches, each found on the running stack:

- **Condition expressions lexed once per text** (`make_lexing_memoised`). Measured with
  py-spy on `bench/e2e.py`: a conditional PutItem, the predictions' idempotent write,
  made moto parse its ConditionExpression twice (once to check the names it uses, once
  to evaluate it), and tokenising the text was most of each parse: 6% of the moto
  process's time. The lexer compiles six regular expressions per token of a text that
  is the same for every image. The tokens depend only on the text, so they are kept per
  text (for a bounded number of texts), and each parse gets a fresh sequence of the same
  immutable tokens; names and values are substituted later, per request, as before.
- **A transaction saves only the items it touches** (`make_transactions_item_scoped`).
  For its rollback, moto's TransactWriteItems deep-copies every table the transaction
  names, whole, on every call: 11 ms per transaction with 100 items in the table, 59 ms
  with 1,000, 177 ms with 3,000. Every training image's arrival is one transaction on
  the pipeline table, which keeps one dedupe item per image ever uploaded, so recording
  an upload burst took time quadratic in the data set (the demo's 1,078-image burst
  took ~90 s to record). Here the transaction first saves a copy of each item it names,
  moto's table "copy" is the table itself, and a failed transaction puts those items
  back. (One difference: the stream records of a rolled-back write stay; the
  pipeline's tables have no streams.)

A moto that changed shape fails loudly here.
"""

from __future__ import annotations

import contextvars
import copy
import functools
from collections import deque
from typing import Any

import moto.dynamodb.models as dynamodb_models
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table

from .patching import Patches

_LEXER = "_lex_condition_expression"
# moto's own lexer, kept for the memoised one (and for the tests comparing the two).
moto_lexer = vars(ConditionExpressionParser).get(_LEXER)
moto_transact_write_items = vars(DynamoDBBackend).get("transact_write_items")


def make_lexing_memoised(patches: Patches) -> None:
    """Patch moto's condition-expression lexer in this process, recorded in `patches`."""
    lex = moto_lexer
    if lex is None or not isinstance(getattr(ConditionExpressionParser, "Node", None), type):
        raise RuntimeError("moto's condition-expression parser changed shape; review local_aws/moto_dynamodb.py")

    @functools.lru_cache(maxsize=1024)
    def tokens(text: str) -> tuple[Any, ...]:
        parser = ConditionExpressionParser.__new__(ConditionExpressionParser)
        parser.condition_expression = text  # the only state the lexer reads
        return tuple(lex(parser))

    def lex_memoised(self: ConditionExpressionParser) -> deque:
        return deque(tokens(self.condition_expression))

    patches.replace(ConditionExpressionParser, _LEXER, lex_memoised)


# ----------------------------------------------------------------------------- transactions

_IN_TRANSACTION: contextvars.ContextVar[bool] = contextvars.ContextVar("in_moto_transaction", default=False)


class _CopyKeepingTables:
    """The `copy` module as moto's DynamoDB backend sees it: within a transaction, the deep
    copy of a table is the table itself (the transaction saved the items it touches)."""

    copy = staticmethod(copy.copy)

    @staticmethod
    def deepcopy(value: Any, memo: dict | None = None) -> Any:
        if isinstance(value, Table) and _IN_TRANSACTION.get():
            return value
        return copy.deepcopy(value, memo)


def _touched_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[tuple]:
    """(table, hash key, range key, a copy of the item or None) for every item the transaction names."""
    saved = []
    for entry in transact_items:
        for operation, request in entry.items():
            table = backend.tables.get(request.get("TableName")) if isinstance(request, dict) else None
            if table is None:
                continue
            try:
                if operation == "Put":
                    key = {name: request["Item"][name] for name in (table.hash_key_attr, table.range_key_attr) if name}
                else:
                    key = request["Key"]
                hash_value, range_value = backend.get_keys_value(table, key)
                item = table.get_item(hash_value, range_value)
            except Exception:  # noqa: BLE001 - a key moto refuses: it changes nothing, and moto says why
                continue
            saved.append((table, hash_value, range_value, copy.deepcopy(item)))
    return saved


def _put_back(saved: list[tuple]) -> None:
    for table, hash_value, range_value, item in reversed(saved):  # the first copy of an item is its state before
        if item is None:
            table.delete_item(hash_value, range_value)
        elif range_value is not None:
            table.items[hash_value][range_value] = item
        else:
            table.items[hash_value] = item


def make_transactions_item_scoped(patches: Patches) -> None:
    """Patch moto's TransactWriteItems rollback to save items, not tables, recorded in `patches`."""
    if moto_transact_write_items is None or dynamodb_models.copy is not copy or \
            not all(hasattr(Table, name) for name in ("get_item", "delete_item", "put_item")) or \
            not hasattr(DynamoDBBackend, "get_keys_value"):
        raise RuntimeError("moto's DynamoDB transactions changed shape; review local_aws/moto_dynamodb.py")

    @functools.wraps(moto_transact_write_items)
    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        saved = _touched_items(self, transact_items)
        token = _IN_TRANSACTION.set(True)
        try:
            return moto_transact_write_items(self, transact_items)
        except Exception:
            _put_back(saved)
            raise
        finally:
            _IN_TRANSACTION.reset(token)

    patches.replace(dynamodb_models, "copy", _CopyKeepingTables)
    patches.replace(DynamoDBBackend, "transact_write_items", transact_write_items)
