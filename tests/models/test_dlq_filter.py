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
