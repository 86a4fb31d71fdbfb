"""moto's state on disk: one SQLite database, object bodies as files beside it.

Written through by `local_aws.moto_write_through` (each request's changes in one
transaction, committed before moto's answer leaves), read once at start by
`local_aws.moto_restore`. SQLite in WAL mode with synchronous=NORMAL: a commit is in
the operating system's hands before the answer goes back, so it survives the death of
any process; a power loss may lose the last moments but leaves the database
consistent (an fsync per request would cost more than moto's own work on this disk).

Object bodies are files named by their SHA-256 (`objects/<hex>`), written before the
row that names them is committed; a body no row names any more is removed after the
commit, and `sweep()` removes what a crash between the two left behind.

Configuration (a bucket's notifications or lifecycle, an EventBridge rule or target) is kept
as the last request that set it, under a name for what it sets (`configuration`), to be
replayed into moto in the order it was set.

Layout: `<dir>/moto.sqlite3` (+ its -wal and -shm), `<dir>/objects/`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (account TEXT, name TEXT, region TEXT, PRIMARY KEY (account, name));
CREATE TABLE IF NOT EXISTS objects (account TEXT, bucket TEXT, key TEXT, file TEXT, etag TEXT, metadata TEXT,
                                    storage TEXT, PRIMARY KEY (account, bucket, key));
CREATE TABLE IF NOT EXISTS tables (account TEXT, region TEXT, name TEXT, definition TEXT,
                                   PRIMARY KEY (account, region, name));
CREATE TABLE IF NOT EXISTS items (account TEXT, region TEXT, tbl TEXT, key TEXT, item TEXT,
                                  PRIMARY KEY (account, region, tbl, key));
CREATE TABLE IF NOT EXISTS queues (account TEXT, region TEXT, name TEXT, attributes TEXT,
                                   PRIMARY KEY (account, region, name));
CREATE TABLE IF NOT EXISTS messages (id TEXT PRIMARY KEY, account TEXT, region TEXT, queue TEXT, message TEXT);
CREATE TABLE IF NOT EXISTS configuration (name TEXT PRIMARY KEY, request TEXT);
"""


@dataclass
class StoredObject:
    body: bytes
    etag: str
    metadata: dict[str, str]
    storage: str | None


@dataclass
class Change:
    """What one request changed, as post-images: a value of None means "gone"."""

    buckets: dict[tuple[str, str], str | None] = field(default_factory=dict)  # (account, name): region
    objects: dict[tuple[str, str, str], StoredObject | None] = field(default_factory=dict)  # (account, bucket, key)
    tables: dict[tuple[str, str, str], dict[str, Any] | None] = field(default_factory=dict)  # (account, region, name)
    items: dict[tuple[str, str, str, str], dict[str, Any] | None] = field(default_factory=dict)  # (..., table, key)
    queues: dict[tuple[str, str, str], dict[str, Any] | None] = field(default_factory=dict)  # (account, region, name)
    messages: dict[str, tuple[str, str, str, dict[str, Any]] | None] = field(default_factory=dict)  # id: (where, what)
    purged: set[tuple[str, str, str]] = field(default_factory=set)  # queues emptied (before messages above)
    # In order: (name, the request that sets it), or (prefix, None): what every name under it set is gone.
    configuration: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.buckets, self.objects, self.tables, self.items, self.queues, self.messages, self.purged,
                    self.configuration))


def _bytes_to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not stored")


def _bytes_from_json(value: dict[str, Any]) -> Any:
    return base64.b64decode(value["$bytes"]) if value.keys() == {"$bytes"} else value


def _dumps(value: Any) -> str:
    """JSON, with moto's binary values (DynamoDB B, SQS binary attributes) kept as bytes."""
    return json.dumps(value, default=_bytes_to_json)


def _loads(text: str) -> Any:
    return json.loads(text, object_hook=_bytes_from_json)


def item_key(key: dict[str, Any]) -> str:
    """A DynamoDB key ({attribute: typed value}) as the text the store indexes it by."""
    return json.dumps(key, sort_keys=True, default=_bytes_to_json)


class MotoStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.objects = self.directory / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.directory / "moto.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # One writer at a time: a change is read from moto and written under this lock, so the
        # last commit for a key holds its latest state (see moto_write_through).
        self.lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # --- writing --------------------------------------------------------------------------

    def _write_body(self, body: bytes) -> str:
        name = hashlib.sha256(body).hexdigest()
        path = self.objects / name
        if not path.exists():
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(body)
            os.replace(temporary, path)
        return name

    def commit(self, change: Change) -> None:
        """Apply one request's change in one transaction (call with `lock` held)."""
        if not change:
            return
        db = self._db
        files = {k: self._write_body(o.body) for k, o in change.objects.items() if o is not None}
        dropped: set[str] = set()
        db.execute("BEGIN")
        try:
            for (account, name), region in change.buckets.items():
                if region is None:
                    dropped.update(r[0] for r in db.execute(
                        "SELECT file FROM objects WHERE account=? AND bucket=?", (account, name)))
                    db.execute("DELETE FROM objects WHERE account=? AND bucket=?", (account, name))
                    db.execute("DELETE FROM buckets WHERE account=? AND name=?", (account, name))
                else:
                    db.execute("INSERT OR REPLACE INTO buckets VALUES (?, ?, ?)", (account, name, region))
            for (account, bucket, key), stored in change.objects.items():
                dropped.update(r[0] for r in db.execute(
                    "SELECT file FROM objects WHERE account=? AND bucket=? AND key=?", (account, bucket, key)))
                if stored is None:
                    db.execute("DELETE FROM objects WHERE account=? AND bucket=? AND key=?", (account, bucket, key))
                else:
                    db.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (account, bucket, key, files[account, bucket, key], stored.etag,
                                json.dumps(stored.metadata), stored.storage))
            for key, definition in change.tables.items():
                _replace_definition(db, "tables", key, definition, contents=("items", "tbl"))
            for (account, region, table, key), item in change.items.items():
                if item is None:
                    db.execute("DELETE FROM items WHERE account=? AND region=? AND tbl=? AND key=?",
                               (account, region, table, key))
                else:
                    db.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?)",
                               (account, region, table, key, _dumps(item)))
            for key, attributes in change.queues.items():
                _replace_definition(db, "queues", key, attributes, contents=("messages", "queue"))
            for account, region, name in change.purged:
                db.execute("DELETE FROM messages WHERE account=? AND region=? AND queue=?", (account, region, name))
            for message_id, placed in change.messages.items():
                if placed is None:
                    db.execute("DELETE FROM messages WHERE id=?", (message_id,))
                else:
                    account, region, queue, message = placed
                    # An upsert keeps the row's place: restore sends messages back in their first order.
                    db.execute("INSERT INTO messages VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                               "account=excluded.account, region=excluded.region, queue=excluded.queue, "
                               "message=excluded.message", (message_id, account, region, queue, _dumps(message)))
            for name, request in change.configuration:
                if request is None:
                    db.execute("DELETE FROM configuration WHERE substr(name, 1, ?) = ?", (len(name), name))
                else:  # a new row: replayed after what was set before it
                    db.execute("DELETE FROM configuration WHERE name=?", (name,))
                    db.execute("INSERT INTO configuration VALUES (?, ?)", (name, _dumps(request)))
            unused = [f for f in dropped - set(files.values())
                      if db.execute("SELECT 1 FROM objects WHERE file=? LIMIT 1", (f,)).fetchone() is None]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        for name in unused:
            (self.objects / name).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove bodies no row names (a crash between a commit and its cleanup); returns how many."""
        named = {r[0] for r in self._db.execute("SELECT DISTINCT file FROM objects")}
        removed = 0
        for path in self.objects.iterdir():
            if path.name not in named:
                path.unlink()
                removed += 1
        return removed

    # --- reading (restore) ----------------------------------------------------------------

    def buckets(self) -> Iterator[tuple[str, str, str]]:
        yield from self._db.execute("SELECT account, name, region FROM buckets")

    def stored_objects(self) -> Iterator[tuple[str, str, str, StoredObject]]:
        for account, bucket, key, file, etag, metadata, storage in self._db.execute("SELECT * FROM objects"):
            yield account, bucket, key, StoredObject((self.objects / file).read_bytes(), etag, json.loads(metadata),
                                                     storage)

    def tables(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        for account, region, name, definition in self._db.execute("SELECT * FROM tables"):
            yield account, region, name, json.loads(definition)

    def items(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        for account, region, table, item in self._db.execute("SELECT account, region, tbl, item FROM items"):
            yield account, region, table, _loads(item)

    def queues(self) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        for account, region, name, attributes in self._db.execute("SELECT * FROM queues"):
            yield account, region, name, json.loads(attributes)

    def configuration(self) -> Iterator[dict[str, Any]]:
        """The requests that set the configuration, in the order they were set."""
        for (request,) in self._db.execute("SELECT request FROM configuration ORDER BY rowid"):
            yield _loads(request)

    def messages(self) -> Iterator[tuple[str, str, str, str, dict[str, Any]]]:
        for row in self._db.execute("SELECT id, account, region, queue, message FROM messages ORDER BY rowid"):
            yield *row[:4], _loads(row[4])


def _replace_definition(db: sqlite3.Connection, kind: str, key: tuple[str, str, str], definition: dict[str, Any] | None,
                        *, contents: tuple[str, str]) -> None:
    """A table's or queue's definition (`kind`: "tables" or "queues") stored; when it is gone (None),
    what it held goes with it (`contents`: the table of its items or messages, and the column naming it)."""
    if definition is None:
        held, column = contents
        db.execute(f"DELETE FROM {held} WHERE account=? AND region=? AND {column}=?", key)
        db.execute(f"DELETE FROM {kind} WHERE account=? AND region=? AND name=?", key)
    else:
        db.execute(f"INSERT OR REPLACE INTO {kind} VALUES (?, ?, ?, ?)", (*key, json.dumps(definition)))
