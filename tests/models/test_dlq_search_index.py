"""`q` on SQLite through the trigram index (migration 0015, models.dlq_filter.search_hint): a
page read among the entries the index names is the page read by matching every entry, and the
index follows every way an entry is written."""

from __future__ import annotations

from typing import Any

from tortoise import connections

from models import queries
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, search_hint, select
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.models.test_dlq_filter import FILTERS, seed

S = DeadLetterStatus


def _sqlite() -> bool:
    return connections.get("default").capabilities.dialect == "sqlite"


async def _pages(f: DlqFilter) -> list[tuple[list[int], int | None]]:
    """Every page of `f`, two entries each: (ids, next_cursor)."""
    pages, cursor = [], None
    while True:
        page = await queries.dead_letter_page(f, limit=2, cursor=cursor)
        pages.append(([e["id"] for e in page["entries"]], page["next_cursor"]))
        if (cursor := page["next_cursor"]) is None:
            return pages


async def test_pages_read_through_the_index_are_the_pages_read_without_it(db, monkeypatch):
    s = await seed()
    a = await make_endpoint("http://127.0.0.1:9/quotes")
    await make_dead_letter(a, last_error='the receiver said "no" (Ünïcode ÉTÉ)')
    for i in range(5):  # more than a page of one term
        await make_dead_letter(a, last_error=f"TLS handshake failed #{i}",
                               status=S.RESOLVED if i % 2 else S.ACTIVE)
    extra: list[dict[str, Any]] = [
        {"q": "handshake"}, {"q": "HANDSHAKE", "status": [S.ACTIVE, S.RESOLVED]},
        {"q": 'said "no"'}, {"q": "été"}, {"q": "ÉTÉ"}, {"q": "ti"}, {"q": "100% of"},
        {"q": "a\\b"}, {"endpoint_id": s["a"], "q": "timeout"},
        {"app_id": s["crm"], "q": "http"}, {"status": [S.ACTIVE], "q": "timeout"}]
    without: dict[int, list[tuple[list[int], int | None]]] = {}
    cases = [DlqFilter.model_validate(values) for values in FILTERS + extra]
    with monkeypatch.context() as patched:
        patched.setattr(queries, "search_hint", _no_hint)
        for i, f in enumerate(cases):
            without[i] = await _pages(f)
    for i, f in enumerate(cases):
        assert await _pages(f) == without[i], f
    assert without[cases.index(DlqFilter(q="handshake"))][0][0]  # the cases find something


async def _no_hint(f: DlqFilter, conn: Any = None) -> None:
    return None


async def test_the_index_narrows_the_searches_it_can_look_up(db, monkeypatch):
    await seed()
    timeout = set(await select(DlqFilter(q="timeout")).values_list("id", flat=True))
    if not _sqlite():  # PostgreSQL's trigram indexes serve the query itself
        assert await search_hint(DlqFilter(q="timeout")) is None
        return
    assert timeout <= set(await search_hint(DlqFilter(q="TIMEOUT")) or [-1])
    assert await search_hint(DlqFilter(q="no such text")) == []
    assert await search_hint(DlqFilter(status=[S.ACTIVE])) is None  # no q
    for q in ("ti", "%", "100% of", "50_ok", "a\\b"):  # shorter than a trigram, or LIKE's
        assert await search_hint(DlqFilter(q=q)) is None, q
    from models import dlq_filter

    monkeypatch.setattr(dlq_filter, "SEARCH_HINT_MAX", len(timeout) - 1)
    assert await search_hint(DlqFilter(q="timeout")) is None  # too many: matched as read
    assert len((await queries.dead_letter_page(DlqFilter(q="timeout", status=list(S))))[
        "entries"]) == len(timeout)


async def test_the_index_follows_raw_inserts_changed_columns_and_deletes(db):
    a = await make_endpoint("http://127.0.0.1:9/orders")
    template = await make_dead_letter(a)
    delivery = await Delivery.create(message_id=template.message_id,  # type: ignore[attr-defined]
                                     endpoint=a, status=DeliveryStatus.FAILED)
    mark = "?" if _sqlite() else "$1"  # the time, twice
    await connections.get("default").execute_query(
        "INSERT INTO dead_letter (delivery_id, message_id, endpoint_id, endpoint_url, status, "
        "failure_reason, event_type, last_error, error_history, attempts, policy, metadata, "
        f"retry_count, created_at, updated_at) VALUES ({delivery.id}, "
        f"{template.message_id}, {a.id}, 'http://raw.example/x', 'active', 'raw_reason', "  # type: ignore[attr-defined]
        f"'e', 'written in raw SQL', '[]', 0, '{{}}', '{{}}', 0, {mark}, {mark})",
        [template.created_at] * (2 if _sqlite() else 1))
    raw = await DeadLetter.get(delivery_id=delivery.id)

    async def listed(q: str) -> list[int]:
        return [e["id"] for e in (await queries.dead_letter_page(
            DlqFilter(q=q, status=list(S))))["entries"]]

    assert await listed("raw sql") == [raw.id]
    assert await listed("raw.example") == [raw.id]
    # a failed retry's new reason (jobs.outcomes), and a whole-row save
    assert await DeadLetter.filter(id=raw.id).update(failure_reason="endpoint_disabled")
    assert await listed("endpoint_disabled") == [raw.id]
    assert await listed("raw_reason") == []
    entry = await DeadLetter.get(id=template.id)
    entry.last_error = "HTTP 418 teapot"
    await entry.save()
    assert await listed("418 teapot") == [template.id]
    # a delete counts its entry alone (the index keeps a stale row, which lists nothing)
    assert await DeadLetter.filter(id=raw.id).delete() == 1
    assert await listed("raw sql") == []
    assert await listed("orders") == [template.id]


async def test_the_retention_job_prunes_the_index_rows_of_deleted_entries(db, redis):
    from jobs.cron import purge_expired
    from models.dlq_filter import prune_search_index

    a = await make_endpoint("http://127.0.0.1:9/orders")
    kept = await make_dead_letter(a, last_error="kept entry")
    gone = [(await make_dead_letter(a, last_error=f"gone entry {i}")).id for i in range(3)]
    assert await DeadLetter.filter(id__in=gone).delete() == 3
    if not _sqlite():
        assert await prune_search_index() == 0
        return
    assert sorted(await search_hint(DlqFilter(q="gone entry")) or []) == gone  # stale rows
    assert (await purge_expired({"redis": redis}))["search_index_pruned"] == 3
    assert await search_hint(DlqFilter(q="gone entry")) == []
    assert await search_hint(DlqFilter(q="kept entry")) == [kept.id]
    assert await prune_search_index(step=1) == 0  # ranges of one id: nothing more
