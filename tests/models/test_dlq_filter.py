"""DLQ filters read the entry's own copies (event_type, last_error) and answer exactly what the
joins through message and delivery answered before migration 0009."""

from __future__ import annotations

from tortoise.expressions import Q
from tortoise.functions import Count
from tortoise.queryset import QuerySet

from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.dlq_filter import DlqFilter, select
from models.endpoints import Application
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint

S = DeadLetterStatus


def joined(f: DlqFilter) -> QuerySet[DeadLetter]:
    """The selection as it was written before the copies: through message and delivery."""
    query = DeadLetter.all()
    if f.status:
        query = query.filter(status__in=f.status)
    if f.event_type:
        query = query.filter(message__event_type=f.event_type)
    if f.endpoint_id:
        query = query.filter(endpoint_id=f.endpoint_id)
    if f.app_id:
        query = query.filter(message__app_id=f.app_id)
    if f.q:
        query = query.filter(Q(failure_reason__icontains=f.q) | Q(endpoint_url__icontains=f.q)
                             | Q(delivery__last_error__icontains=f.q))
    return query


async def seed() -> dict[str, int]:
    """Entries over two applications and three endpoints, with errors, reasons and URLs that
    `q` can match, made through the factory and through a bare create with ids only."""
    shop, crm = await Application.create(name="shop"), await Application.create(name="crm")
    a = await make_endpoint("http://127.0.0.1:9/orders", shop)
    b = await make_endpoint("http://127.0.0.1:9/timeout-proxy", shop)
    c = await make_endpoint("http://127.0.0.1:9/contacts", crm)
    specs = [
        (a, "order.created", "timeout: no answer within 30 s", S.ACTIVE),
        (a, "order.paid", "Connection REFUSED", S.ACTIVE),
        (a, "order.paid", None, S.RETRYING),
        (b, "order.created", "HTTP 500 Internal Server Error", S.ACTIVE),
        (b, "order.paid", "read TIMEOUT", S.RESOLVED),
        (c, "contact.added", "HTTP 503 Service Unavailable", S.ARCHIVED),
        (c, "contact.added", "100% of 50_ok", S.ACTIVE),  # LIKE wildcards in the text
    ]
    for endpoint, event_type, error, status in specs:
        await make_dead_letter(endpoint, status=status, event_type=event_type, last_error=error)
    # the way the API tests make theirs: ids only, the copies left for the model to fill
    message = await Message.create(app_id=crm.id, event_type="contact.removed", payload={})
    delivery = await Delivery.create(message=message, endpoint=c, last_error="TLS handshake",
                                     status=DeliveryStatus.FAILED)
    await DeadLetter.create(delivery_id=delivery.id, message_id=message.id, endpoint_id=c.id,
                            endpoint_url=c.url, failure_reason="non_retryable_status")
    return {"shop": shop.id, "crm": crm.id, "a": a.id, "b": b.id, "c": c.id}


FILTERS = [
    {}, {"q": "timeout"}, {"q": "TimeOut"}, {"q": "refused"}, {"q": "http 50"},
    {"q": "exceeded"}, {"q": "non_retryable"}, {"q": "tls"}, {"q": "%"}, {"q": "_ok"},
    {"q": "127.0.0.1:9/contacts"}, {"q": "no such text"}, {"event_type": "order.paid"},
    {"event_type": "contact.removed"}, {"event_type": "nothing.here"},
]


async def test_every_filter_selects_what_the_joins_selected(db):
    s = await seed()
    scoped = [{"endpoint_id": s["a"], "q": "timeout"}, {"app_id": s["crm"], "q": "http"},
              {"app_id": s["shop"], "event_type": "order.paid", "q": "refused"},
              {"status": [S.ACTIVE], "q": "timeout"}]
    for values in FILTERS + scoped:
        f = DlqFilter.model_validate(values)
        got = await select(f).order_by("id").values_list("id", flat=True)
        expected = await joined(f).order_by("id").values_list("id", flat=True)
        assert got == expected, values
    assert len(await select(DlqFilter(q="timeout")).values_list("id", flat=True)) == 3


async def test_q_finds_an_entry_by_its_delivery_error_reason_or_url(db):
    s = await seed()

    async def found(q: str) -> set[int]:
        return set(await select(DlqFilter(q=q)).values_list("endpoint_id", flat=True))

    assert await found("connection refused") == {s["a"]}  # the delivery's last_error
    assert await found("tls HANDSHAKE") == {s["c"]}  # filled from the delivery by the model
    assert await found("timeout-proxy") == {s["b"]}  # the URL
    assert await found("NON_RETRYABLE") == {s["c"]}  # the failure reason


