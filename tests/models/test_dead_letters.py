"""A DLQ entry carries copies of its message's event type and its failed delivery's last
error, however it was made, and they stay equal to their sources."""

from __future__ import annotations

from jobs.operations.publish import publish_message
from jobs.operations.retry import retry_dead_letter
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.dlq_filter import DlqFilter, select
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply


async def test_dead_lettered_delivery_carries_event_type_and_last_error(
        db, redis, receiver, run_worker):
    receiver.script("/bad", Reply(400, "nope"))
    endpoint = await make_endpoint(receiver.url("/bad"))
    result = await publish_message(endpoint.app_id, "invoice.paid", {"n": 1}, redis=redis)
    await run_worker()

    delivery = await Delivery.get(id=result["deliveries"][0]["id"])
    entry = await DeadLetter.get(delivery_id=delivery.id)
    assert delivery.last_error
    assert (entry.event_type, entry.last_error) == ("invoice.paid", delivery.last_error)
    assert await select(DlqFilter(q=delivery.last_error.upper())).count() == 1
    assert await select(DlqFilter(event_type="invoice.paid")).count() == 1


async def test_failed_retry_keeps_the_original_delivery_error(db, redis, receiver, run_worker):
    """`q` searches the failed delivery's last_error, which a retry (a new delivery) leaves
    as it was; the retry's error goes to the error history."""
    receiver.script("/bad", Reply(400))
    entry = await make_dead_letter(await make_endpoint(receiver.url("/bad")),
                                   last_error="HTTP 503 from the first run")
    await retry_dead_letter(entry.id, "alice", redis=redis)
    await run_worker()

    refreshed = await DeadLetter.get(id=entry.id)
    original = await Delivery.get(id=entry.delivery_id)  # type: ignore[attr-defined]
    assert refreshed.status == DeadLetterStatus.ACTIVE
    assert refreshed.last_error == original.last_error == "HTTP 503 from the first run"
    assert refreshed.event_type == "order.created"
    assert await select(DlqFilter(q="first run")).count() == 1


async def test_an_entry_made_with_ids_only_gets_its_copies(db):
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    message = await Message.create(app_id=endpoint.app_id,  # type: ignore[attr-defined]
                                   event_type="user.deleted", payload={})
    delivery = await Delivery.create(message_id=message.id, endpoint=endpoint,
                                     status=DeliveryStatus.FAILED, last_error="HTTP 410 Gone")
    entry = await DeadLetter.create(delivery_id=delivery.id, message_id=message.id,
                                    endpoint_url=endpoint.url, failure_reason="final_status")
    stored = await DeadLetter.get(id=entry.id)
    assert (stored.event_type, stored.last_error) == ("user.deleted", "HTTP 410 Gone")


async def test_given_copies_are_kept(db):
    entry = await make_dead_letter(None, event_type="a.b", last_error="boom")
    stored = await DeadLetter.get(id=entry.id)
    assert (stored.event_type, stored.last_error) == ("a.b", "boom")
