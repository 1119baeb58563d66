"""DLQ statistics: totals by status, event type and endpoint, oldest and newest entry.

One statement reads the matching entries once: `g` counts them per (status, event type,
endpoint) — one group per combination present, a few thousand at most in practice however many
entries — and three groupings of that small result give the totals by status (with the oldest
and newest entry), by event type and by endpoint, with the current URL of each endpoint.

On PostgreSQL an unfiltered count is an index-only scan of `idx_dead_letter_stats` (status,
event_type, endpoint_id, created_at: migration 0010), already in the order of the grouping; the
statement prices out-of-order page reads as for data in memory (RANDOM_PAGE_COST), so the
planner keeps to the index once updates have grown it. On SQLite the same index covers it.

Every figure comes from one snapshot (a read-only REPEATABLE READ transaction on PostgreSQL, a
transaction on SQLite): the totals agree with each other whatever changes meanwhile. Entries of
deleted endpoints (`endpoint_id` NULL) are labelled with the URL they were sent to by a second
statement in that same snapshot, only when they rank among the largest.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient, TransactionalDBClient
from tortoise.expressions import Q
from tortoise.functions import Max
from tortoise.transactions import in_transaction

from models.dlq_filter import RANDOM_PAGE_COST, DlqFilter, select
from models.enums import DeadLetterStatus

TOP_ENDPOINTS = 20

#: `{entries}`: the filter's query (models.dlq_filter.select) of the four columns, named as
#: they are, with its parameters (a subquery, not a CTE of its own: SQLite would copy it whole
#: into a temporary table). Rows: (0, status, NULL, count, oldest, newest), (1, event type,
#: NULL, count), (2, NULL, endpoint id, count), (3, url, endpoint id) per endpoint still there.
_STATS = """
WITH g AS (
    SELECT status, event_type, endpoint_id, COUNT(*) AS n, MIN(created_at) AS lo,
           MAX(created_at) AS hi
    FROM ({entries}) AS e GROUP BY status, event_type, endpoint_id
)
SELECT 0, status, CAST(NULL AS INTEGER), CAST(SUM(n) AS BIGINT), MIN(lo), MAX(hi)
    FROM g GROUP BY status
UNION ALL SELECT 1, event_type, NULL, CAST(SUM(n) AS BIGINT), NULL, NULL FROM g GROUP BY event_type
UNION ALL SELECT 2, NULL, endpoint_id, CAST(SUM(n) AS BIGINT), NULL, NULL FROM g
    GROUP BY endpoint_id
UNION ALL SELECT 3, url, id, NULL, NULL, NULL FROM endpoint
    WHERE id IN (SELECT endpoint_id FROM g)
"""


class EndpointCount(TypedDict):
    endpoint_id: int | None  # None: entries whose endpoint was deleted
    endpoint_url: str
    count: int


class DlqStats(TypedDict):
    total: int
    by_status: dict[str, int]  # every status, zero included
    by_event_type: dict[str, int]  # largest first
    by_endpoint: list[EndpointCount]  # the TOP_ENDPOINTS largest, largest first
    oldest: str | None
    newest: str | None


async def stats(f: DlqFilter) -> DlqStats:
    """Counts of the entries matching `f` (every status unless `f.status` says), in one
    statement whatever the number of entries, all from one snapshot."""
    entries = select(f).values("status", "event_type", "endpoint_id", "created_at")
    entries.sql()  # builds `entries.query`, as running it would
    entries_sql, params = entries.query.get_parameterized_sql()
    nested = isinstance(connections.get("default"), TransactionalDBClient)
    async with in_transaction() as tx:
        if tx.capabilities.dialect == "postgres":
            # RANDOM_PAGE_COST: with the server's default, once status changes have grown the
            # index (1M entries: 47 MB built, 126 MB after two 250k-entry status changes) the
            # planner prefers reading the whole table (465 MB), 2-3x slower
            setting = f"SET LOCAL random_page_cost = {RANDOM_PAGE_COST}"
            # one snapshot for both statements (inside a caller's transaction: the caller's);
            # a read-only one never waits on or fails writes
            await tx.execute_script(setting if nested else (
                f"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY; {setting}"))
        _, rows = await tx.execute_query(_STATS.format(entries=entries_sql), params)
        result, unlabelled = _assemble([tuple(row) for row in rows])
        if unlabelled:
            await _label_from_snapshots(tx, f, result["by_endpoint"], unlabelled)
    return result


def _assemble(rows: list[tuple[Any, ...]]) -> tuple[DlqStats, list[int | None]]:
    """The statement's rows as DlqStats, and the endpoint ids among the largest that have no
    current URL (None: deleted endpoints)."""
    by_status = {s.value: 0 for s in DeadLetterStatus}
    by_event_type: list[tuple[str, int]] = []
    by_endpoint: list[tuple[int | None, int]] = []
    urls: dict[int, str] = {}
    oldest: datetime | None = None
    newest: datetime | None = None
    for kind, name, endpoint_id, n, lo, hi in rows:
        if kind == 0:
            by_status[DeadLetterStatus(name).value] = int(n)
            oldest = min(oldest, _aware(lo)) if oldest else _aware(lo)
            newest = max(newest, _aware(hi)) if newest else _aware(hi)
        elif kind == 1:
            by_event_type.append((str(name), int(n)))
        elif kind == 2:
            by_endpoint.append((endpoint_id, int(n)))
        else:
            urls[int(endpoint_id)] = str(name)
    by_event_type.sort(key=lambda item: (-item[1], item[0]))
    # largest first, then by id; the entries of deleted endpoints (no id) last among equals
    by_endpoint.sort(key=lambda item: (-item[1], item[0] is None, item[0] or 0))
    top = by_endpoint[:TOP_ENDPOINTS]
    result = DlqStats(
        total=sum(by_status.values()), by_status=by_status, by_event_type=dict(by_event_type),
        by_endpoint=[EndpointCount(endpoint_id=endpoint_id, count=n,
                                   endpoint_url=urls.get(endpoint_id or 0, ""))
                     for endpoint_id, n in top],
        oldest=oldest.isoformat() if oldest else None,
        newest=newest.isoformat() if newest else None)
    return result, [endpoint_id for endpoint_id, _ in top if endpoint_id not in urls]


def _aware(value: datetime | str) -> datetime:
    """A timestamp from a raw query in UTC (SQLite answers tortoise's stored text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


async def _label_from_snapshots(tx: BaseDBAsyncClient, f: DlqFilter,
                                top: list[EndpointCount], ids: list[int | None]) -> None:
    """Label the endpoints `ids` (None: the deleted ones) with the URL their entries were sent
    to (the entry's snapshot; the greatest if they differ), in the same snapshot."""
    known = [i for i in ids if i is not None]
    which = ([Q(endpoint_id__in=known)] if known else []) + (
        [Q(endpoint_id=None)] if None in ids else [])
    found = dict(await select(f).filter(Q(*which, join_type="OR")).using_db(tx).annotate(
        url=Max("endpoint_url")).group_by("endpoint_id").values_list("endpoint_id", "url"))
    for row in top:
        if row["endpoint_id"] in ids:
            row["endpoint_url"] = str(found.get(row["endpoint_id"]) or "")
