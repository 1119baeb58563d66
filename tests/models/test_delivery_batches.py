"""The fast lane's set-based SQL (models.delivery_batches) against the real database: the claim
is a compare-and-set, and what it writes reads back through the ORM exactly as the models say."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

from jobs.attempt import webhook_body
from models.deliveries import Attempt, Delivery, Message
from models.delivery_batches import claim_deliveries, insert_attempts, mark_succeeded
from models.endpoints import Application, Endpoint
from models.enums import DeliveryStatus

PAYLOAD = {"order": 7, "name": "Zoë ✓", "nested": {"list": [1, 2.5, None, True]},
           "quote": "she said \"hi\"\n"}


async def _deliveries(n: int, **fields) -> list[Delivery]:
    app = await Application.create(name=f"app-{uuid.uuid4()}")
    endpoint = await Endpoint.create(app=app, url="http://127.0.0.1:9/x", secret="whsec_AAAA")
    message = await Message.create(app=app, event_type="order.created", payload=PAYLOAD)
    return [await Delivery.create(message=message, endpoint=endpoint, **fields) for _ in range(n)]


async def test_claim_takes_waiting_deliveries_and_counts_the_try(db):
    waiting = await _deliveries(3)
    retrying = await _deliveries(1, status=DeliveryStatus.RETRYING, attempts=2,
                                 metadata={"__retry_metadata": {"dead_letter_id": 5}})
    done = await _deliveries(1, status=DeliveryStatus.SUCCEEDED, attempts=1)
    now = datetime.now(UTC)

    claimed = await claim_deliveries([d.id for d in waiting + retrying + done], "tok",
                                     "agent-1", now)

    assert [c.id for c in claimed] == [d.id for d in waiting + retrying]
    assert [c.attempts for c in claimed] == [1, 1, 1, 3]
    assert claimed[-1].metadata == {"__retry_metadata": {"dead_letter_id": 5}}
    assert claimed[0].endpoint_id == waiting[0].endpoint_id  # type: ignore[attr-defined]
    rows = await Delivery.filter(id__in=[c.id for c in claimed])
    assert {(r.status, r.claim_token, r.claimed_by) for r in rows} == {
        (DeliveryStatus.RUNNING, "tok", "agent-1")}
    assert (await Delivery.get(id=done[0].id)).status == DeliveryStatus.SUCCEEDED


async def test_a_delivery_handed_to_two_batches_is_claimed_once(db):
    deliveries = await _deliveries(40)
    ids = [d.id for d in deliveries]
    now = datetime.now(UTC)

    first, second = await asyncio.gather(
        claim_deliveries(ids[:30], "a", None, now), claim_deliveries(ids[10:], "b", None, now))

    taken = [c.id for c in first] + [c.id for c in second]
    assert sorted(taken) == ids  # every one taken, none twice
    assert await claim_deliveries(ids, "c", None, now) == []


async def test_claimed_message_body_carries_the_stored_payload(db):
    [delivery] = await _deliveries(1)
    [claimed] = await claim_deliveries([delivery.id], "tok", None, datetime.now(UTC))
    message = await Message.get(id=claimed.message.id)

    fast, orm = json.loads(webhook_body(claimed.message)), json.loads(webhook_body(message))

    assert fast == orm and fast["data"] == PAYLOAD and fast["type"] == "order.created"
    assert claimed.message.payload == PAYLOAD
    assert json.loads(webhook_body(claimed.message, {"order": 8}))["data"]["order"] == 8


async def test_attempts_and_successes_read_back_through_the_models(db):
    deliveries = await _deliveries(2)
    ids = [d.id for d in deliveries]
    started = datetime.now(UTC) - timedelta(seconds=1)
    await claim_deliveries(ids, "tok", None, started)

    await insert_attempts([(ids[0], 1, started, 12.5, 200, "success", None, None, "ok"),
                           (ids[1], 1, started, 3.0, None, "retryable", "timeout", "slow", None)])
    finished = datetime.now(UTC)
    await mark_succeeded([ids[0]], 204, finished)

    first, second = await Attempt.filter(delivery_id__in=ids).order_by("delivery_id")
    assert (first.number, first.started_at, first.duration_ms, first.status_code,
            first.outcome, first.response_excerpt) == (1, started, 12.5, 200, "success", "ok")
    assert (second.status_code, second.error_class, second.error_message) == (
        None, "timeout", "slow")
    done = await Delivery.get(id=ids[0])
    assert (done.status, done.finished_at, done.last_status_code, done.last_error) == (
        DeliveryStatus.SUCCEEDED, finished, 204, None)
    assert (await Delivery.get(id=ids[1])).status == DeliveryStatus.RUNNING
