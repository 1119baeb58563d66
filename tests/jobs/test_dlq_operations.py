"""DLQ single-entry operations, statistics, detail and export on the real database and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from itertools import product
from typing import Any

import pytest
import pytest_asyncio

from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.operations import dlq
from jobs.operations.retry import retry_dead_letter
from models import queries
from models.audit import AuditLog
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery, Message
from models.dlq_filter import DlqFilter
from models.endpoints import Application, Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint

S = DeadLetterStatus
URL = "http://127.0.0.1:9/hook"
LEGAL = {(S.ACTIVE, S.RESOLVED), (S.ACTIVE, S.ARCHIVED), (S.RETRYING, S.ACTIVE),
         (S.RESOLVED, S.ARCHIVED), (S.ARCHIVED, S.ACTIVE)}


class Events:
    """Events published on the dashboard channel since the fixture subscribed."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub, self.seen = pubsub, []

    async def drain(self) -> list[dict[str, Any]]:
        for _ in range(10):  # bounded; None also answers the subscribe confirmation
            if msg := await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
                self.seen.append(json.loads(msg["data"]))
        return self.seen


@pytest_asyncio.fixture
async def events(redis) -> AsyncIterator[Events]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)
    yield Events(pubsub)
    await pubsub.aclose()


async def entry_in(status: DeadLetterStatus) -> DeadLetter:
    return await make_dead_letter(await make_endpoint(URL), status=status)


# -- set_status ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("current", "wanted"), sorted(LEGAL))
async def test_legal_transition_applies_audits_and_publishes(db, redis, events, current, wanted):
    entry = await entry_in(current)

    row = await dlq.set_status(entry.id, wanted, "olga", reason="checked", redis=redis)

    assert row["status"] == wanted.value and row["id"] == entry.id
    assert (await DeadLetter.get(id=entry.id)).status == wanted
    [audit] = await AuditLog.all()
    assert (audit.actor, audit.action, audit.target_type, audit.target_id) == (
        "olga", "dlq.status", "dead_letter", str(entry.id))
    assert audit.details["from"] == current.value and audit.details["to"] == wanted.value
    assert audit.details["reason"] == "checked"
    assert {"type": "dlq.changed", "id": entry.id, "status": wanted.value} in await events.drain()


@pytest.mark.parametrize(("current", "wanted"),
                         sorted(set(product(S, S)) - LEGAL))
async def test_illegal_transition_is_refused_and_changes_nothing(db, redis, current, wanted):
    entry = await entry_in(current)
    before = await DeadLetter.get(id=entry.id)

    with pytest.raises(ConflictError) as exc:
        await dlq.set_status(entry.id, wanted, "olga", redis=redis)

    message = exc.value.message
    assert f"is {current.value}" in message and f"cannot become {wanted.value}" in message
    allowed = sorted(w.value for c, w in LEGAL if c == current)
    assert exc.value.details == {"current": current.value, "requested": wanted.value,
                                 "allowed": allowed}
    assert all(a in message for a in allowed)
    after = await DeadLetter.get(id=entry.id)
    assert (after.status, after.updated_at) == (before.status, before.updated_at)
    assert not await AuditLog.exists()


async def test_resolving_stamps_resolved_at_and_unarchiving_clears_it(db, redis):
    entry = await entry_in(S.ACTIVE)
    await dlq.set_status(entry.id, "resolved", "olga", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).resolved_at is not None
    await dlq.set_status(entry.id, "archived", "olga", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).resolved_at is not None
    await dlq.set_status(entry.id, "active", "olga", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).resolved_at is None


async def test_unknown_status_is_a_validation_error_naming_status(db, redis):
    entry = await entry_in(S.ACTIVE)
    with pytest.raises(ValidationError) as exc:
        await dlq.set_status(entry.id, "done", "olga", redis=redis)
    assert exc.value.details["fields"][0]["field"] == "status"
    assert not await AuditLog.exists()


async def test_set_status_of_missing_entry_is_not_found(db, redis):
    with pytest.raises(NotFoundError):
        await dlq.set_status(4242, "resolved", "olga", redis=redis)


