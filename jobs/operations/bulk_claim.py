"""Retry All in set-based SQL: the walker's step (`retry_step`) and the bulk lane's claim
(`claim_entries`).

The walker only reads: a step takes the next entries of the frozen scope after the cursor (up
to the step's size: entries still `active` and unchanged since the operation started) and
moves the operation's cursor and figures with a compare-and-set (the walkers' lock: another
walker, or a cancel — its first write sets `cancelled`, then `walked_at` — makes the step
undo everything). Entries of a disabled endpoint are `skipped`; the others are `handed` to
the bulk lane as `deliver_entries` jobs of up to a batch each. Nothing is written per entry,
so handing out runs at the speed of reading ids and enqueueing jobs.

Each job then claims its entries in one statement (PostgreSQL) or transaction (SQLite):
compare-and-set active → retrying (of two jobs, two operations, or a job and a single retry,
exactly one takes each), one delivery per claimed entry created already `running` (claimed by
the job: `retry_of`, the operation, `__retry_metadata` as jobs.outcomes reads it), each entry
linked to its delivery (`last_retry_delivery`), and the operation's `claimed` and
`late_skipped` counted — all only while the operation is not cancelled, with its row locked,
so a cancel finds exactly `handed - claimed - late_skipped` entries never claimed (counted
`cancelled`, left `active`). An entry changed before its job ran is `late_skipped`, unless
this operation's own delivery already took it (a duplicate job).

    PostgreSQL  ONE statement each (atomic on its own). The claim draws each delivery's id
                from the sequence (looked up once per statement, not per row: 8.5 against
                0.75 µs a row here) and links the entry to it, so each entry row is written
                once. Of a new delivery's keys only `message_id` and `endpoint_id` are checked:
                the statement itself guarantees the operation (locked), the original delivery
                (the claimed entry's) and the link (created here), migration 0013.
    SQLite      a transaction each (no data-modifying CTEs there), run in aiosqlite's
                thread in one hop (models.delivery_batches.sqlite_transaction): BEGIN
                IMMEDIATE takes the database's write lock until commit, so the claimable
                entries are read, then the deliveries created with ids drawn past the table's
                sequence, then each entry claimed and linked in one write.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.queryset import ValuesListQuery

from models.bulk import BulkOperation
from models.delivery_batches import (ClaimedDelivery, ClaimedMessage, as_datetime,
                                     claimed_from_rows, pg_fetch, sqlite_transaction)
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus


class Superseded(Exception):
    """Another walker moved the cursor, or the walk was ended (cancel): stop walking."""


@dataclass
class Step:
    cursor: int  # the last entry id taken
    taken: int  # entries taken from the scope (handed + skipped)
    handed: list[tuple[int, int]]  # (entry id, endpoint id) of the entries handed out


#: the PostgreSQL step; `{scope}` is the scope's parameterized query ($1…) of (id, endpoint_id),
#: `{op}`… are the numbers of the step's own parameters after it. Result rows: (0, cursor,
#: handed, skipped) when the cursor moved, (1, entries taken, 0, 0) always, (2, entry,
#: endpoint, 0) per entry handed out.
_PG_STEP = """
WITH picked(id, endpoint_id) AS ({scope}),
handed AS (
    SELECT p.id, p.endpoint_id FROM picked p JOIN endpoint e ON e.id = p.endpoint_id
    WHERE e.enabled
), locked AS (
    SELECT id FROM bulk_operation
    WHERE id = {op} AND "cursor" = {cursor} AND walked_at IS NULL AND NOT cancelled
    FOR UPDATE
), moved AS (
    UPDATE bulk_operation SET "cursor" = (SELECT max(id) FROM picked),
           handed = handed + (SELECT count(*) FROM handed),
           skipped = skipped + (SELECT count(*) FROM picked) - (SELECT count(*) FROM handed)
    WHERE id IN (SELECT id FROM locked) AND EXISTS (SELECT 1 FROM picked)
    RETURNING "cursor", handed, skipped
)
SELECT 0 AS kind, "cursor" AS a, handed AS b, skipped AS c FROM moved
UNION ALL SELECT 1, (SELECT count(*) FROM picked)::int, 0, 0
UNION ALL SELECT 2, id, endpoint_id, 0 FROM handed WHERE EXISTS (SELECT 1 FROM moved)
"""
_PG_PARAMS = ("op", "cursor")


async def retry_step(op: BulkOperation, scope: ValuesListQuery[Any]) -> Step | None:
    """Walk one step of `op` over `scope` (a values_list("id", "endpoint_id") query of the
    next entries after the cursor, in id order, limited to the step's size); None when the
    scope is exhausted. Updates `op`'s cursor and figures.

    Raises:
        Superseded: the cursor was moved by another walker, or the walk was ended.
    """
    conn = connections.get("default")
    if conn.capabilities.dialect == "postgres":
        return await _pg_step(conn, op, scope)
    rows: list[tuple[int, int]] = list(await scope)
    if not rows:
        return None
    enabled = set(await Endpoint.filter(id__in={e for _, e in rows}, enabled=True
                                        ).values_list("id", flat=True))
    handed = [(i, e) for i, e in rows if e in enabled]
    cursor = rows[-1][0]
    changes = {"handed": op.handed + len(handed),
               "skipped": op.skipped + len(rows) - len(handed)}
    if not await BulkOperation.filter(id=op.id, cursor=op.cursor, walked_at=None,
                                      cancelled=False).update(cursor=cursor, **changes):
        raise Superseded
    op.cursor, op.handed, op.skipped = cursor, changes["handed"], changes["skipped"]
    return Step(cursor=cursor, taken=len(rows), handed=handed)


async def _pg_step(conn: BaseDBAsyncClient, op: BulkOperation,
                   scope: ValuesListQuery[Any]) -> Step | None:
    scope.sql()  # builds `scope.query`, as running it would; its SQL and parameters go inline
    scope_sql, scope_params = scope.query.get_parameterized_sql()
    first = len(scope_params) + 1
    sql = _PG_STEP.format(scope=scope_sql, **{
        name: f"${first + i}" + ("::int" if name == "op" else "")
        for i, name in enumerate(_PG_PARAMS)})
    rows = await conn.execute_query(sql, [*scope_params, op.id, op.cursor])
    kinds: dict[int, list[Any]] = {0: [], 1: [], 2: []}
    for row in rows[1]:
        kinds[row[0]].append(row)
    taken = kinds[1][0][1]
    if not taken:
        return None
    if not kinds[0]:
        raise Superseded
    _, op.cursor, op.handed, op.skipped = kinds[0][0]
    return Step(cursor=op.cursor, taken=taken, handed=[(r[1], r[2]) for r in kinds[2]])


# --- the bulk lane's claim --------------------------------------------------------------------

@dataclass
class Claim:
    deliveries: list[ClaimedDelivery]  # created `running`, sorted by id
    late_skipped: int  # entries counted `skipped` by this claim
    open: bool  # False: the operation was cancelled (nothing was claimed, nothing counted)


#: PostgreSQL: $1 operation, $2 entry ids, $3 now, $4 token, $5 agent, $6 retrying, $7 active,
#: $8 running. One row always (`open`, `late`: the operation's late_skipped before and after);
#: one per delivery created (c.id not null).
_PG_CLAIM_ENTRIES = """
WITH locked AS (
    SELECT id, started_at, late_skipped FROM bulk_operation WHERE id = $1 AND NOT cancelled
    FOR UPDATE
), claimed AS (
    UPDATE dead_letter SET status = $6, retry_count = retry_count + 1, updated_at = $3,
           last_retry_delivery_id = nextval(
               (SELECT pg_get_serial_sequence('delivery', 'id')::regclass))
    WHERE id = ANY($2::int[]) AND status = $7
      AND updated_at <= (SELECT started_at FROM locked)
      AND endpoint_id IN (SELECT id FROM endpoint WHERE enabled)
    RETURNING id, last_retry_delivery_id, delivery_id, message_id, endpoint_id, retry_count
), created AS (
    INSERT INTO delivery (id, message_id, endpoint_id, status, attempts, retry_of_id,
                          bulk_operation_id, claim_token, claimed_by, metadata, created_at,
                          updated_at)
    SELECT last_retry_delivery_id, message_id, endpoint_id, $8, 1, delivery_id, $1, $4, $5,
           jsonb_build_object('__retry_metadata', jsonb_build_object(
               'original_delivery_id', delivery_id, 'dead_letter_id', id,
               'retry_count', retry_count, 'sandbox', false, 'bulk_operation_id', $1::int)),
           $3, $3
    FROM claimed ORDER BY id
    RETURNING id, message_id, endpoint_id, attempts, metadata, bulk_operation_id
), lost AS (  -- not claimed now, nor earlier by this operation's own delivery
    SELECT count(*) AS n FROM unnest($2::int[]) AS t(id)
    WHERE EXISTS (SELECT 1 FROM locked) AND t.id NOT IN (SELECT id FROM claimed)
      AND NOT EXISTS (SELECT 1 FROM dead_letter dl JOIN delivery d
                      ON d.id = dl.last_retry_delivery_id
                      WHERE dl.id = t.id AND d.bulk_operation_id = $1)
), bumped AS (
    UPDATE bulk_operation SET claimed = claimed + (SELECT count(*) FROM created),
           late_skipped = least(late_skipped + (SELECT n FROM lost), greatest(
               handed - claimed - (SELECT count(*) FROM created), late_skipped))
    WHERE id IN (SELECT id FROM locked)
    RETURNING late_skipped
)
SELECT (SELECT count(*) FROM locked)::int AS open,
       (SELECT late_skipped FROM locked) AS late_before,
       (SELECT late_skipped FROM bumped) AS late_after,
       c.id, c.endpoint_id, c.attempts, c.metadata::text AS metadata, c.bulk_operation_id,
       m.id AS message_id, m.event_type, m.payload::text AS payload, m.created_at,
       e.xmin::text AS endpoint_version
FROM (SELECT 1) AS one LEFT JOIN (
    created c JOIN message m ON m.id = c.message_id LEFT JOIN endpoint e ON e.id = c.endpoint_id
) ON true
ORDER BY c.id
"""

#: SQLite (one transaction, run in aiosqlite's thread in one hop: `sqlite_transaction`). The
#: operation, while it is not cancelled (BEGIN IMMEDIATE took the write lock: a cancel
#: committed before it or waits for us)
_SQLITE_OPEN = ("SELECT started_at, handed, claimed, late_skipped FROM bulk_operation"
                " WHERE id = ? AND NOT cancelled")
_SQLITE_COUNT = "UPDATE bulk_operation SET claimed = claimed + ?, late_skipped = ? WHERE id = ?"
#: `{ids}` are integers (the job's arguments, checked as such); nothing changes them before the
#: UPDATE below (the write lock is ours)
_SQLITE_CLAIMABLE = """
SELECT id, delivery_id, message_id, endpoint_id, retry_count FROM dead_letter
WHERE id IN ({ids}) AND status = ? AND updated_at <= ?
  AND endpoint_id IN (SELECT id FROM endpoint WHERE enabled)
ORDER BY id
"""
#: the next delivery id: AUTOINCREMENT never reuses one, so ids above both are free (and the
#: write lock keeps them ours until commit)
_SQLITE_NEXT_ID = ("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'delivery'),"
                   " 0), coalesce((SELECT max(id) FROM delivery), 0))")
#: the k-th claimed entry (in id order) gets delivery id first + k
_SQLITE_CREATE = """
INSERT INTO delivery (id, message_id, endpoint_id, status, attempts, retry_of_id,
                      bulk_operation_id, claim_token, claimed_by, metadata, created_at,
                      updated_at)
SELECT ? + row_number() OVER (ORDER BY id), message_id, endpoint_id, ?, 1, delivery_id, ?, ?, ?,
       json_object('__retry_metadata', json_object(
           'original_delivery_id', delivery_id, 'dead_letter_id', id,
           'retry_count', retry_count + 1, 'sandbox', json('false'), 'bulk_operation_id', ?)),
       ?, ?
FROM dead_letter WHERE id IN ({ids}) ORDER BY id
"""
#: each entry claimed and linked to its delivery (just created, ids first+1…first+n) in one
#: write
_SQLITE_TAKE = """
UPDATE dead_letter SET status = ?, retry_count = retry_count + 1, updated_at = ?,
       last_retry_delivery_id = d.id
FROM delivery d
WHERE d.id BETWEEN ? AND ? AND d.retry_of_id = dead_letter.delivery_id
  AND dead_letter.id IN ({ids})
"""
_SQLITE_MESSAGES = "SELECT id, event_type, payload, created_at FROM message WHERE id IN ({ids})"
_SQLITE_OURS = """
SELECT dl.id FROM dead_letter dl JOIN delivery d ON d.id = dl.last_retry_delivery_id
WHERE dl.id IN ({ids}) AND d.bulk_operation_id = ?
"""


async def claim_entries(entry_ids: list[int], operation_id: int, agent_id: str | None,
                        now: datetime) -> Claim:
    """Claim the entries a walker handed to one bulk-lane job (see the module's docstring):
    their deliveries come back `running` with their messages (endpoints are left to the
    caller), as jobs.deliver's claim returns them."""
    ids = [int(i) for i in entry_ids]
    token, conn = str(uuid.uuid4()), connections.get("default")
    if conn.capabilities.dialect == "postgres":
        rows = await pg_fetch(conn, _PG_CLAIM_ENTRIES, operation_id, ids, now, token,
                              agent_id, DeadLetterStatus.RETRYING.value,
                              DeadLetterStatus.ACTIVE.value, DeliveryStatus.RUNNING.value)
        head = rows[0]
        if not head["open"]:
            return Claim([], 0, open=False)
        deliveries = claimed_from_rows(rows)  # (its rows come in id order)
        return Claim(deliveries, head["late_after"] - head["late_before"], open=True)
    return await _sqlite_claim_entries(ids, operation_id, token, agent_id, now)


async def _sqlite_claim_entries(ids: list[int], operation_id: int, token: str,
                                agent_id: str | None, now: datetime) -> Claim:
    return await sqlite_transaction(partial(_sqlite_claim, ids, operation_id, token, agent_id,
                                            now))


def _sqlite_claim(ids: list[int], operation_id: int, token: str, agent_id: str | None,
                  now: datetime, conn: sqlite3.Connection) -> Claim:
    """The SQLite claim, in aiosqlite's thread inside one transaction (see the module's
    docstring). Each delivery's metadata is built here as the INSERT writes it, not parsed back."""
    found = conn.execute(_SQLITE_OPEN, (operation_id,)).fetchone()
    if found is None:
        return Claim([], 0, open=False)
    started_at, handed, claimed_before, late_before = found
    listed = ", ".join(map(str, ids))
    rows = conn.execute(_SQLITE_CLAIMABLE.format(ids=listed),
                        (DeadLetterStatus.ACTIVE.value, started_at)).fetchall()
    deliveries: list[ClaimedDelivery] = []
    if rows:
        first = conn.execute(_SQLITE_NEXT_ID).fetchone()[0]
        mine = ", ".join(str(r[0]) for r in rows)
        conn.execute(_SQLITE_CREATE.format(ids=mine), (
            first, DeliveryStatus.RUNNING.value, operation_id, token, agent_id, operation_id,
            now, now))
        conn.execute(_SQLITE_TAKE.format(ids=mine), (DeadLetterStatus.RETRYING.value, now,
                                                     first + 1, first + len(rows)))
        messages = {m[0]: ClaimedMessage(m[0], m[1], m[2], as_datetime(m[3])) for m in
                    conn.execute(_SQLITE_MESSAGES.format(
                        ids=", ".join({str(r[2]) for r in rows}))).fetchall()}
        for k, (entry_id, original_id, message_id, endpoint_id, retry_count) in enumerate(rows, 1):
            deliveries.append(ClaimedDelivery(
                id=first + k, attempts=1, message=messages[message_id], endpoint_id=endpoint_id,
                bulk_operation_id=operation_id, metadata={"__retry_metadata": {
                    "original_delivery_id": original_id, "dead_letter_id": entry_id,
                    "retry_count": retry_count + 1, "sandbox": False,
                    "bulk_operation_id": operation_id}}))
    lost = 0
    if len(rows) < len(ids):  # else every entry is this claim's own
        ours = {r[0] for r in conn.execute(_SQLITE_OURS.format(ids=listed),
                                           (operation_id,)).fetchall()}
        lost = len(set(ids) - ours)
    late = min(late_before + lost, max(handed - claimed_before - len(rows), late_before))
    conn.execute(_SQLITE_COUNT, (len(rows), late, operation_id))
    return Claim(deliveries, late - late_before, open=True)
