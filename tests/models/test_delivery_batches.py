"""The fast lane's set-based SQL (models.delivery_batches) against the real database: the claim
is a compare-and-set, and what it writes reads back through the ORM exactly as the models say."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

from jobs.attempt import webhook_body
from models.deliveries import Attempt, Delivery, Message
from models.delivery_batches import (claim_deliveries, insert_attempts, load_endpoints,
                                     mark_succeeded, record_attempts)
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


async def test_two_deliveries_of_one_message_are_claimed_with_it(db):
    [first] = await _deliveries(1)
    other = await Endpoint.create(app_id=first.message.app_id, url="http://127.0.0.1:9/y",  # type: ignore[attr-defined]
                                  secret="whsec_BBBB")
    second = await Delivery.create(message_id=first.message_id, endpoint=other)  # type: ignore[attr-defined]

    claimed = await claim_deliveries([second.id, first.id], "tok", None, datetime.now(UTC))

    assert [(c.id, c.endpoint_id) for c in claimed] == [(first.id, first.endpoint_id),  # type: ignore[attr-defined]
                                                        (second.id, other.id)]
    assert {c.message.id for c in claimed} == {first.message_id}  # type: ignore[attr-defined]
    assert all(c.message.payload == PAYLOAD for c in claimed)


async def test_batch_endpoints_load_as_the_orm_loads_them(db):
    [delivery] = await _deliveries(1)
    await Endpoint.filter(id=delivery.endpoint_id).update(  # type: ignore[attr-defined]
        retry_config={"max_retries": 2, "backoff": "linear", "base_delay": 3, "max_delay": 9,
                      "jitter": False},
        event_types=["order.created"], previous_secret="whsec_BBBB",
        previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=1), max_in_flight=7)
    orm = await Endpoint.get(id=delivery.endpoint_id)  # type: ignore[attr-defined]

    loaded = (await load_endpoints({orm.id, 10**9}))  # an unknown id is just absent

    assert list(loaded) == [orm.id]
    fields = [f for f in Endpoint._meta.db_fields]
    assert {f: getattr(loaded[orm.id], f) for f in fields} == {f: getattr(orm, f) for f in fields}
    assert loaded[orm.id].retry_config["backoff"] == "linear"
    assert await load_endpoints(set()) == {}


async def test_a_claimed_batch_sees_every_change_to_its_endpoint(db):
    """Endpoints are reused between batches only while their row is unchanged (PostgreSQL: the
    claim reads the row's version); any UPDATE, even one that leaves updated_at alone as the
    health check's do, is seen by the next batch."""
    from jobs.deliver import claim

    deliveries = await _deliveries(3)
    endpoint_id = deliveries[0].endpoint_id  # type: ignore[attr-defined]
    [first] = await claim([deliveries[0].id])
    [second] = await claim([deliveries[1].id])
    assert first.endpoint.enabled and second.endpoint.url == "http://127.0.0.1:9/x"
    if first.endpoint_version is not None:  # PostgreSQL: the unchanged row is not loaded again
        assert second.endpoint_version == first.endpoint_version
        assert second.endpoint is first.endpoint

    await Endpoint.filter(id=endpoint_id).update(enabled=False, url="http://127.0.0.1:9/y")
    [third] = await claim([deliveries[2].id])

    assert third.endpoint.enabled is False and third.endpoint.url == "http://127.0.0.1:9/y"
    assert third.endpoint is not first.endpoint
    assert first.endpoint.enabled  # a batch already under way keeps what it claimed with


async def _record(codes: list[int | None]) -> tuple[list[int], datetime]:
    deliveries = await _deliveries(len(codes))
    ids = [d.id for d in deliveries]
    started = datetime.now(UTC) - timedelta(seconds=1)
    await claim_deliveries(ids, "tok", None, started)
    rows = [(i, 1, started, 5.0, code, "success" if code else "retryable",
             None if code else "timeout", None, "ok" if code else None)
            for i, code in zip(ids, codes, strict=True)]
    succeeded: dict[int | None, list[int]] = {}
    for i, code in zip(ids, codes, strict=True):
        if code:
            succeeded.setdefault(code, []).append(i)
    finished = datetime.now(UTC)
    await record_attempts(rows, succeeded, finished)
    return ids, finished


async def test_record_writes_every_attempt_and_marks_the_successes(db):
    ids, finished = await _record([200, None, 200])

    attempts = await Attempt.filter(delivery_id__in=ids).order_by("delivery_id")
    assert [(a.delivery_id, a.status_code, a.error_class) for a in attempts] == [  # type: ignore[attr-defined]
        (ids[0], 200, None), (ids[1], None, "timeout"), (ids[2], 200, None)]
    rows = {d.id: d for d in await Delivery.filter(id__in=ids)}
    assert [(rows[i].status, rows[i].last_status_code) for i in ids] == [
        (DeliveryStatus.SUCCEEDED, 200), (DeliveryStatus.RUNNING, None),
        (DeliveryStatus.SUCCEEDED, 200)]
    assert rows[ids[0]].finished_at == finished and rows[ids[1]].finished_at is None


async def test_record_with_several_success_codes_or_none(db):
    ids, _ = await _record([200, 204, 202])
    rows = {d.id: d for d in await Delivery.filter(id__in=ids)}
    assert [rows[i].last_status_code for i in ids] == [200, 204, 202]
    assert {r.status for r in rows.values()} == {DeliveryStatus.SUCCEEDED}

    ids, _ = await _record([None, None])
    assert await Attempt.filter(delivery_id__in=ids).count() == 2
    assert {d.status for d in await Delivery.filter(id__in=ids)} == {DeliveryStatus.RUNNING}


async def test_concurrent_records_land_together_and_a_failing_one_fails_alone(db):
    """Records of batches finishing at once (a busy worker): each batch's rows and finish time
    are written as its own, and a batch whose statement fails (here an attempt of a delivery
    that does not exist) gets the error while the others are recorded."""
    batches = [await _deliveries(3) for _ in range(8)]
    for batch in batches:
        await claim_deliveries([d.id for d in batch], "tok", None, datetime.now(UTC))
    started = datetime.now(UTC) - timedelta(seconds=1)
    finished = [started + timedelta(milliseconds=10 * n) for n in range(8)]

    def record(n: int, batch: list[Delivery]):
        rows = [(d.id, 1, started, 5.0, 200 + n, "success", None, None, "ok") for d in batch]
        if n == 3:
            rows.append((10**9, 1, started, 5.0, None, "retryable", "timeout", None, None))
        return record_attempts(rows, {200 + n: [d.id for d in batch]}, finished[n])

    results = await asyncio.gather(*(record(n, b) for n, b in enumerate(batches)),
                                   return_exceptions=True)

    assert [isinstance(r, Exception) for r in results] == [n == 3 for n in range(8)]
    for n, batch in enumerate(batches):
        rows = await Delivery.filter(id__in=[d.id for d in batch])
        attempts = await Attempt.filter(delivery_id__in=[d.id for d in batch]).count()
        if n == 3:  # its statement failed as a whole: nothing of it written
            assert {r.status for r in rows} == {DeliveryStatus.RUNNING} and attempts == 0
        else:
            assert {(r.status, r.last_status_code, r.finished_at) for r in rows} == {
                (DeliveryStatus.SUCCEEDED, 200 + n, finished[n])}
            assert attempts == 3


async def test_record_resolves_the_entries_of_successful_retries_still_retrying(db):
    """The DLQ entries that successful retries re-delivered are resolved in the record itself
    (PostgreSQL: the same statement, concurrent batches each at their own time); an entry
    that changed meanwhile (here archived) is left as it is."""
    from models.dead_letters import DeadLetter
    from models.enums import DeadLetterStatus
    from tests.factories import make_dead_letter

    endpoint = (await _deliveries(1))[0]
    endpoint = await Endpoint.get(id=endpoint.endpoint_id)  # type: ignore[attr-defined]
    entries = [await make_dead_letter(endpoint, status=DeadLetterStatus.RETRYING)
               for _ in range(4)]
    await DeadLetter.filter(id=entries[3].id).update(status=DeadLetterStatus.ARCHIVED)
    batches = [await _deliveries(2) for _ in range(2)]
    started = datetime.now(UTC) - timedelta(seconds=1)
    finished = [started + timedelta(milliseconds=100 * (n + 1)) for n in range(2)]

    def record(n: int, batch: list[Delivery], resolved: list[int]):
        rows = [(d.id, 1, started, 5.0, 200, "success", None, None, "ok") for d in batch]
        return record_attempts(rows, {200: [d.id for d in batch]}, finished[n], resolved)

    for batch in batches:
        await claim_deliveries([d.id for d in batch], "tok", None, started)
    await asyncio.gather(record(0, batches[0], [entries[0].id, entries[1].id]),
                         record(1, batches[1], [entries[3].id]))

    rows = {e.id: e for e in await DeadLetter.filter(id__in=[e.id for e in entries])}
    assert [(rows[e.id].status, rows[e.id].resolved_at) for e in entries] == [
        (DeadLetterStatus.RESOLVED, finished[0]), (DeadLetterStatus.RESOLVED, finished[0]),
        (DeadLetterStatus.RETRYING, None), (DeadLetterStatus.ARCHIVED, None)]
    assert rows[entries[0].id].updated_at == finished[0]
    assert {d.status for d in await Delivery.filter(
        id__in=[d.id for b in batches for d in b])} == {DeliveryStatus.SUCCEEDED}


async def test_a_record_inside_a_transaction_is_part_of_it(db):
    """Inside a caller's transaction the record is that transaction's (SQLite: not one of its
    own committed on the side): rolled back with it, nothing of it stays."""
    from tortoise.transactions import in_transaction

    deliveries = await _deliveries(2)
    ids = [d.id for d in deliveries]
    started = datetime.now(UTC) - timedelta(seconds=1)
    await claim_deliveries(ids, "tok", None, started)
    rows = [(i, 1, started, 5.0, 200, "success", None, None, "ok") for i in ids]

    class Undo(Exception):
        pass

    try:
        async with in_transaction():
            await record_attempts(rows, {200: ids}, datetime.now(UTC))
            assert await Attempt.filter(delivery_id__in=ids).count() == 2  # seen inside it
            raise Undo
    except Undo:
        pass

    assert await Attempt.filter(delivery_id__in=ids).count() == 0
    assert {d.status for d in await Delivery.filter(id__in=ids)} == {DeliveryStatus.RUNNING}
