"""One step of a Retry All walk in set-based SQL (jobs.operations.bulk_walk calls `retry_step`).

A step takes the next entries of the frozen scope after the cursor (up to the step's size),
claims those still `active`, unchanged since the operation started and of an enabled endpoint
(compare-and-set active → retrying: of two walkers, or a walker and a single retry, exactly
one takes each), creates one queued delivery per claimed entry (`retry_of`, the operation,
`__retry_metadata` as jobs.outcomes reads it), links each entry to its delivery
(`last_retry_delivery`), and moves the operation's cursor and figures with a compare-and-set
(the walkers' lock: another walker, or a cancel — its first write sets `cancelled`, then
`walked_at` — makes the step undo everything). Entries taken but not claimed are `skipped`.

    PostgreSQL  ONE statement (atomic on its own): the scope's query, a row lock on the
                operation when its cursor is still ours, then data-modifying CTEs. The claim
                draws each delivery's id from the sequence (looked up once per statement, not
                per row: 8.5 against 0.75 µs a row here) and links the entry to it, so each
                entry row is written once (a second UPDATE of rows written in the same
                transaction would re-run all their foreign-key checks). Of a new delivery's
                keys only `message_id` and `endpoint_id` are checked: the statement itself
                guarantees the operation (locked), the original delivery (the claimed entry's)
                and the link (created here), migration 0013.
    SQLite      the scope's query, then claim, create, link and the cursor in one transaction
                (no data-modifying CTEs there; a writer holds the write lock until commit).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.queryset import ValuesListQuery
from tortoise.transactions import in_transaction

from models.bulk import BulkOperation
from models.enums import DeadLetterStatus, DeliveryStatus


class Superseded(Exception):
    """Another walker moved the cursor, or the walk was ended (cancel): stop walking."""


@dataclass
class Step:
    cursor: int  # the last entry id taken
    taken: int  # entries taken from the scope (claimed + skipped)
    created: list[tuple[int, int]]  # (delivery id, endpoint id) of the claimed entries


#: the PostgreSQL step; `{scope}` is the scope's parameterized query ($1…), `{op}`… are the
#: numbers of the step's own parameters after it. Result rows: (0, cursor, handed, skipped)
#: when the cursor moved, (1, entries taken, 0, 0) always, (2, delivery, endpoint, 0) per
#: delivery created.
_PG_STEP = """
WITH picked(id) AS ({scope}),
locked AS (
    SELECT id FROM bulk_operation
    WHERE id = {op} AND "cursor" = {cursor} AND walked_at IS NULL AND NOT cancelled
    FOR UPDATE
), claimed AS (
    UPDATE dead_letter SET status = {retrying}, retry_count = retry_count + 1,
           updated_at = {now},
           last_retry_delivery_id = nextval(
               (SELECT pg_get_serial_sequence('delivery', 'id')::regclass))
    WHERE id = ANY(ARRAY(SELECT id FROM picked)) AND status = {active}
      AND updated_at <= {started} AND EXISTS (SELECT 1 FROM locked)
      AND endpoint_id IN (SELECT id FROM endpoint WHERE enabled)
    RETURNING id, last_retry_delivery_id, delivery_id, message_id, endpoint_id, retry_count
), created AS (
    INSERT INTO delivery (id, message_id, endpoint_id, status, attempts, retry_of_id,
                          bulk_operation_id, metadata, created_at, updated_at)
    SELECT last_retry_delivery_id, message_id, endpoint_id, {queued}, 0, delivery_id, {op},
           jsonb_build_object('__retry_metadata', jsonb_build_object(
               'original_delivery_id', delivery_id, 'dead_letter_id', id,
               'retry_count', retry_count, 'sandbox', false, 'bulk_operation_id', {op})),
           {now}, {now}
    FROM claimed ORDER BY id
    RETURNING id, endpoint_id
), moved AS (
    UPDATE bulk_operation SET "cursor" = (SELECT max(id) FROM picked),
           handed = handed + (SELECT count(*) FROM created),
           skipped = skipped + (SELECT count(*) FROM picked) - (SELECT count(*) FROM created)
    WHERE id IN (SELECT id FROM locked) AND EXISTS (SELECT 1 FROM picked)
    RETURNING "cursor", handed, skipped
)
SELECT 0 AS kind, "cursor" AS a, handed AS b, skipped AS c FROM moved
UNION ALL SELECT 1, (SELECT count(*) FROM picked)::int, 0, 0
UNION ALL SELECT 2, id, endpoint_id, 0 FROM created
"""
_PG_PARAMS = ("op", "cursor", "active", "started", "retrying", "now", "queued")

#: SQLite: `{ids}` are integers read from the database
_SQLITE_CLAIM = """
UPDATE dead_letter SET status = ?, retry_count = retry_count + 1, updated_at = ?
WHERE id IN ({ids}) AND status = ? AND updated_at <= ?
  AND endpoint_id IN (SELECT id FROM endpoint WHERE enabled)