async def test_concurrent_changes_apply_once(db, redis):
    entry = await entry_in(S.ACTIVE)

    # ten operators resolve the same entry at once (resolved -> archived is legal, so mixing
    # targets could legitimately apply two changes in a row; the same target applies once)
    results = await asyncio.gather(
        *(dlq.set_status(entry.id, S.RESOLVED, f"user{i}", redis=redis) for i in range(10)),
        return_exceptions=True)

    applied = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, ConflictError)]
    assert len(applied) == 1 and len(refused) == 9
    final = (await DeadLetter.get(id=entry.id)).status
    assert applied[0]["status"] == final.value
    [audit] = await AuditLog.all()
    assert audit.details["to"] == final.value


async def test_unsticking_a_retry_cancels_its_queued_delivery(db, redis, events):
    entry = await entry_in(S.ACTIVE)
    retry = await retry_dead_letter(entry.id, "olga", redis=redis)

    await dlq.set_status(entry.id, S.ACTIVE, "olga", redis=redis)

    assert (await Delivery.get(id=retry["delivery_id"])).status == DeliveryStatus.CANCELLED
    audit = await AuditLog.get(action="dlq.status")
    assert audit.details["cancelled_delivery_id"] == retry["delivery_id"]
    assert {"type": "delivery.updated", "id": retry["delivery_id"],
            "status": "cancelled"} in await events.drain()
    again = await retry_dead_letter(entry.id, "olga", redis=redis)  # retryable once more
    assert again["delivery_id"] != retry["delivery_id"]


async def test_unsticking_is_refused_while_the_retry_is_being_delivered(db, redis):
    entry = await entry_in(S.ACTIVE)
    retry = await retry_dead_letter(entry.id, "olga", redis=redis)
    await Delivery.filter(id=retry["delivery_id"]).update(status=DeliveryStatus.RUNNING)

    with pytest.raises(ConflictError, match="being delivered"):
        await dlq.set_status(entry.id, S.ACTIVE, "olga", redis=redis)

    assert (await DeadLetter.get(id=entry.id)).status == S.RETRYING
    assert not await AuditLog.filter(action="dlq.status").exists()


# -- archive and reasons ------------------------------------------------------------------------

async def test_archive_audits_with_its_own_action(db, redis, events):
    entry = await entry_in(S.RESOLVED)
    row = await dlq.archive(entry.id, "olga", reason="  duplicate  ", redis=redis)
    assert row["status"] == "archived"
    [audit] = await AuditLog.all()
    assert audit.action == "dlq.archive" and audit.details["reason"] == "duplicate"
    assert {"type": "dlq.changed", "id": entry.id, "status": "archived"} in await events.drain()


async def test_archive_refused_while_retrying(db, redis):
    entry = await entry_in(S.RETRYING)
    with pytest.raises(ConflictError, match="is retrying"):
        await dlq.archive(entry.id, "olga", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).status == S.RETRYING


@pytest.mark.parametrize("reason", [None, "", "   "])
async def test_required_reason_is_enforced_for_archive_and_delete(db, redis, monkeypatch, reason):
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "true")
    entry = await entry_in(S.ACTIVE)
    for action in (dlq.archive, dlq.delete):
        with pytest.raises(ValidationError) as exc:
            await action(entry.id, "olga", reason=reason, redis=redis)
        assert exc.value.details["fields"][0]["field"] == "reason"
    with pytest.raises(ValidationError):
        await dlq.set_status(entry.id, S.ARCHIVED, "olga", reason=reason, redis=redis)
    assert (await DeadLetter.get(id=entry.id)).status == S.ACTIVE
    assert not await AuditLog.exists()
    await dlq.set_status(entry.id, S.RESOLVED, "olga", redis=redis)  # not destructive


async def test_reason_optional_unless_required(db, redis, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "0")
    entry = await entry_in(S.ACTIVE)
    await dlq.archive(entry.id, "olga", redis=redis)
    assert (await AuditLog.get()).details["reason"] is None


