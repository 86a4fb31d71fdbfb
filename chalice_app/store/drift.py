"""Drift state and drift events in the pipeline table (the checks: chalice_app/drift_watch.py).

- pk DRIFT, sk <version>: the version's latest compared window (`statistics`, `reasons`,
  `checked_at`) and whether it is `drifting`; while it is, `episode` names its open event.
- pk DRIFT_EVENT, sk <started_at in ms, 15 digits>#<version>: one drift episode, newest last in
  the partition (listed newest first): `reasons`, `statistics` and `thresholds` when it began;
  `ended_at` and `end_statistics` once a window is back under the thresholds.

An episode begins and ends in one transaction with the state item, each conditioned on the state
it changes (begins only where the version is not drifting; ends only the episode that is open),
so a repeated or concurrent check, or a retried Lambda, records each episode exactly once.
"""

from __future__ import annotations

import base64
import re
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .. import aws
from .items import dynamo, plain

STATE_PK, EVENT_PK = "DRIFT", "DRIFT_EVENT"
_EVENT_ID = re.compile(r"^\d{15}#[^#]{1,256}$")


def event_id(version: str, now: float) -> str:
    return f"{int(now * 1000):015d}#{version}"


def encode_cursor(last_key: dict[str, Any] | None) -> str | None:
    return base64.urlsafe_b64encode(str(last_key["sk"]).encode()).decode() if last_key else None


def decode_cursor(cursor: str) -> str:
    """The event id a GET /drift cursor names; ValueError for anything else."""
    try:
        sk = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("the pagination cursor is not valid") from error
    if not _EVENT_ID.fullmatch(sk):
        raise ValueError("the pagination cursor is not valid")
    return sk


class Drift:
    def __init__(self, table_name: str):
        self._name = table_name
        self._table = aws.table(table_name)

    def state(self, version: str, *, consistent: bool = True) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"pk": STATE_PK, "sk": version}, ConsistentRead=consistent).get("Item")
        return plain(item) if item else None

    def drifting(self, version: str) -> bool:
        """Whether the version is drifting now (the incoming path's read: eventually consistent is
        enough, a prediction a second late is sampled at the old rate)."""
        item = self._table.get_item(Key={"pk": STATE_PK, "sk": version}, ProjectionExpression="drifting").get("Item")
        return bool(item and item.get("drifting"))

    def states(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": STATE_PK}}
        while True:
            page = self._table.query(**query)
            items.extend(plain(item) for item in page.get("Items", []))
            if "LastEvaluatedKey" not in page:
                return items
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def events(self, limit: int, cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Drift events, newest first."""
        query: dict[str, Any] = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": EVENT_PK},
                                 "ScanIndexForward": False, "Limit": limit}
        if cursor:
            query["ExclusiveStartKey"] = {"pk": EVENT_PK, "sk": decode_cursor(cursor)}
        page = self._table.query(**query)
        return [plain(item) for item in page.get("Items", [])], encode_cursor(page.get("LastEvaluatedKey"))

    def record(self, version: str, now: float, figures: dict[str, Any]) -> None:
        """The latest window's figures, the drifting flag left as it is (false on a first check)."""
        self._table.update_item(
            Key={"pk": STATE_PK, "sk": version},
            UpdateExpression="SET model_version = :version, drifting = if_not_exists(drifting, :false), "
                             "statistics = :statistics, reasons = :reasons, checked_at = :now",
            ExpressionAttributeValues=dynamo({":version": version, ":false": False, ":now": Decimal(str(now)),
                                              ":statistics": figures["statistics"], ":reasons": figures["reasons"]}))

    def begin(self, version: str, now: float, figures: dict[str, Any], thresholds: dict[str, float]) -> bool:
        """Open a drift episode: its event, and the version drifting; False where the version is
        drifting already (another check opened it: nothing is written)."""
        episode = event_id(version, now)
        state = {"Update": {
            "TableName": self._name, "Key": {"pk": STATE_PK, "sk": version},
            "UpdateExpression": "SET model_version = :version, drifting = :true, episode = :episode, "
                                "statistics = :statistics, reasons = :reasons, checked_at = :now",
            "ConditionExpression": "attribute_not_exists(drifting) OR drifting = :false",
            "ExpressionAttributeValues": dynamo({":version": version, ":true": True, ":false": False,
                                                 ":episode": episode, ":now": Decimal(str(now)),
                                                 ":statistics": figures["statistics"],
                                                 ":reasons": figures["reasons"]})}}
        event = {"Put": {
            "TableName": self._name, "ConditionExpression": "attribute_not_exists(sk)",
            "Item": dynamo({"pk": EVENT_PK, "sk": episode, "event_id": episode, "model_version": version,
                            "started_at": Decimal(str(now)), "reasons": figures["reasons"],
                            "statistics": figures["statistics"], "thresholds": thresholds})}}
        return self._transact([state, event])

    def end(self, version: str, episode: str, now: float, figures: dict[str, Any]) -> bool:
        """Close the open episode `episode`: the window is back under the thresholds. False where it
        is closed already."""
        state = {"Update": {
            "TableName": self._name, "Key": {"pk": STATE_PK, "sk": version},
            "UpdateExpression": "SET drifting = :false, statistics = :statistics, reasons = :reasons, "
                                "checked_at = :now REMOVE episode",
            "ConditionExpression": "drifting = :true AND episode = :episode",
            "ExpressionAttributeValues": dynamo({":true": True, ":false": False, ":episode": episode,
                                                 ":now": Decimal(str(now)), ":statistics": figures["statistics"],
                                                 ":reasons": figures["reasons"]})}}
        event = {"Update": {
            "TableName": self._name, "Key": {"pk": EVENT_PK, "sk": episode},
            "UpdateExpression": "SET ended_at = :now, end_statistics = :statistics",
            "ConditionExpression": "attribute_exists(sk) AND attribute_not_exists(ended_at)",
            "ExpressionAttributeValues": dynamo({":now": Decimal(str(now)), ":statistics": figures["statistics"]})}}
        return self._transact([state, event])

    def _transact(self, actions: list[dict[str, Any]]) -> bool:
        try:
            self._table.meta.client.transact_write_items(TransactItems=actions)
            return True
        except ClientError as error:
            if aws.is_first_condition_failure(error):
                return False
            raise
