"""DynamoDB items to and from plain records, and paged queries: shared by every store."""

from __future__ import annotations

from decimal import Decimal
from typing import Any


def plain(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB's Decimals as ints/floats, keys dropped: a JSON-ready record."""
    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {k: convert(v) for k, v in item.items() if k not in {"pk", "sk"}}


def dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: dynamo(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [dynamo(v) for v in value]
    return value


def query_all(table: Any, **query: Any) -> list[dict[str, Any]]:
    """Every item a query matches, across pages, as plain records."""
    items: list[dict[str, Any]] = []
    while True:
        page = table.query(**query)
        items.extend(plain(item) for item in page.get("Items", []))
        if "LastEvaluatedKey" not in page:
            return items
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
