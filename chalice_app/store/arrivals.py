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
        self._table = aws.table(table_name)

    def first_sighting(self, key: str, etag: str, now: float) -> bool:
        """Record (key, eTag); False when it was seen before (a redelivered event)."""
        try:
            self._table.put_item(
                Item={"pk": f"OBJECT#{key}", "sk": f"ETAG#{etag}", "seen_at": Decimal(str(now)),
                      "expires_at": int(now) + DEDUPE_TTL_SECONDS},
                ConditionExpression="attribute_not_exists(pk)",
            )
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def record(self, now: float, *, arrivals: int, committed: bool) -> None:
        """Add new uploads (or a commit marker) to the current burst."""
        expression = "SET pending = :true, last_arrival = :now ADD arrivals :n, version :one"
        values = {":true": True, ":now": Decimal(str(now)), ":n": arrivals, ":one": 1}
        if committed:
            expression = "SET pending = :true, last_arrival = :now, committed = :true ADD arrivals :n, version :one"
        self._table.update_item(Key=BURST_KEY, UpdateExpression=expression, ExpressionAttributeValues=values)

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

    def rearm(self) -> None:
        """Give uploads back to the burst (a run that claimed them could not start)."""
        self._table.update_item(Key=BURST_KEY, UpdateExpression="SET pending = :true ADD version :one",
                                ExpressionAttributeValues={":true": True, ":one": 1})
