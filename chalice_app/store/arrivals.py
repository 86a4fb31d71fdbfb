"""Training-data arrivals: the (key, eTag) dedupe and the burst that becomes the next run.

One item, BURST/CURRENT, records the burst in progress: whether it holds uploads
not yet trained on (`pending`), when the last one landed, and whether a `_COMMIT`
marker closed it. A run claims the burst with a conditional write on `version`,
so two invocations cannot both start a run from the same uploads.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from botocore.exceptions import ClientError

from .. import aws

BURST_KEY = {"pk": "BURST", "sk": "CURRENT"}
DEDUPE_TTL_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class Burst:
    pending: bool
    last_arrival: float
    arrivals: int
    committed: bool
    version: int

    def is_quiet(self, now: float, window: float) -> bool:
        return self.committed or now - self.last_arrival >= window


class Arrivals:
    def __init__(self, table_name: str):
        self._name = table_name
        self._table = aws.table(table_name)
        self._client = self._table.meta.client  # the resource's client: plain Python values in and out

    def add(self, key: str, etag: str, now: float, *, commit: bool = False) -> bool:
        """Record an upload (or a commit marker) in the current burst, once per (key, eTag).

        One transaction: the dedupe item and the burst change are written together, so
        a redelivered event changes nothing and a failed write can be retried whole.
        Returns False for a duplicate.
        """
        burst_update = "SET pending = :true, last_arrival = :now ADD version :one"
        if commit:
            burst_update = "SET pending = :true, last_arrival = :now, committed = :true ADD version :one"
        else:
            burst_update += ", arrivals :one"
        try:
            self._client.transact_write_items(TransactItems=[
                {"Put": {"TableName": self._name, "ConditionExpression": "attribute_not_exists(pk)",
                         "Item": {"pk": f"OBJECT#{key}", "sk": f"ETAG#{etag}", "seen_at": Decimal(str(now)),
                                  "expires_at": int(now) + DEDUPE_TTL_SECONDS}}},
                {"Update": {"TableName": self._name, "Key": BURST_KEY, "UpdateExpression": burst_update,
                            "ExpressionAttributeValues": {":true": True, ":now": Decimal(str(now)), ":one": 1}}},
            ])
            return True
        except ClientError as error:
            if aws.is_first_condition_failure(error):
                return False
            raise

    def current(self) -> Burst | None:
        item = self._table.get_item(Key=BURST_KEY, ConsistentRead=True).get("Item")
        if not item:
            return None
        return Burst(pending=bool(item.get("pending")), last_arrival=float(item.get("last_arrival", 0)),
                     arrivals=int(item.get("arrivals", 0)), committed=bool(item.get("committed")),
                     version=int(item.get("version", 0)))

    def claim(self, burst: Burst) -> bool:
        """Mark the burst as taken by a run; False when it changed since it was read."""
        try:
            self._table.update_item(
                Key=BURST_KEY,
                UpdateExpression="SET pending = :false, committed = :false, arrivals = :zero",
                ConditionExpression="version = :v",
                ExpressionAttributeValues={":false": False, ":zero": 0, ":v": burst.version},
            )
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise
