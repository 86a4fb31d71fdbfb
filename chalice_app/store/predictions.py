"""The predictions table: one item per image key.

status is OK (labels, model version, latency), PENDING (no endpoint yet; re-driven
when a model goes live) or FAILED (with the reason). A final result (OK/FAILED)
for an image's eTag is never overwritten by a redelivered event; a new upload of
the same key (a new eTag) replaces it. GSIs: `by_status` finds PENDING items,
`recent` lists everything newest first, `review` (sparse: only items that carry
`review`, i.e. wait for a person's label) lists the review queue oldest first, and `drift`
(sparse: only OK items whose answer had an embedding summary carry `drift_version`, their
model version) gives a version's newest images with just what the drift statistics read
(`labels`, `embedding`): a window is one Query, newest first, with a Limit.

A prediction sampled for review is stored in one transaction with its hour's sample
counter (an item of the pipeline table): it counts exactly when it is stored, so a
redelivered event (refused by the final result's condition) never counts twice, and
one that would pass the hour's cap is stored unmarked. Likewise a label is recorded in one
transaction with its model version's live-accuracy counters (chalice_app/accuracy.py).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
# The review queue: `review` is present (always this value) only while the item waits for a label.
REVIEW_INDEX, WAITING = "review", "WAITING"
LOW_CONFIDENCE, SAMPLED = "low-confidence", "sampled"
# The per-hour sample counters in the pipeline table: pk SAMPLES_PK, sk the UTC hour (yyyymmddHH);
# the table's TTL removes them two days after their hour.
SAMPLES_PK = "REVIEW_SAMPLES"
_COUNTER_TTL_SECONDS = 2 * 86400


@dataclass(frozen=True)
class Marking:
    """Why a prediction waits for review (LOW_CONFIDENCE, SAMPLED or None: it does not), and whether
    it was drawn in the random sample (a low-confidence one may be too: the sample is of all)."""

    reason: str | None
    sampled: bool


# The drift window's index: keyed by `drift_version` (the model version, present only on items with
# an `embedding`) and created_at; it projects only the attributes the statistics need.
DRIFT_INDEX, DRIFT_KEY = "drift", "drift_version"

RECENT_CURSOR = frozenset({"image_key", "feed", "created_at"})
REVIEW_CURSOR = frozenset({"image_key", "review", "created_at"})
_SAVE_CONDITION = "attribute_not_exists(image_key) OR etag <> :etag OR NOT (#status IN (:ok, :failed))"


def _encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(plain(key), sort_keys=True).encode()).decode()


def decode_cursor(cursor: str, keys: frozenset[str] = RECENT_CURSOR) -> dict[str, Any]:
    """The index position a cursor names; `keys`: the attributes of that index's positions."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError("the pagination cursor is not valid") from error
    if not isinstance(key, dict) or set(key) != keys:
        raise ValueError("the pagination cursor is not valid")
    return dynamo(key)


def public(item: dict[str, Any], *also: str) -> dict[str, Any]:
    """A prediction item as the API shows it: without the index keys that only place it in an index
    (`feed`, `drift_version`; `also` any others)."""
    hidden = {"feed", DRIFT_KEY, *also}
    return {k: v for k, v in plain(item).items() if k not in hidden}


def sample_hour(now: float) -> str:
    """The UTC hour whose counter a sample taken at `now` counts in."""
    return time.strftime("%Y%m%d%H", time.gmtime(now))