async def test_overlong_reason_is_refused(db, redis):
    entry = await entry_in(S.ACTIVE)
    with pytest.raises(ValidationError, match="reason"):
        await dlq.archive(entry.id, "olga", reason="x" * 501, redis=redis)
    assert (await DeadLetter.get(id=entry.id)).status == S.ACTIVE


# -- delete -------------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [S.ACTIVE, S.RESOLVED, S.ARCHIVED])
async def test_delete_removes_entry_and_audit_keeps_its_facts(db, redis, events, status):
    entry = await entry_in(status)

    assert await dlq.delete(entry.id, "root", reason="test data", redis=redis) == entry.id

    assert not await DeadLetter.exists(id=entry.id)
    assert await Delivery.exists(id=entry.delivery_id)  # the delivery log stays
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor, audit.target_id) == ("dlq.delete", "root", str(entry.id))
    assert audit.details["reason"] == "test data"
    assert audit.details["status"] == status.value
    assert audit.details["delivery_id"] == entry.delivery_id
    assert audit.details["endpoint_url"] == URL
    assert audit.details["event_type"] == "order.created"
    assert {"type": "dlq.changed", "id": entry.id, "status": "deleted"} in await events.drain()


async def test_delete_refused_while_retrying(db, redis):
    entry = await entry_in(S.ACTIVE)
    await retry_dead_letter(entry.id, "olga", redis=redis)
    with pytest.raises(ConflictError, match="retrying"):
        await dlq.delete(entry.id, "root", redis=redis)
    assert await DeadLetter.exists(id=entry.id)
    assert not await AuditLog.filter(action="dlq.delete").exists()


async def test_delete_missing_entry_is_not_found(db, redis):
    with pytest.raises(NotFoundError):
        await dlq.delete(4242, "root", redis=redis)


async def test_concurrent_deletes_delete_once(db, redis):
    entry = await entry_in(S.ACTIVE)
    results = await asyncio.gather(*(dlq.delete(entry.id, "root", redis=redis)
                                     for _ in range(5)), return_exceptions=True)
    assert results.count(entry.id) == 1
    assert all(isinstance(r, NotFoundError) for r in results if r != entry.id)
    assert await AuditLog.filter(action="dlq.delete").count() == 1


# -- a varied DLQ for stats, filters and export -------------------------------------------------

NOW = datetime.now(UTC).replace(microsecond=0)


async def seed() -> dict[str, Any]:
    """Two apps, three endpoints, entries across statuses, event types, ages and errors."""
    shop, crm = await Application.create(name="shop"), await Application.create(name="crm")
    a = await make_endpoint("http://127.0.0.1:9/a", shop)
    b = await make_endpoint("http://127.0.0.1:9/b", shop)
    c = await make_endpoint("http://127.0.0.1:9/c", crm)
    specs = [  # endpoint, event type, status, age in days, last error
        (a, "order.created", S.ACTIVE, 10, "connection refused"),
        (a, "order.created", S.ACTIVE, 5, "HTTP 500"),
        (a, "order.paid", S.RETRYING, 4, "HTTP 503"),
        (a, "order.paid", S.RESOLVED, 3, "HTTP 500"),
        (b, "order.created", S.ARCHIVED, 2, "timeout after 30s"),
        (b, "order.created", S.ACTIVE, 1, "HTTP 502"),
        (c, "contact.added", S.ACTIVE, 0, "TLS handshake failed"),
    ]
    ids = []
    for endpoint, event_type, status, days, error in specs:
        message = await Message.create(app_id=endpoint.app_id, event_type=event_type,
                                       payload={"n": len(ids)})
        delivery = await Delivery.create(message=message, endpoint=endpoint, attempts=3,
                                         status=DeliveryStatus.FAILED, last_error=error)
        entry = await DeadLetter.create(
            delivery=delivery, message=message, endpoint=endpoint, endpoint_url=endpoint.url,
            status=status, failure_reason="max_attempts_exceeded", attempts=3)
        await DeadLetter.filter(id=entry.id).update(created_at=NOW - timedelta(days=days))
        ids.append(entry.id)
    return {"ids": ids, "shop": shop, "crm": crm, "a": a, "b": b, "c": c}


