"""Pipeline runs and the run lock, in the pipeline table.

A run moves STARTING → TUNING → TRAINING → DEPLOYING → DEPLOYED, or ends REFUSED,
REJECTED or FAILED. Every transition is a conditional write from the states it may
leave, so a redelivered event finds the run already moved and does nothing.
The lock (LOCK/RUN) names the one active run; taking it is a conditional put
(with the run's first record in the same transaction, for a run a person asks for).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .. import aws
from .items import dynamo, plain

LOCK_KEY = {"pk": "LOCK", "sk": "RUN"}
ACTIVE = ("STARTING", "TUNING", "TRAINING", "DEPLOYING")
ENDED = ("DEPLOYED", "REJECTED", "FAILED", "REFUSED")


class Runs:
    def __init__(self, table_name: str):
        self._table = aws.table(table_name)

    # The lock -------------------------------------------------------------
    def take_lock(self, run_id: str, now: float) -> bool:
        try:
            self._table.put_item(Item={**LOCK_KEY, "run_id": run_id, "taken_at": Decimal(str(now))},
                                 ConditionExpression="attribute_not_exists(pk)")
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def begin(self, run_id: str, now: float, **fields: Any) -> bool:
        """Take the lock and record the run in one transaction, so neither is ever without the
        other; False when another run holds the lock."""
        try:
            self._table.meta.client.transact_write_items(TransactItems=[
                {"Put": {"TableName": self._table.name, "ConditionExpression": "attribute_not_exists(pk)",
                         "Item": {**LOCK_KEY, "run_id": run_id, "taken_at": Decimal(str(now))}}},
                {"Put": {"TableName": self._table.name, "Item": self._item(run_id, now, fields)}},
            ])
            return True
        except ClientError as error:
            if aws.is_first_condition_failure(error):
                return False
            raise

    def lock(self) -> dict[str, Any] | None:
        """The lock: the run that holds it (`run_id`) and when it was taken (`taken_at`)."""
        item = self._table.get_item(Key=LOCK_KEY, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def lock_holder(self) -> str | None:
        lock = self.lock()
        return lock["run_id"] if lock else None

    def release_lock(self, run_id: str) -> None:
        """Release the lock if `run_id` holds it (a repeated release is harmless)."""
        try:
            self._table.delete_item(Key=LOCK_KEY, ConditionExpression="run_id = :id",
                                    ExpressionAttributeValues={":id": run_id})
        except ClientError as error:
            if not aws.is_conditional_failure(error):
                raise

    # Runs -----------------------------------------------------------------
    @staticmethod
    def _item(run_id: str, now: float, fields: dict[str, Any]) -> dict[str, Any]:
        return {"pk": "RUN", "sk": run_id, "run_id": run_id, "created_at": Decimal(str(now)),
                "updated_at": Decimal(str(now)), **dynamo(fields)}

    def create(self, run_id: str, now: float, **fields: Any) -> None:
        self._table.put_item(Item=self._item(run_id, now, fields))

    def get(self, run_id: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"pk": "RUN", "sk": run_id}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def transition(self, run_id: str, from_states: tuple[str, ...], to_state: str, now: float,
                   remove: tuple[str, ...] = (), **fields: Any) -> bool:
        """Move a run from one of `from_states` (setting `fields`, dropping the attributes named in
        `remove`); False when it is elsewhere (already moved)."""
        names = {"#status": "status"}
        values: dict[str, Any] = {":to": to_state, ":now": Decimal(str(now))}
        sets = ["#status = :to", "updated_at = :now"]
        for index, (name, value) in enumerate(fields.items()):
            names[f"#f{index}"] = name
            values[f":f{index}"] = dynamo(value)
            sets.append(f"#f{index} = :f{index}")
        allowed = []
        for index, state in enumerate(from_states):
            values[f":from{index}"] = state
            allowed.append(f":from{index}")
        for index, name in enumerate(remove):
            names[f"#r{index}"] = name
        removal = f" REMOVE {', '.join(f'#r{index}' for index in range(len(remove)))}" if remove else ""
        try:
            self._table.update_item(
                Key={"pk": "RUN", "sk": run_id},
                UpdateExpression="SET " + ", ".join(sets) + removal,
                ConditionExpression=f"attribute_exists(pk) AND #status IN ({', '.join(allowed)})",
                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            )
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def started_on(self, day: str) -> int:
        """How many runs started on `day` (yymmdd, as run ids begin r<yymmdd>), refused ones aside."""
        query: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :day)",
            "FilterExpression": "#status <> :refused", "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":pk": "RUN", ":day": f"r{day}", ":refused": "REFUSED"}, "Select": "COUNT"}
        count = 0
        while True:
            page = self._table.query(**query)
            count += page["Count"]
            if "LastEvaluatedKey" not in page:
                return count
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def recent(self, limit: int, start_after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first (run ids sort by start time), and the id to continue after."""
        query: dict[str, Any] = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": "RUN"},
                                 "ScanIndexForward": False, "Limit": limit}
        if start_after:
            query["ExclusiveStartKey"] = {"pk": "RUN", "sk": start_after}
        page = self._table.query(**query)
        last = page.get("LastEvaluatedKey")
        return [plain(item) for item in page.get("Items", [])], (last["sk"] if last else None)
