"""Set-based SQL of the fast lane: claim a batch of deliveries, record a batch of attempts.

The hot path of the engine runs these once per batch of deliveries. They bypass the ORM's
model building (measured here, building and loading tortoise models was a third of a worker's
time under load) but write exactly the rows and values the models describe, on SQLite and on
PostgreSQL. On PostgreSQL a batch costs two statements, sent straight to the pooled asyncpg
connection: the claim (the compare-and-set UPDATE joined to the messages in one CTE) and the
record (the Attempt rows as arrays through `unnest`, and the successes, in one CTE); measured
here that is a third of the CPU of the tortoise query path with one statement per step (their
errors are asyncpg's own, not tortoise's). Rows come back as small plain objects
(`ClaimedDelivery`, `ClaimedMessage`) with the attribute names of `Delivery` and `Message`, so
the rest of the engine treats both alike.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient, TransactionalDBClient
from tortoise.exceptions import IntegrityError, OperationalError

from models.enums import DeadLetterStatus, DeliveryStatus


@dataclass(slots=True)
class ClaimedMessage:
    """The message a claimed delivery carries: its payload kept as the stored JSON text."""

    id: int
    event_type: str
    payload_json: str
    created_at: datetime

    @property
    def payload(self) -> Any:
        return json.loads(self.payload_json)


@dataclass(slots=True)
class ClaimedDelivery:
    """A delivery taken by one batch (status `running`, `attempts` already counting this try)."""

    id: int
    attempts: int
    message: ClaimedMessage
    endpoint_id: int | None
    bulk_operation_id: int | None
    metadata: dict[str, Any]
    endpoint: Any = field(default=None)  # models.endpoints.Endpoint, shared by the batch
    endpoint_version: str | None = None  # PostgreSQL: the endpoint row's xmin at the claim


#: one attempt row, in `_ATTEMPT_COLUMNS` order
AttemptRow = tuple[int, int, datetime, float, "int | None", str, "str | None", "str | None",
                   "str | None"]
_ATTEMPT_COLUMNS = ("delivery_id", "number", "started_at", "duration_ms", "status_code",
                    "outcome", "error_class", "error_message", "response_excerpt")


def _db() -> BaseDBAsyncClient:
    return connections.get("default")


async def pg_fetch(db: BaseDBAsyncClient, sql: str, *args: Any) -> list[Any]:
    """asyncpg records of one statement on the client's connection (the current transaction's
    inside `in_transaction`), without tortoise's per-query wrapping and dict building."""
    async with db.acquire_connection() as connection:
        return await connection.fetch(sql, *args)


T = TypeVar("T")


async def sqlite_transaction(work: Callable[[sqlite3.Connection], T]) -> T:
    """SQLite: `work(connection)` run in aiosqlite's thread in one hop, as one transaction
    (BEGIN IMMEDIATE … COMMIT, ROLLBACK if it raises), under tortoise's lock of the connection
    (no other task's statement or transaction runs in between). Inside a tortoise transaction
    it runs in that one. sqlite3's errors become tortoise's, as its own queries raise them.

    Each awaited statement is a hop to that thread and back, with tortoise's wrapping around
    it: a statement of a batch's few ran at a third or more of the CPU of the SQL itself.
    """
    db = _db()
    try:
        async with db.acquire_connection() as connection:
            if isinstance(db, TransactionalDBClient):
                return await connection._execute(work, connection._conn)
            return await connection._execute(_transaction, work, connection._conn)
    except sqlite3.OperationalError as exc:
        raise OperationalError(exc) from exc
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(exc) from exc


