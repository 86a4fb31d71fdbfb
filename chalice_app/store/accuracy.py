"""The live-accuracy counters (pk ACCURACY in the pipeline table), read back. They are written
only with a label, in the same transaction (store/predictions.py `finish_review`, requests built
by chalice_app/accuracy.py)."""

from __future__ import annotations

from typing import Any

from .. import aws
from .items import query_all

ACCURACY_PK = "ACCURACY"


class Accuracy:
    def __init__(self, table_name: str):
        self._table = aws.table(table_name)

    def all(self) -> list[dict[str, Any]]:
        """Every version's counter items: its totals and its confusion pairs."""
        return query_all(self._table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": ACCURACY_PK})

    def of(self, version: str) -> list[dict[str, Any]]:
        """One version's counter items (the prefix also finds versions that start with this one's name)."""
        items = query_all(self._table, KeyConditionExpression="pk = :pk AND begins_with(sk, :version)",
                          ExpressionAttributeValues={":pk": ACCURACY_PK, ":version": version})
        return [item for item in items if item.get("model_version") == version]