RETURNING id
"""
_SQLITE_CREATE = """
INSERT INTO delivery (message_id, endpoint_id, status, attempts, retry_of_id, bulk_operation_id,
                      claim_token, metadata, created_at, updated_at)
SELECT message_id, endpoint_id, ?, 0, delivery_id, ?, ?,
       json_object('__retry_metadata', json_object(
           'original_delivery_id', delivery_id, 'dead_letter_id', id,
           'retry_count', retry_count, 'sandbox', json('false'), 'bulk_operation_id', ?)),
       ?, ?
FROM dead_letter WHERE id IN ({ids}) ORDER BY id
RETURNING id, endpoint_id
"""
_SQLITE_LINK = """
UPDATE dead_letter SET last_retry_delivery_id = d.id FROM delivery d
WHERE d.claim_token = ? AND d.bulk_operation_id IS NOT NULL
  AND dead_letter.delivery_id = d.retry_of_id
"""


async def retry_step(op: BulkOperation, scope: ValuesListQuery[Any]) -> Step | None:
    """Walk one step of `op` over `scope` (a values_list("id", flat=True) query of the next
    entries after the cursor, in id order, limited to the step's size); None when the scope
    is exhausted. Updates `op`'s cursor and figures.

    Raises:
        Superseded: the cursor was moved by another walker, or the walk was ended.
    """
    conn = connections.get("default")
    now = datetime.now(UTC)
    if conn.capabilities.dialect == "postgres":
        return await _pg_step(conn, op, scope, now)
    ids: list[int] = list(await scope)
    if not ids:
        return None
    async with in_transaction() as tx:
        created = await _sqlite_claim_and_create(tx, ids, op, now)
        handed, skipped = op.handed + len(created), op.skipped + len(ids) - len(created)
        if not await BulkOperation.filter(id=op.id, cursor=op.cursor, walked_at=None,
                                          cancelled=False).update(
                cursor=ids[-1], handed=handed, skipped=skipped):
            raise Superseded
    op.cursor, op.handed, op.skipped = ids[-1], handed, skipped
    return Step(cursor=ids[-1], taken=len(ids), created=created)


async def _pg_step(conn: BaseDBAsyncClient, op: BulkOperation, scope: ValuesListQuery[Any],
                   now: datetime) -> Step | None:
    scope.sql()  # builds `scope.query`, as running it would; its SQL and parameters go inline
    scope_sql, scope_params = scope.query.get_parameterized_sql()
    first = len(scope_params) + 1
    sql = _PG_STEP.format(scope=scope_sql, **{
        name: f"${first + i}" + ("::int" if name == "op" else "")
        for i, name in enumerate(_PG_PARAMS)})
    rows = await conn.execute_query(sql, [
        *scope_params, op.id, op.cursor, DeadLetterStatus.ACTIVE.value, op.started_at,
        DeadLetterStatus.RETRYING.value, now, DeliveryStatus.QUEUED.value])
    kinds: dict[int, list[Any]] = {0: [], 1: [], 2: []}
    for row in rows[1]:
        kinds[row[0]].append(row)
    taken = kinds[1][0][1]
    if not taken:
        return None
    if not kinds[0]:
        raise Superseded
    _, op.cursor, op.handed, op.skipped = kinds[0][0]
    return Step(cursor=op.cursor, taken=taken, created=[(r[1], r[2]) for r in kinds[2]])


async def _sqlite_claim_and_create(tx: BaseDBAsyncClient, ids: list[int], op: BulkOperation,
                                   now: datetime) -> list[tuple[int, int]]:
    listed = ", ".join(str(int(i)) for i in ids)
    claimed = await tx.execute_query_dict(_SQLITE_CLAIM.format(ids=listed), [
        DeadLetterStatus.RETRYING.value, now, DeadLetterStatus.ACTIVE.value, op.started_at])
    if not claimed:
        return []
    token = str(uuid.uuid4())
    listed = ", ".join(str(int(r["id"])) for r in claimed)
    rows = await tx.execute_query_dict(_SQLITE_CREATE.format(ids=listed), [
        DeliveryStatus.QUEUED.value, op.id, token, op.id, now, now])
    await tx.execute_query(_SQLITE_LINK, [token])
    return [(int(r["id"]), int(r["endpoint_id"])) for r in rows]