def _transaction(work: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    conn.execute("BEGIN IMMEDIATE")  # the write lock now: a writer elsewhere commits first
    try:
        result = work(conn)
        conn.execute("COMMIT")
    except BaseException:  # a failed COMMIT too: the connection is left with no transaction
        if conn.in_transaction:  # (SQLite ends it itself on some errors, e.g. a full disk)
            conn.execute("ROLLBACK")
        raise
    return result


def _postgres(db: BaseDBAsyncClient) -> bool:
    return db.capabilities.dialect == "postgres"


def _marks(db: BaseDBAsyncClient, count: int, first: int = 1) -> list[str]:
    """`count` numbered bind parameters from position `first`: `$n` on PostgreSQL, `?n` on
    SQLite (so one value may be used twice in a statement)."""
    sign = "$" if _postgres(db) else "?"
    return [f"{sign}{i}" for i in range(first, first + count)]


def _ids_clause(db: BaseDBAsyncClient, ids: Sequence[int], first: int) -> tuple[str, list[Any]]:
    """`= ANY($n)` with one array parameter on PostgreSQL; `IN (?, ...)` on SQLite."""
    if _postgres(db):
        return f"= ANY(${first}::int[])", [list(ids)]
    return f"IN ({', '.join(_marks(db, len(ids), first))})", list(ids)


def as_datetime(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def as_json(value: Any) -> Any:
    if isinstance(value, str):
        return {} if value == "{}" else json.loads(value)
    return value if value is not None else {}


async def claim_deliveries(ids: Sequence[int], token: str, agent_id: str | None,
                           now: datetime) -> list[ClaimedDelivery]:
    """Take those of `ids` still waiting (`queued`/`retrying`) in one compare-and-set UPDATE,
    counting the try, and return them with their messages (endpoints are left to the caller).

    A delivery handed to two batches is taken by exactly one of them.
    """
    db = _db()
    if _postgres(db):
        return await _claim_postgres(db, ids, token, agent_id, now)
    head = _marks(db, 6)
    where, id_values = _ids_clause(db, ids, 7)
    rows = await db.execute_query_dict(
        f"UPDATE delivery SET status = {head[0]}, attempts = attempts + 1, claim_token = {head[1]},"
        f" claimed_by = {head[2]}, updated_at = {head[3]}"
        f" WHERE status IN ({head[4]}, {head[5]}) AND id {where}"
        " RETURNING id, message_id, endpoint_id, attempts, metadata, bulk_operation_id",
        [DeliveryStatus.RUNNING.value, token, agent_id, now, DeliveryStatus.QUEUED.value,
         DeliveryStatus.RETRYING.value, *id_values])
    if not rows:
        return []
    messages = await _messages(db, {r["message_id"] for r in rows})
    claimed = [ClaimedDelivery(
        id=r["id"], attempts=r["attempts"], message=messages[r["message_id"]],
        endpoint_id=r["endpoint_id"], bulk_operation_id=r["bulk_operation_id"],
        metadata=as_json(r["metadata"])) for r in rows]
    claimed.sort(key=lambda d: d.id)
    return claimed


_PG_CLAIM = (
    "WITH claimed AS (UPDATE delivery SET status = $1, attempts = attempts + 1, claim_token = $2,"
    " claimed_by = $3, updated_at = $4 WHERE status IN ($5, $6) AND id = ANY($7::int[])"
    " RETURNING id, message_id, endpoint_id, attempts, metadata, bulk_operation_id)"
    " SELECT c.id, c.endpoint_id, c.attempts, c.metadata::text AS metadata, c.bulk_operation_id,"
    " m.id AS message_id, m.event_type, m.payload::text AS payload, m.created_at,"
    " e.xmin::text AS endpoint_version"
    " FROM claimed c JOIN message m ON m.id = c.message_id"
    " LEFT JOIN endpoint e ON e.id = c.endpoint_id ORDER BY c.id")


async def _claim_postgres(db: BaseDBAsyncClient, ids: Sequence[int], token: str,
                          agent_id: str | None, now: datetime) -> list[ClaimedDelivery]:
    return claimed_from_rows(await pg_fetch(
        db, _PG_CLAIM, DeliveryStatus.RUNNING.value, token, agent_id, now,
        DeliveryStatus.QUEUED.value, DeliveryStatus.RETRYING.value, list(ids)))


def claimed_from_rows(rows: Iterable[Any]) -> list[ClaimedDelivery]:
    """The deliveries of claim rows that carry their message's columns: id, attempts,
    endpoint_id, bulk_operation_id, metadata (JSON text), message_id, event_type, payload
    (JSON text), the message's creation time (column `created_at`) and, on PostgreSQL,
    endpoint_version. Deliveries of one message share one ClaimedMessage; rows whose `id` is
    NULL (a claim's header row) are skipped."""
    messages: dict[int, ClaimedMessage] = {}
    claimed = []
    for r in rows:
        if r["id"] is None:
            continue
        if (message := messages.get(r["message_id"])) is None:
            message = messages[r["message_id"]] = ClaimedMessage(
                r["message_id"], r["event_type"], r["payload"], as_datetime(r["created_at"]))
        claimed.append(ClaimedDelivery(
            id=r["id"], attempts=r["attempts"], message=message, endpoint_id=r["endpoint_id"],
            bulk_operation_id=r["bulk_operation_id"], metadata=as_json(r["metadata"]),
            endpoint_version=r.get("endpoint_version")))
    return claimed


#: PostgreSQL: endpoints already built, by id, with the row version (xmin) they were built from
_ENDPOINT_CACHE: dict[int, tuple[str, Any]] = {}
_ENDPOINT_CACHE_MAX = 10_000


async def load_endpoints(ids: set[int], versions: dict[int, str] | None = None
                         ) -> dict[int, Any]:
    """The batch's endpoints (models.endpoints.Endpoint) by id: built straight from one raw
    row each on PostgreSQL (the ORM's query building cost more than the query).

    On PostgreSQL, `versions` are the rows' `xmin` as the claim read them (ClaimedDelivery.
    endpoint_version): an endpoint built earlier from the same row version is reused, so a
    batch whose endpoints did not change costs no statement. Every UPDATE of a row gives it
    a new xmin, whoever makes it (the API, the health check, a raw statement): a changed
    endpoint (URL, secret, disabled, retry config) is never served stale.
    """
    from models.endpoints import Endpoint

    if not ids:
        return {}
    db = _db()
    if not _postgres(db):
        return {e.id: e for e in await Endpoint.filter(id__in=ids)}
    found: dict[int, Any] = {}
    if versions:
        for endpoint_id in ids:
            cached = _ENDPOINT_CACHE.get(endpoint_id)
            if cached is not None and cached[0] == versions.get(endpoint_id):
                found[endpoint_id] = cached[1]
    if missing := [i for i in ids if i not in found]:
        rows = await pg_fetch(db, "SELECT *, xmin::text AS _row_version FROM endpoint"
                                  " WHERE id = ANY($1::int[])", missing)
        if len(_ENDPOINT_CACHE) > _ENDPOINT_CACHE_MAX:
            _ENDPOINT_CACHE.clear()
        for r in rows:
            values = dict(r)
            version = values.pop("_row_version")
            endpoint = found[r["id"]] = Endpoint._init_from_db(**values)
            _ENDPOINT_CACHE[r["id"]] = (version, endpoint)
    return found


async def _messages(db: BaseDBAsyncClient, ids: set[int]) -> dict[int, ClaimedMessage]:
    where, values = _ids_clause(db, sorted(ids), 1)
    payload = "payload::text" if _postgres(db) else "payload"
    rows = await db.execute_query_dict(
        f"SELECT id, event_type, {payload} AS payload, created_at FROM message WHERE id {where}",
        values)
    return {r["id"]: ClaimedMessage(r["id"], r["event_type"], r["payload"],
                                    as_datetime(r["created_at"])) for r in rows}


_PG_ATTEMPT_ARRAYS = ("$1::int[], $2::int[], $3::timestamptz[], $4::float8[], $5::int[],"
                      " $6::varchar[], $7::varchar[], $8::text[], $9::text[]")
_PG_INSERT_ATTEMPTS = (f"INSERT INTO attempt ({', '.join(_ATTEMPT_COLUMNS)})"
                       f" SELECT * FROM unnest({_PG_ATTEMPT_ARRAYS})")
_PG_SUCCEEDED = ("UPDATE delivery d SET status = $10, finished_at = u.at, updated_at = u.at,"
                 " last_error = NULL, last_status_code = u.code"
                 " FROM unnest($11::int[], $12::timestamptz[], $13::int[]) AS u(id, at, code)"
                 " WHERE d.id = u.id")
_PG_RESOLVED = ("UPDATE dead_letter e SET status = $14, resolved_at = r.at, updated_at = r.at"
                " FROM unnest($15::int[], $16::timestamptz[]) AS r(id, at)"
                " WHERE e.id = r.id AND e.status = $17")

#: one batch's record: its Attempt rows, its successes' ids by status code, and the DLQ
#: entries its successes resolve, at `now`
_Record = tuple[Sequence[AttemptRow], dict["int | None", list[int]], datetime, Sequence[int]]


class _GroupCommit:
    """Records of concurrent batches written together (PostgreSQL, outside a transaction).

    While one statement is in flight, the records that arrive wait, and then all go in the
    next statement: one round trip and one commit for several batches when a worker is busy
    (64 batch jobs run at once), no added wait when it is not. A statement that fails is
    retried batch by batch, so one batch's error is its own.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[_Record, asyncio.Future[None]]] = []
        self.flusher: asyncio.Task[None] | None = None

    async def write(self, db: BaseDBAsyncClient, record: _Record) -> None:
        done = asyncio.get_running_loop().create_future()
        self.queue.append((record, done))
        if self.flusher is None or self.flusher.done():
            self.flusher = asyncio.get_running_loop().create_task(self._flush(db))
        # shielded: a cancelled job does not take other batches' record down with it, and its
        # own attempt (which did happen) is still recorded
        await asyncio.shield(done)

    async def _flush(self, db: BaseDBAsyncClient) -> None:
        group: list[tuple[_Record, asyncio.Future[None]]] = []
        try:
            while self.queue:
                group, self.queue = self.queue, []
                await self._write_group(db, group)
        except BaseException:  # cancelled (the loop is closing): no writer may wait forever
            for _, done in group + self.queue:
                if not done.done():
                    done.cancel()
            self.queue = []
            raise

    @staticmethod
    async def _write_group(db: BaseDBAsyncClient,
                           group: list[tuple[_Record, asyncio.Future[None]]]) -> None:
        try:
            await _pg_record(db, [record for record, _ in group])
        except Exception:
            for record, done in group:  # one by one: each batch gets its own outcome
                try:
                    await _pg_record(db, [record])
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)
        else:
            for _, done in group:
                done.set_result(None)


#: per event loop (tests run several)
_GROUPS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _GroupCommit] = (
    weakref.WeakKeyDictionary())


async def record_attempts(rows: Sequence[AttemptRow], succeeded: dict[int | None, list[int]],
                          now: datetime, resolved: Sequence[int] = ()) -> None:
    """Write a batch of Attempt rows, mark the deliveries that succeeded (`succeeded`:
    delivery ids by the status code they got), and resolve the DLQ entries that successful
    retries re-delivered (`resolved`: entry ids; only those still `retrying` change).

    On PostgreSQL outside a transaction, one statement, shared with the records of other
    batches that arrive meanwhile (`_GroupCommit`); on SQLite, one transaction (its writes
    are the batch's record as a whole or not at all)."""
    db = _db()
    if not _postgres(db):  # one transaction, one hop to aiosqlite's thread
        updates = [_succeeded_sql(db, ids, code, now) for code, ids in succeeded.items()]
        if resolved:
            updates.append(_resolve_sql(db, resolved, now))
        await sqlite_transaction(partial(_sqlite_record, _insert_attempts_sql(db), rows,
                                         updates))
        return
    if isinstance(db, TransactionalDBClient):
        await insert_attempts(rows)
        for code, ids in succeeded.items():
            await mark_succeeded(ids, code, now)
        await resolve_entries(resolved, now)
        return
    if not rows and not succeeded:
        return
    loop = asyncio.get_running_loop()
    if (group := _GROUPS.get(loop)) is None:
        group = _GROUPS[loop] = _GroupCommit()
    await group.write(db, (rows, succeeded, now, resolved))


async def _pg_record(db: BaseDBAsyncClient, records: list[_Record]) -> None:
    """Records in one statement: the Attempt rows through `unnest`, the successes' UPDATE
    (each with its own finish time and status code) and the resolved DLQ entries' UPDATE in
    the same CTE."""
    rows = [row for record in records for row in record[0]]
    done = [(i, now, code) for _, succeeded, now, _ in records
            for code, ids in succeeded.items() for i in ids]
    entries = [(i, now) for _, _, now, resolved in records for i in resolved]
    columns = [list(column) for column in zip(*rows, strict=True)] or [[] for _ in _ATTEMPT_COLUMNS]
    if not done:
        await pg_fetch(db, _PG_INSERT_ATTEMPTS, *columns)
        return
    ids, ats, codes = (list(column) for column in zip(*done, strict=True))
    args = [*columns, DeliveryStatus.SUCCEEDED.value, ids, ats, codes]
    ctes = f"attempts AS ({_PG_INSERT_ATTEMPTS})"
    if entries:
        entry_ids, entry_ats = (list(column) for column in zip(*entries, strict=True))
        ctes += f", resolved AS ({_PG_RESOLVED})"
        args += [DeadLetterStatus.RESOLVED.value, entry_ids, entry_ats,
                 DeadLetterStatus.RETRYING.value]
    await pg_fetch(db, f"WITH {ctes} {_PG_SUCCEEDED}", *args)


def _resolve_sql(db: BaseDBAsyncClient, ids: Sequence[int], now: datetime
                 ) -> tuple[str, list[Any]]:
    head = _marks(db, 3)
    where, id_values = _ids_clause(db, ids, 4)
    return (f"UPDATE dead_letter SET status = {head[0]}, resolved_at = {head[1]},"
            f" updated_at = {head[1]} WHERE status = {head[2]} AND id {where}",
            [DeadLetterStatus.RESOLVED.value, now, DeadLetterStatus.RETRYING.value, *id_values])


def _succeeded_sql(db: BaseDBAsyncClient, ids: Sequence[int], status_code: int | None,
                   now: datetime) -> tuple[str, list[Any]]:
    head = _marks(db, 3)
    where, id_values = _ids_clause(db, ids, 4)
    return (f"UPDATE delivery SET status = {head[0]}, finished_at = {head[1]},"
            f" updated_at = {head[1]}, last_error = NULL, last_status_code = {head[2]}"
            f" WHERE id {where}", [DeliveryStatus.SUCCEEDED.value, now, status_code, *id_values])


def _insert_attempts_sql(db: BaseDBAsyncClient) -> str:
    return (f"INSERT INTO attempt ({', '.join(_ATTEMPT_COLUMNS)})"
            f" VALUES ({', '.join(_marks(db, len(_ATTEMPT_COLUMNS)))})")


async def resolve_entries(ids: Sequence[int], now: datetime) -> None:
    """DLQ entries re-delivered by a successful retry: `retrying` → `resolved`."""
    if ids:
        db = _db()
        await db.execute_query(*_resolve_sql(db, ids, now))


def _sqlite_record(insert_sql: str, rows: Sequence[AttemptRow],
                   updates: list[tuple[str, list[Any]]], conn: sqlite3.Connection) -> None:
    """`record_attempts` on SQLite, in aiosqlite's thread (see `sqlite_transaction`): the
    Attempt rows, then the successes' and resolved entries' UPDATEs."""
    if rows:
        conn.executemany(insert_sql, rows)
    for sql, params in updates:
        conn.execute(sql, params)


async def insert_attempts(rows: Sequence[AttemptRow]) -> None:
    """Write a batch of Attempt rows in one round trip."""
    if rows:
        db = _db()
        await db.execute_many(_insert_attempts_sql(db), list(rows))


async def mark_succeeded(ids: Sequence[int], status_code: int | None, now: datetime) -> None:
    """Deliveries whose attempt succeeded (all with the same status code): `succeeded`."""
    db = _db()
    await db.execute_query(*_succeeded_sql(db, ids, status_code, now))
