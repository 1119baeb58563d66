"""DLQ statistics (jobs/operations/dlq_stats.py) against figures counted from the rows
themselves: after updates and deletes, for every kind of filter, and under concurrent changes."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import connections
from tortoise.transactions import in_transaction

from jobs.operations import dlq
from jobs.operations.dlq_stats import _STATS, TOP_ENDPOINTS
from models.dead_letters import DeadLetter
from models.dlq_filter import DlqFilter, select
from models.endpoints import Application, Endpoint
from models.enums import DeadLetterStatus
from tests.factories import make_dead_letter, make_endpoint

S = DeadLetterStatus
STATUSES = [S.ACTIVE, S.ACTIVE, S.RETRYING, S.RESOLVED, S.ARCHIVED]
EVENT_TYPES = ["order.created", "order.paid", "order.refunded", "contact.added"]
NOW = datetime.now(UTC).replace(microsecond=0)


async def expected(f: DlqFilter) -> dict[str, Any]:
    """The stats of `f` counted in Python from the matching rows (the rule: largest first;
    ties by event type, by endpoint id with deleted endpoints last; the current URL of an
    endpoint, the entries' URL when it was deleted)."""
    rows = await select(f).values_list("status", "event_type", "endpoint_id", "endpoint_url",
                                       "created_at")
    by_status = {s.value: 0 for s in S} | Counter(S(r[0]).value for r in rows)
    event_types = Counter(r[1] for r in rows)
    endpoints = Counter(r[2] for r in rows)
    current = dict(await Endpoint.all().values_list("id", "url"))
    top = sorted(endpoints.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or 0))
    created = [r[4].astimezone(UTC) for r in rows]
    return {
        "total": len(rows), "by_status": by_status,
        "by_event_type": dict(sorted(event_types.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_endpoint": [
            {"endpoint_id": e, "count": n,
             "endpoint_url": current.get(e) or max(r[3] for r in rows if r[2] == e)}
            for e, n in top[:TOP_ENDPOINTS]],
        "oldest": min(created).isoformat() if rows else None,
        "newest": max(created).isoformat() if rows else None,
    }


async def varied_dlq() -> dict[str, Any]:
    """Two applications, more endpoints than the stats list, every status and event type,
    unequal numbers of entries per endpoint, created over ten days."""
    shop, crm = await Application.create(name="shop"), await Application.create(name="crm")
    endpoints = [await make_endpoint(f"http://127.0.0.1:9/e{i}", shop if i % 3 else crm)
                 for i in range(TOP_ENDPOINTS + 4)]
    entries = []
    for i in range(90):
        # 3 entries each, a few more for the first five: the cut at TOP_ENDPOINTS falls in a tie
        endpoint = endpoints[i % len(endpoints) if i < 72 else i % 5]
        entry = await make_dead_letter(endpoint, status=STATUSES[i % len(STATUSES)],
                                       event_type=EVENT_TYPES[i % 7 % len(EVENT_TYPES)],
                                       last_error="timeout" if i % 4 == 0 else "HTTP 500")
        entries.append(entry)
    for i, entry in enumerate(entries):
        await DeadLetter.filter(id=entry.id).update(
            created_at=NOW - timedelta(days=10) + timedelta(minutes=157 * i))
    return {"shop": shop, "crm": crm, "endpoints": endpoints, "entries": entries}


def filters(d: dict[str, Any]) -> list[DlqFilter]:
    e = d["endpoints"]
    return [DlqFilter(), DlqFilter(status=[S.ACTIVE, S.RETRYING]), DlqFilter(status=[S.ARCHIVED]),
            DlqFilter(event_type="order.paid"), DlqFilter(endpoint_id=e[4].id),
            DlqFilter(app_id=d["crm"].id), DlqFilter(q="timeout"),
            DlqFilter(since=NOW - timedelta(days=6), until=NOW - timedelta(days=2)),
            DlqFilter(app_id=d["shop"].id, status=[S.ACTIVE], q="HTTP"),
            DlqFilter(event_type="no.such.type")]


async def assert_stats_match_rows(d: dict[str, Any]) -> None:
    for f in filters(d):
        got, want = await dlq.stats(f), await expected(f)
        assert got == want, f
        assert list(got["by_event_type"]) == list(want["by_event_type"]), f  # the order too


async def test_stats_equal_the_figures_counted_from_the_rows(db):
    d = await varied_dlq()
    stats = await dlq.stats(DlqFilter())
    assert stats["total"] == 90 and len(stats["by_endpoint"]) == TOP_ENDPOINTS
    assert stats["oldest"] == (NOW - timedelta(days=10)).isoformat()
    await assert_stats_match_rows(d)


async def test_stats_match_the_rows_right_after_updates_and_deletes(db, redis):
    d = await varied_dlq()
    entries, endpoints = d["entries"], d["endpoints"]
    await dlq.set_status(entries[0].id, S.ARCHIVED, "alice", redis=redis)
    await dlq.set_status(entries[3].id, S.ARCHIVED, "alice", redis=redis)  # resolved → archived
    await dlq.delete(entries[1].id, "alice", redis=redis)  # an active one
    await dlq.delete(entries[-1].id, "alice", redis=redis)  # the newest
    await DeadLetter.filter(id__in=[e.id for e in entries[10:40]]).update(
        status=S.RETRYING)  # what Retry All's claim does
    await DeadLetter.filter(id=entries[5].id).update(created_at=NOW - timedelta(days=30))
    await Endpoint.filter(id=endpoints[0].id).update(url="http://127.0.0.1:9/moved")
    await Endpoint.filter(id=endpoints[1].id).delete()  # its entries keep their URL, no id
    await DeadLetter.filter(endpoint_id=endpoints[2].id).delete()  # an endpoint's entries gone
    stats = await dlq.stats(DlqFilter())
    assert stats["oldest"] == (NOW - timedelta(days=30)).isoformat()
    assert {"endpoint_id": None, "endpoint_url": "http://127.0.0.1:9/e1",
            "count": await DeadLetter.filter(endpoint_id=None).count()} in stats["by_endpoint"]
    assert endpoints[2].id not in [e["endpoint_id"] for e in stats["by_endpoint"]]
    await assert_stats_match_rows(d)


async def test_entries_of_several_deleted_endpoints_are_one_group(db):
    a = await make_endpoint("http://127.0.0.1:9/a")
    b = await make_endpoint("http://127.0.0.1:9/b")
    for endpoint in (a, a, b):
        await make_dead_letter(endpoint)
    await Endpoint.filter(id__in=[a.id, b.id]).delete()
    stats = await dlq.stats(DlqFilter())
    assert stats["by_endpoint"] == [
        {"endpoint_id": None, "endpoint_url": "http://127.0.0.1:9/b", "count": 3}]


async def test_stats_inside_a_callers_transaction(db):
    """Called within a transaction (its snapshot is then the caller's), stats still answer,
    with the changes the transaction made so far."""
    endpoint = await make_endpoint("http://127.0.0.1:9/t")
    await make_dead_letter(endpoint)
    async with in_transaction():
        await make_dead_letter(endpoint, status=S.ARCHIVED, event_type="order.paid")
        stats = await dlq.stats(DlqFilter())
        assert stats == await expected(DlqFilter())
    assert stats["by_status"]["archived"] == 1 and stats["total"] == 2


def consistent(stats: dict[str, Any]) -> bool:
    """Whether the figures of one answer agree with each other (one snapshot's figures do)."""
    total = stats["total"]
    return (sum(stats["by_status"].values()) == total
            and sum(stats["by_event_type"].values()) == total
            and sum(e["count"] for e in stats["by_endpoint"]) == total  # < TOP_ENDPOINTS here
            and (stats["oldest"] is None) == (total == 0)
            and (total == 0 or stats["oldest"] <= stats["newest"]))


async def test_stats_agree_with_themselves_under_concurrent_changes(db, redis):
    """While entries are created, moved between statuses and deleted concurrently, every
    answer's totals agree (by status = by event type = by endpoint) and, once the changes
    stop, they equal the rows."""
    endpoints = [await make_endpoint(f"http://127.0.0.1:9/c{i}") for i in range(4)]
    for i in range(12):
        await make_dead_letter(endpoints[i % 4], event_type=EVENT_TYPES[i % 4])
    done = asyncio.Event()

    async def change() -> None:
        try:
            for i in range(60):
                entry = await make_dead_letter(endpoints[i % 4], event_type=EVENT_TYPES[i % 3],
                                               status=STATUSES[i % len(STATUSES)])
                if i % 3 == 0:
                    await DeadLetter.filter(id=entry.id).delete()
                elif i % 3 == 1:
                    ids = await DeadLetter.filter(status=S.ACTIVE).order_by("id").limit(
                        2).values_list("id", flat=True)
                    await DeadLetter.filter(id__in=ids).update(status=S.ARCHIVED)
                else:
                    oldest = await DeadLetter.all().order_by("id").first()
                    if oldest is not None:
                        await DeadLetter.filter(id=oldest.id).delete()
        finally:
            done.set()

    async def read() -> list[dict[str, Any]]:
        answers = []
        while not done.is_set():
            answers.append(await dlq.stats(DlqFilter()))
        return answers

    _, *readers = await asyncio.gather(change(), read(), read(), read())
    answers = [a for answers in readers for a in answers]
    assert len({a["total"] for a in answers}) > 1, "the changes did not overlap the reads"
    assert [a for a in answers if not consistent(a)] == []
    assert await dlq.stats(DlqFilter()) == await expected(DlqFilter())


async def test_unfiltered_stats_need_only_the_stats_index(db):
    """The statement reads `idx_dead_letter_stats` alone (migration 0010): no table access,
    so with 1,000,000 entries it scans 47 MB of index instead of the whole table."""
    sql, _ = _explainable(DlqFilter())
    conn = connections.get("default")
    if conn.capabilities.dialect == "sqlite":
        plan = " ".join(str(r["detail"]) for r in await conn.execute_query_dict(
            f"EXPLAIN QUERY PLAN {sql}"))
        assert "COVERING INDEX idx_dead_letter_stats" in plan
        return
    async with in_transaction() as tx:  # settings local to this transaction
        # an empty table is cheaper to scan whole: ask whether the index alone would do
        await tx.execute_script("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        plan = " ".join(r["QUERY PLAN"] for r in await tx.execute_query_dict(
            f"EXPLAIN {sql}"))
    assert "Index Only Scan using idx_dead_letter_stats on dead_letter" in plan
    assert "Seq Scan on dead_letter" not in plan


def _explainable(f: DlqFilter) -> tuple[str, list[Any]]:
    entries = select(f).values("status", "event_type", "endpoint_id", "created_at")
    entries.sql()
    sql, params = entries.query.get_parameterized_sql()
    return _STATS.format(entries=sql), params
