"""The model registry: every model the gate passed, and which one is LIVE.

MODEL/<version> items carry status DEPLOYING, LIVE, RETIRED or FAILED; the item
LIVE/MODEL points at the live version with its test accuracy (the gate's bar) and
endpoint config. Promotion is one transaction, so the registry never shows two
live models or none in between.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from .. import aws
from .items import dynamo, plain, query_all

LIVE_KEY = {"pk": "LIVE", "sk": "MODEL"}


class Registry:
    def __init__(self, table_name: str):
        self._name = table_name
        self._table = aws.table(table_name)

    def add(self, version: str, now: float, **fields: Any) -> None:
        self._table.put_item(Item={"pk": "MODEL", "sk": version, "model_version": version, "status": "DEPLOYING",
                                   "created_at": Decimal(str(now)), **dynamo(fields)})

    def get(self, version: str) -> dict[str, Any] | None:
        item = self._table.get_item(Key={"pk": "MODEL", "sk": version}, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def by_endpoint_config(self, config_name: str) -> dict[str, Any] | None:
        return next((m for m in self.all() if m.get("endpoint_config") == config_name), None)

    def all(self) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": "MODEL"},
                                 "ScanIndexForward": False}
        return query_all(self._table, **query)

    def live(self) -> dict[str, Any] | None:
        item = self._table.get_item(Key=LIVE_KEY, ConsistentRead=True).get("Item")
        return plain(item) if item else None

    def set_status(self, version: str, status: str, **fields: Any) -> None:
        sets = ", ".join(["#status = :status", *(f"#f{i} = :f{i}" for i in range(len(fields)))])
        names = {"#status": "status", **{f"#f{i}": k for i, k in enumerate(fields)}}
        values = {":status": status, **{f":f{i}": dynamo(v) for i, v in enumerate(fields.values())}}
        self._table.update_item(Key={"pk": "MODEL", "sk": version}, UpdateExpression=f"SET {sets}",
                                ExpressionAttributeNames=names, ExpressionAttributeValues=values)

    def keep_drift_reference(self, version: str, reference: dict[str, Any]) -> bool:
        """Keep what the version's artefact says about drift (read once: chalice_app/drift_watch.py) on
        its item; False where it is kept already (the first read wins) or the item does not exist
        (an update would create a partial MODEL item)."""
        try:
            self._table.update_item(
                Key={"pk": "MODEL", "sk": version}, UpdateExpression="SET drift_reference = :r",
                ConditionExpression="attribute_exists(sk) AND attribute_not_exists(drift_reference)",
                ExpressionAttributeValues={":r": dynamo(reference)})
            return True
        except ClientError as error:
            if aws.is_conditional_failure(error):
                return False
            raise

    def promote(self, model: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Make `model` LIVE and retire the previous one, atomically. Returns the previous live pointer."""
        previous = self.live()
        if previous and previous["model_version"] == model["model_version"]:
            return None  # a redelivered InService event
        client = aws.client("dynamodb")
        pointer = {"pk": {"S": "LIVE"}, "sk": {"S": "MODEL"},
                   "model_version": {"S": model["model_version"]},
                   "run_id": {"S": model["run_id"]},
                   "endpoint_config": {"S": model["endpoint_config"]},
                   "test_accuracy": {"N": str(model["test_accuracy"])},
                   "since": {"N": str(now)}}
        actions: list[dict[str, Any]] = [
            {"Put": {"TableName": self._name, "Item": pointer}},
            {"Update": {"TableName": self._name, "Key": {"pk": {"S": "MODEL"}, "sk": {"S": model["model_version"]}},
                        "UpdateExpression": "SET #s = :live", "ExpressionAttributeNames": {"#s": "status"},
                        "ExpressionAttributeValues": {":live": {"S": "LIVE"}}}},
        ]
        if previous:
            actions.append({"Update": {
                "TableName": self._name, "Key": {"pk": {"S": "MODEL"}, "sk": {"S": previous["model_version"]}},
                "UpdateExpression": "SET #s = :retired", "ExpressionAttributeNames": {"#s": "status"},
                "ExpressionAttributeValues": {":retired": {"S": "RETIRED"}}}})
        try:
            client.transact_write_items(TransactItems=actions)
        except ClientError as error:
            if not aws.is_conditional_failure(error):
                raise
        return previous