async def test_event_type_groups_match_the_message_groups(db):
    """What stats' "by event type" counts: the copy groups exactly as the message did."""
    s = await seed()
    for f in (DlqFilter(), DlqFilter(app_id=s["shop"]), DlqFilter(q="timeout"),
              DlqFilter(status=[S.ACTIVE, S.RETRYING])):
        copies = dict(await select(f).annotate(n=Count("id")).group_by("event_type")
                      .values_list("event_type", "n"))
        messages = dict(await select(f).annotate(n=Count("id")).group_by("message__event_type")
                        .values_list("message__event_type", "n"))
        assert copies == messages and copies, f
    everything = dict(await select(DlqFilter()).annotate(n=Count("id")).group_by("event_type")
                      .values_list("event_type", "n"))
    assert everything == {"order.created": 2, "order.paid": 3, "contact.added": 2,
                          "contact.removed": 1}


# --- `q` after status changes (migration 0012: the search rows) ---------------------------------

def _postgres() -> bool:
    from tortoise import connections

    return connections.get("default").capabilities.dialect == "postgres"


async def _search_rows() -> list[tuple[int, str, str, str | None]]:
    """PostgreSQL's search rows, by entry (SQLite searches the entries' own columns)."""
    from models.dead_letters import DeadLetterSearch

    return [tuple(r) for r in await DeadLetterSearch.all().order_by("entry_id").values_list(
        "entry_id", "failure_reason", "endpoint_url", "last_error")]


async def test_q_finds_entries_in_every_status_through_their_status_changes(db):
    """Every status, before and after the changes a retry makes (active → retrying →
    resolved, a cancel back to active, archive): `q` finds each entry by its error, reason
    and URL whatever the status filter; on PostgreSQL the search rows mirror the entries."""
    a = await make_endpoint("http://127.0.0.1:9/orders")
    entries = {status: await make_dead_letter(a, status=status,
                                              last_error=f"error of the {status.value} one")
               for status in S}
    every = list(S)

    async def found(q: str, statuses: list[DeadLetterStatus] | None = None) -> set[int]:
        return set(await select(DlqFilter(q=q, status=statuses)).values_list("id", flat=True))

    async def check() -> None:
        for status, entry in entries.items():
            current = (await DeadLetter.get(id=entry.id)).status
            assert await found(f"the {status.value} one") == {entry.id}
            assert await found(f"the {status.value} one", [current]) == {entry.id}
            assert await found(f"the {status.value} one",
                               [s for s in every if s != current]) == set()
        assert await found("orders") == {e.id for e in entries.values()}
        assert await found("max_attempts", every) == {e.id for e in entries.values()}
        if _postgres():
            assert await _search_rows() == [
                tuple(r) for r in await DeadLetter.all().order_by("id").values_list(
                    "id", "failure_reason", "endpoint_url", "last_error")]

    await check()
    ids = [e.id for e in entries.values()]
    for status in (S.RETRYING, S.RESOLVED, S.ACTIVE, S.ARCHIVED):  # as the walker, outcomes,
        await DeadLetter.filter(id__in=ids).update(status=status)  # cancel and archive do
        await check()


async def test_q_follows_a_changed_failure_reason_and_forgets_deleted_entries(db):
    """A failed retry re-activates its entry with the new failure reason (jobs.outcomes):
    `q` finds it by the new reason only; a deleted entry's search row goes with it."""
    a = await make_endpoint("http://127.0.0.1:9/orders")
    kept, gone = await make_dead_letter(a), await make_dead_letter(a)
    await DeadLetter.filter(id=kept.id).update(status=S.ACTIVE,
                                               failure_reason="endpoint_disabled")
    assert await select(DlqFilter(q="endpoint_disabled")).values_list("id", flat=True) == [
        kept.id]
    assert await select(DlqFilter(q="max_attempts")).values_list("id", flat=True) == [gone.id]
    entry = await DeadLetter.get(id=kept.id)  # a whole-row save rewrites every column
    entry.last_error = "HTTP 418"
    await entry.save()
    assert await select(DlqFilter(q="418")).values_list("id", flat=True) == [kept.id]
    await DeadLetter.filter(id=gone.id).delete()
    assert await select(DlqFilter(q="max_attempts")).values_list("id", flat=True) == []
    if _postgres():
        assert await _search_rows() == [
            (kept.id, "endpoint_disabled", "http://127.0.0.1:9/orders", "HTTP 418")]