async def test_stats_on_a_seeded_set(db):
    s = await seed()
    await Endpoint.filter(id=s["b"].id).update(url="http://127.0.0.1:9/b-moved")

    stats = await dlq.stats(DlqFilter())

    assert stats["total"] == 7
    assert stats["by_status"] == {"active": 4, "retrying": 1, "resolved": 1, "archived": 1}
    assert stats["by_event_type"] == {"order.created": 4, "order.paid": 2, "contact.added": 1}
    assert stats["by_endpoint"] == [
        {"endpoint_id": s["a"].id, "endpoint_url": "http://127.0.0.1:9/a", "count": 4},
        {"endpoint_id": s["b"].id, "endpoint_url": "http://127.0.0.1:9/b-moved", "count": 2},
        {"endpoint_id": s["c"].id, "endpoint_url": "http://127.0.0.1:9/c", "count": 1},
    ]
    assert datetime.fromisoformat(stats["oldest"]) == NOW - timedelta(days=10)
    assert datetime.fromisoformat(stats["newest"]) == NOW


async def test_stats_follow_the_filter_and_keep_every_status_key(db):
    s = await seed()
    stats = await dlq.stats(DlqFilter(app_id=s["crm"].id))
    assert stats["total"] == 1
    assert stats["by_status"] == {"active": 1, "retrying": 0, "resolved": 0, "archived": 0}
    empty = await dlq.stats(DlqFilter(event_type="nothing.here"))
    assert empty == {"total": 0, "by_status": dict.fromkeys(["active", "retrying", "resolved",
                                                             "archived"], 0),
                     "by_event_type": {}, "by_endpoint": [], "oldest": None, "newest": None}


async def test_stats_group_entries_of_deleted_endpoints(db):
    s = await seed()
    await Endpoint.filter(id=s["c"].id).delete()
    stats = await dlq.stats(DlqFilter())
    assert {"endpoint_id": None, "endpoint_url": "http://127.0.0.1:9/c",
            "count": 1} in stats["by_endpoint"]


async def listed(f: DlqFilter) -> list[int]:
    page = await queries.dead_letter_page(f, limit=200)
    return [row["id"] for row in page["entries"]]


async def test_each_filter_narrows_the_listing(db):
    s = await seed()
    ids = s["ids"]
    live = [ids[i] for i in (6, 5, 2, 1, 0)]  # active + retrying, newest first
    assert await listed(DlqFilter()) == live
    assert await listed(DlqFilter(status=[S.RESOLVED, S.ARCHIVED])) == [ids[4], ids[3]]
    assert await listed(DlqFilter(event_type="order.paid")) == [ids[2]]
    assert await listed(DlqFilter(endpoint_id=s["b"].id)) == [ids[5]]
    assert await listed(DlqFilter(app_id=s["crm"].id)) == [ids[6]]
    assert await listed(DlqFilter(since=NOW - timedelta(days=4))) == [ids[6], ids[5], ids[2]]
    assert await listed(DlqFilter(until=NOW - timedelta(days=4))) == [ids[1], ids[0]]
    assert await listed(DlqFilter(q="http 50")) == [ids[5], ids[2], ids[1]]  # last error
    assert await listed(DlqFilter(q="/c")) == [ids[6]]  # endpoint URL
    assert await listed(DlqFilter(q="attempts_exceeded")) == live  # failure reason
    assert await listed(DlqFilter(max_id=ids[2])) == [ids[2], ids[1], ids[0]]


async def test_listing_pages_with_a_stable_cursor(db):
    s = await seed()
    first = await queries.dead_letter_page(DlqFilter(), limit=2)
    assert [r["id"] for r in first["entries"]] == [s["ids"][6], s["ids"][5]]
    await make_dead_letter(s["a"])  # a new failure does not shift the next page
    second = await queries.dead_letter_page(DlqFilter(), limit=2, cursor=first["next_cursor"])
    assert [r["id"] for r in second["entries"]] == [s["ids"][2], s["ids"][1]]
    last = await queries.dead_letter_page(DlqFilter(), limit=2, cursor=second["next_cursor"])
    assert [r["id"] for r in last["entries"]] == [s["ids"][0]] and last["next_cursor"] is None