class Predictions:
    def __init__(self, table_name: str, counter_table: str | None = None):
        self._table = aws.table(table_name)
        self._counter_table = counter_table  # where the review sample counters live (the pipeline table)

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

    def save(self, image_key: str, etag: str, status: str, now: float, *, review: Marking | None = None,
             samples_per_hour: int = 0, **fields: Any) -> bool:
        """Write the result; False when a final result for this eTag is already there. `review` puts
        it in the review queue (with its reason) and flags it as sampled; a sampled one counts in its
        hour's counter, in the same transaction, and once `samples_per_hour` are counted it is stored
        unflagged (and out of the queue, unless it has another reason to be there)."""
        item = {"image_key": image_key, "etag": etag, "status": status, "feed": FEED,
                "created_at": Decimal(str(now)), **dynamo({k: v for k, v in fields.items() if v is not None})}
        if status == "OK" and fields.get("embedding") is not None:
            item[DRIFT_KEY] = fields["model_version"]  # in the version's drift window
        review = review or Marking(None, False)
        if review.reason:
            item.update({"review": WAITING, "review_reason": review.reason})
        if review.sampled:
            stored = self._save_sampled({**item, "sampled": True}, etag, now, samples_per_hour)
            if stored is not None:
                return stored
            if review.reason == SAMPLED:  # sampling was its only reason
                item = {k: v for k, v in item.items() if k not in ("review", "review_reason")}
        try:
            self._table.put_item(Item=item, ConditionExpression=_SAVE_CONDITION, **self._condition_parts(etag))
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    @staticmethod
    def _condition_parts(etag: str) -> dict[str, Any]:
        return {"ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":etag": etag, ":ok": "OK", ":failed": "FAILED"}}

    def _save_sampled(self, item: dict[str, Any], etag: str, now: float, cap: int) -> bool | None:
        """Store the sampled item and count it, together; None when the hour's cap is reached."""
        if self._counter_table is None:
            raise ValueError("sampling for review needs the counter table")
        if cap <= 0:
            return None
        hour = sample_hour(now)
        expires = int(now // 3600 * 3600) + 3600 + _COUNTER_TTL_SECONDS
        try:
            self._table.meta.client.transact_write_items(TransactItems=[
                {"Put": {"TableName": self._table.name, "Item": item, "ConditionExpression": _SAVE_CONDITION,
                         **self._condition_parts(etag)}},
                {"Update": {"TableName": self._counter_table, "Key": {"pk": SAMPLES_PK, "sk": hour},
                            "UpdateExpression": "ADD sampled :one SET expires_at = :expires",
                            "ConditionExpression": "attribute_not_exists(sampled) OR sampled < :cap",
                            "ExpressionAttributeValues": {":one": 1, ":cap": cap, ":expires": expires}}},
            ])
            return True
        except ClientError as error:
            if aws.error_code(error) != "TransactionCanceledException":
                raise
            codes = [reason.get("Code") for reason in error.response.get("CancellationReasons", [])]
            if codes[:1] == ["ConditionalCheckFailed"]:
                return False  # already final for this eTag: a redelivery, counted (or not) the first time
            if codes[1:2] == ["ConditionalCheckFailed"]:
                return None
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
        items = [public(item) for item in page.get("Items", [])]
        return items, _encode_cursor(page.get("LastEvaluatedKey"))

    def drift_window(self, version: str, images: int) -> list[dict[str, Any]]:
        """The version's newest `images` predictions that carry an embedding, newest first (each
        with `labels` and `embedding`). A GSI read: eventually consistent, which a window is anyway."""
        query: dict[str, Any] = {"IndexName": DRIFT_INDEX, "KeyConditionExpression": "#version = :version",
                                 "ExpressionAttributeNames": {"#version": DRIFT_KEY},
                                 "ExpressionAttributeValues": {":version": version}, "ScanIndexForward": False}
        items: list[dict[str, Any]] = []
        while len(items) < images:  # a page stops at 1 MB too
            page = self._table.query(**query, Limit=images - len(items))
            items.extend(plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return items

    # The review queue -------------------------------------------------------
    def waiting_for_review(self, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """The predictions waiting for a label, oldest first."""
        query: dict[str, Any] = {"IndexName": REVIEW_INDEX, "KeyConditionExpression": "#review = :waiting",
                                 "ExpressionAttributeNames": {"#review": "review"},
                                 "ExpressionAttributeValues": {":waiting": WAITING}, "ScanIndexForward": True,
                                 "Limit": limit}
        if cursor:
            query["ExclusiveStartKey"] = decode_cursor(cursor, REVIEW_CURSOR)
        page = self._table.query(**query)
        items = [public(item, "review") for item in page.get("Items", [])]
        return items, _encode_cursor(page.get("LastEvaluatedKey"))

    def _update(self, image_key: str, expression: str, condition: str, names: dict[str, str],
                values: dict[str, Any]) -> bool:
        try:
            self._table.update_item(Key={"image_key": image_key}, UpdateExpression=expression,
                                    ConditionExpression=condition, ExpressionAttributeNames=names,
                                    ExpressionAttributeValues=dynamo(values))
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def claim_review(self, image_key: str, etag: str, label: str) -> bool:
        """Give the waiting prediction of this eTag its label (first step: the copy follows); False
        when it no longer waits, is another upload's, or another label claimed it first."""
        return self._update(image_key, "SET review_label = :label",
                            "#review = :waiting AND etag = :etag AND "
                            "(attribute_not_exists(review_label) OR review_label = :label)",
                            {"#review": "review"}, {":label": label, ":waiting": WAITING, ":etag": etag})

    def release_review(self, image_key: str, label: str) -> bool:
        """Undo a claim whose copy could not be made: the item waits as before."""
        return self._update(image_key, "REMOVE review_label", "#review = :waiting AND review_label = :label",
                            {"#review": "review"}, {":label": label, ":waiting": WAITING})

    def finish_review(self, image_key: str, etag: str, label: str, now: float,
                      counters: Sequence[dict[str, Any]] = (), **fields: Any) -> bool:
        """The claimed label's copy exists: record it and leave the queue; False when already done
        (or the item is another upload's now). `counters`: TransactWriteItems actions (the live
        accuracy's, chalice_app/accuracy.py) written in the same transaction, so they count only
        when the label is recorded, and so exactly once, whatever is repeated or retried."""
        names = {"#review": "review", **{f"#f{i}": name for i, name in enumerate(fields)}}
        values = {":label": label, ":waiting": WAITING, ":etag": etag, ":now": Decimal(str(now)),
                  **{f":f{i}": value for i, value in enumerate(fields.values())}}
        sets = ", ".join(["reviewed_at = :now", *(f"#f{i} = :f{i}" for i in range(len(fields)))])
        expression = f"SET {sets} REMOVE #review"
        # The eTag too: the counts are of the prediction the label was given for, not a newer upload's.
        condition = "#review = :waiting AND review_label = :label AND etag = :etag"
        if not counters:
            return self._update(image_key, expression, condition, names, values)
        try:
            self._table.meta.client.transact_write_items(TransactItems=[
                {"Update": {"TableName": self._table.name, "Key": {"image_key": image_key},
                            "UpdateExpression": expression, "ConditionExpression": condition,
                            "ExpressionAttributeNames": names, "ExpressionAttributeValues": dynamo(values)}},
                *counters,
            ])
            return True
        except ClientError as error:
            if aws.is_first_condition_failure(error):
                return False  # recorded already (a repeated or concurrent request): counted then
            raise  # a conflict with a concurrent write: the request fails; the same label again completes it