async def test_q_finds_entries_written_in_raw_sql(db):
    """Entries inserted without the ORM (several in one statement, as bulk loads and COPY
    write them) are found too: on PostgreSQL a trigger writes their search rows."""
    from tortoise import connections

    a = await make_endpoint("http://127.0.0.1:9/orders")
    template = await make_dead_letter(a)
    conn = connections.get("default")
    extra = [(await Delivery.create(message_id=template.message_id,  # type: ignore[attr-defined]
                                    endpoint=a, status=DeliveryStatus.FAILED)).id
             for _ in range(2)]
    mark = "$1" if _postgres() else "?"
    rows = ", ".join(
        f"({d}, {template.message_id}, {a.id}, 'http://raw.example/{d}', 'active', "  # type: ignore[attr-defined]
        f"'raw_reason', 'e', 'raw error {d}', '[]', 0, '{{}}', '{{}}', 0, {mark}, {mark})"
        for d in extra)
    await conn.execute_query(
        "INSERT INTO dead_letter (delivery_id, message_id, endpoint_id, endpoint_url, status, "
        "failure_reason, event_type, last_error, error_history, attempts, policy, metadata, "
        f"retry_count, created_at, updated_at) VALUES {rows}", [template.created_at] * (
            1 if _postgres() else 2 * len(extra)))
    raw = await DeadLetter.filter(failure_reason="raw_reason").order_by("id").values_list(
        "id", flat=True)
    assert len(raw) == 2
    assert await select(DlqFilter(q="RAW_REASON")).order_by("id").values_list(
        "id", flat=True) == raw
    assert await select(DlqFilter(q=f"raw error {extra[1]}")).values_list(
        "id", flat=True) == [raw[1]]
    assert await select(DlqFilter(q=f"raw.example/{extra[0]}")).values_list(
        "id", flat=True) == [raw[0]]


async def test_status_changes_leave_the_search_rows_alone(db):
    """What migration 0012 is for (PostgreSQL): a claim's status change rewrites the entry
    but not its search row, so the trigram indexes get no new entries."""
    import pytest
    from tortoise import connections

    if not _postgres():
        pytest.skip("PostgreSQL's search rows")
    a = await make_endpoint("http://127.0.0.1:9/orders")
    ids = [(await make_dead_letter(a)).id for _ in range(3)]
    conn = connections.get("default")
    where = f"IN ({', '.join(map(str, ids))})"

    async def versions() -> tuple[list[str], list[str]]:
        entries = await conn.execute_query_dict(
            f"SELECT ctid::text AS v FROM dead_letter WHERE id {where} ORDER BY id")
        search = await conn.execute_query_dict(
            f"SELECT ctid::text AS v FROM dead_letter_search WHERE entry_id {where} "
            "ORDER BY entry_id")
        return [r["v"] for r in entries], [r["v"] for r in search]

    entries_before, search_before = await versions()
    await conn.execute_query(  # as a Retry All job's claim (jobs.operations.bulk_claim)
        f"UPDATE dead_letter SET status = 'retrying', retry_count = retry_count + 1, "
        f"updated_at = now() WHERE id {where}")
    await DeadLetter.filter(id__in=ids).update(status=S.RESOLVED)  # as jobs.outcomes
    entries_after, search_after = await versions()
    assert all(b != a for b, a in zip(entries_before, entries_after, strict=True))
    assert search_after == search_before


async def test_a_search_page_is_read_with_in_memory_page_costs(db):
    """On PostgreSQL a page with `q` is read in a transaction that prices out-of-order reads
    at RANDOM_PAGE_COST (else, with many entries, the planner merges the search rows in id
    order instead of looking each one up); without `q`, or on SQLite, on the default
    connection as before."""
    from models.dlq_filter import RANDOM_PAGE_COST, reading

    async with reading(DlqFilter()) as conn:
        assert conn is None
    async with reading(DlqFilter(q="timeout")) as conn:
        if not _postgres():
            assert conn is None
            return
        rows = await conn.execute_query_dict("SHOW random_page_cost")
        assert float(rows[0]["random_page_cost"]) == RANDOM_PAGE_COST
        a = await make_endpoint("http://127.0.0.1:9/orders")
        entry = await make_dead_letter(a, last_error="read timeout")
        assert await select(DlqFilter(q="timeout")).using_db(conn).values_list(
            "id", flat=True) == [entry.id]
