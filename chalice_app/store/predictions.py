"""The predictions table: one item per image key.

status is OK (labels, model version, latency), PENDING (no endpoint yet; re-driven
when a model goes live) or FAILED (with the reason). A final result (OK/FAILED)
for an image's eTag is never overwritten by a redelivered event; a new upload of
the same key (a new eTag) replaces it. GSIs: `by_status` finds PENDING items,
`recent` lists everything newest first.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .. import aws
from .items import dynamo, plain, query_all

FINAL = ("OK", "FAILED")
_BATCH_GET_KEYS = 100  # BatchGetItem's limit
# One partition for the newest-first listing: fine for this product's write rate
# (one item per image); shard the feed key if uploads ever exceed ~1000/s.
FEED = "all"


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(plain(key), sort_keys=True).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError("the pagination cursor is not valid") from error
    if not isinstance(key, dict) or set(key) != {"image_key", "feed", "created_at"}:
        raise ValueError("the pagination cursor is not valid")
    return dynamo(key)


class Predictions:
    def __init__(self, table_name: str):
        self._table = aws.table(table_name)

    def get(self, image_key: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"image_key": image_key}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def final_etags(self, image_keys: Iterable[str]) -> dict[str, str]:
        """image key -> the eTag of its final (OK/FAILED) result, for the keys that have one."""
        keys, found = sorted(set(image_keys)), {}
        for start in range(0, len(keys), _BATCH_GET_KEYS):
            request: dict[str, Any] | None = {self._table.name: {
                "Keys": [{"image_key": key} for key in keys[start:start + _BATCH_GET_KEYS]], "ConsistentRead": True,
                "ProjectionExpression": "image_key, etag, #status", "ExpressionAttributeNames": {"#status": "status"}}}
            while request:
                answer = self._table.meta.client.batch_get_item(RequestItems=request)
                found.update({item["image_key"]: item["etag"] for item in answer["Responses"].get(self._table.name, [])
                              if item.get("status") in FINAL})
                request = answer.get("UnprocessedKeys") or None
        return found

    def save(self, image_key: str, etag: str, status: str, now: float, **fields: Any) -> bool:
        """Write the result; False when a final result for this eTag is already there."""
        item = {"image_key": image_key, "etag": etag, "status": status, "feed": FEED,
                "created_at": Decimal(str(now)), **dynamo({k: v for k, v in fields.items() if v is not None})}
        try:
            self._table.put_item(
                Item=item,
                ConditionExpression="attribute_not_exists(image_key) OR etag <> :etag OR NOT (#status IN (:ok, :failed))",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={":etag": etag, ":ok": "OK", ":failed": "FAILED"},
            )
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def pending(self) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"IndexName": "by_status", "KeyConditionExpression": "#status = :pending",
                                 "ExpressionAttributeNames": {"#status": "status"},
                                 "ExpressionAttributeValues": {":pending": "PENDING"}}
        return query_all(self._table, **query)

    def recent(self, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        query: dict[str, Any] = {"IndexName": "recent", "KeyConditionExpression": "feed = :feed",
                                 "ExpressionAttributeValues": {":feed": FEED}, "ScanIndexForward": False,
                                 "Limit": limit}
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor)
        page = self._table.query(**query)
        items = [{k: v for k, v in plain(item).items() if k != "feed"} for item in page.get("Items", [])]
        return items, _encode_cursor(page.get("LastEvaluatedKey"))