# -- detail -------------------------------------------------------------------------------------

async def test_entry_detail_has_payload_history_and_both_deliveries_attempts(db, redis):
    entry = await make_dead_letter(await make_endpoint(URL), payload={"order": 7})
    await DeadLetter.filter(id=entry.id).update(policy={"max_retries": 2},
                                                metadata={"event_type": "order.created"})
    started = datetime.now(UTC)
    for n in (1, 2):
        await Attempt.create(delivery_id=entry.delivery_id, number=n, started_at=started,
                             duration_ms=12.5, status_code=500, outcome="retryable",
                             error_class="http_5xx", response_excerpt="boom")
    retry = await retry_dead_letter(entry.id, "olga", redis=redis)
    await Attempt.create(delivery_id=retry["delivery_id"], number=1, started_at=started,
                         duration_ms=3.0, status_code=200, outcome="success")

    detail = await dlq.entry_detail(entry.id)

    assert detail["payload"] == {"order": 7} and detail["status"] == "retrying"
    assert detail["error_history"] == entry.error_history
    assert detail["policy"] == {"max_retries": 2}
    assert detail["metadata"] == {"event_type": "order.created"}
    original = detail["original_delivery"]
    assert original["id"] == entry.delivery_id and original["status"] == "failed"
    assert [(a["number"], a["status_code"], a["error"]) for a in original["attempts"]] == [
        (1, 500, "http_5xx"), (2, 500, "http_5xx")]
    last = detail["last_retry_delivery"]
    assert last["id"] == retry["delivery_id"] and [a["outcome"] for a in last["attempts"]] == [
        "success"]


async def test_entry_detail_without_a_retry_and_missing_entry(db):
    entry = await make_dead_letter(await make_endpoint(URL))
    detail = await dlq.entry_detail(entry.id)
    assert detail["last_retry_delivery"] is None and detail["original_delivery"]["attempts"] == []
    with pytest.raises(NotFoundError):
        await dlq.entry_detail(4242)


# -- export -------------------------------------------------------------------------------------

async def test_export_yields_every_page_in_id_order(db):
    endpoint = await make_endpoint(URL)
    ids = [(await make_dead_letter(endpoint, payload={"n": i})).id for i in range(23)]
    await DeadLetter.filter(id=ids[4]).update(status=S.RESOLVED)

    rows = [row async for row in dlq.export_rows(DlqFilter(), page=5)]

    assert [r["id"] for r in rows] == [i for i in ids if i != ids[4]]  # active + retrying
    assert rows[0]["payload"] == {"n": 0} and rows[0]["event_type"] == "order.created"
    assert rows[0]["last_error"] is None and rows[0]["app_id"] == endpoint.app_id
    everything = [r["id"] async for r in dlq.export_rows(DlqFilter(status=list(S)), page=5)]
    assert everything == ids


async def test_export_fetches_one_page_at_a_time(db):
    endpoint = await make_endpoint(URL)
    ids = [(await make_dead_letter(endpoint)).id for _ in range(12)]
    rows = dlq.export_rows(DlqFilter(), page=5)
    first = [await anext(rows) for _ in range(5)]
    # a page is already in memory: rows deleted now still come from it, later pages don't
    await DeadLetter.filter(id__in=ids[:10]).delete()
    rest = [row async for row in rows]
    assert [r["id"] for r in first + rest] == ids[:5] + ids[10:]


async def test_export_is_a_snapshot_and_follows_filters(db):
    s = await seed()
    rows = dlq.export_rows(DlqFilter(status=list(S), app_id=s["shop"].id), page=2)
    first = await anext(rows)
    await make_dead_letter(s["a"])  # fails during the export: not in this file
    rest = [r async for r in rows]
    assert [first["id"], *[r["id"] for r in rest]] == s["ids"][:6]
    assert [r["id"] async for r in dlq.export_rows(DlqFilter(q="tls"))] == [s["ids"][6]]
