"""Retrying one DLQ entry: the rule shared by every surface."""

from __future__ import annotations

import asyncio

import pytest

from jobs.errors import (AlreadyInFlightError, ConfigurationGoneError, NotFoundError,
                         NotRetryableError)
from jobs.operations.retry import retry_dead_letter
from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply


async def test_retry_creates_new_delivery_and_keeps_original(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    original = await Delivery.get(id=entry.delivery_id)

    result = await retry_dead_letter(entry.id, "alice", redis=redis)

    new = await Delivery.get(id=result["delivery_id"])
    assert new.id != original.id
    assert (new.status, new.retry_of_id, new.message_id) == (
        DeliveryStatus.QUEUED, original.id, original.message_id)
    assert new.metadata["__retry_metadata"]["dead_letter_id"] == entry.id
    after = await Delivery.get(id=original.id)
    assert (after.status, after.updated_at, after.finished_at) == (
        DeliveryStatus.FAILED, original.updated_at, original.finished_at)
    refreshed = await DeadLetter.get(id=entry.id)
    assert (refreshed.status, refreshed.retry_count) == (DeadLetterStatus.RETRYING, 1)
    [row] = await AuditLog.filter(action="dlq.retry")
    assert row.actor == "alice" and row.target_id == str(entry.id)
    assert row.details == {"original_delivery_id": original.id, "new_delivery_id": new.id}
    assert await redis.zcard(__import__("jobs.queue").queue.queue_name()) == 1


async def test_successful_retry_resolves_the_entry(db, redis, receiver, run_worker):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    await run_worker()
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.RESOLVED


async def test_failed_retry_reactivates_the_same_entry(db, redis, receiver, run_worker):
    receiver.script("/bad", Reply(400))
    entry = await make_dead_letter(await make_endpoint(receiver.url("/bad")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    await run_worker()
    refreshed = await DeadLetter.get(id=entry.id)
    assert refreshed.status == DeadLetterStatus.ACTIVE
    assert refreshed.failure_reason == "non_retryable_status"
    assert len(refreshed.error_history) == 4  # three before, one from the retry
    assert await DeadLetter.all().count() == 1


@pytest.mark.parametrize("status", [DeadLetterStatus.RESOLVED, DeadLetterStatus.ARCHIVED])
async def test_not_active_is_refused(db, redis, receiver, status):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")), status=status)
    with pytest.raises(NotRetryableError, match="only active entries"):
        await retry_dead_letter(entry.id, "alice", redis=redis)
    assert await Delivery.all().count() == 1
    [refused] = await AuditLog.all()  # the refusal is on record, nothing else
    assert (refused.action, refused.actor, refused.details["code"]) == (
        "dlq.retry_refused", "alice", "not_retryable")


async def test_deleted_endpoint_is_refused(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entry = await make_dead_letter(endpoint)
    await endpoint.delete()
    with pytest.raises(ConfigurationGoneError, match="original configuration could not be found"):
        await retry_dead_letter(entry.id, "alice", redis=redis)
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ACTIVE


async def test_retry_in_flight_is_refused(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    await retry_dead_letter(entry.id, "alice", redis=redis)
    with pytest.raises(AlreadyInFlightError):
        await retry_dead_letter(entry.id, "bob", redis=redis)
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1


async def test_concurrent_clicks_make_one_retry(db, redis, receiver):
    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    results = await asyncio.gather(*(retry_dead_letter(entry.id, f"u{i}", redis=redis)
                                     for i in range(5)), return_exceptions=True)
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, AlreadyInFlightError) for r in results if isinstance(r, Exception))
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1


async def test_unknown_entry_is_not_found(db, redis):
    with pytest.raises(NotFoundError):
        await retry_dead_letter(999_999, "alice", redis=redis)


async def test_fifty_concurrent_rest_clicks_make_one_delivery_and_every_click_is_audited(
        db, redis, receiver):
    import httpx

    from dashboard.api.app import api
    from models.auth import create_user

    entry = await make_dead_letter(await make_endpoint(receiver.url("/ok")))
    tokens = [(await create_user(f"op{i}", "operator"))[2] for i in range(5)]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://test") as client:
        answers = await asyncio.gather(*(
            client.post(f"/v1/dlq/{entry.id}/retry",
                        headers={"Authorization": f"Bearer {tokens[i % 5]}"})
            for i in range(50)))

    codes = sorted(a.status_code for a in answers)
    assert codes == [202] + [409] * 49
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {
        "already_in_flight"}
    assert await Delivery.filter(retry_of_id=entry.delivery_id).count() == 1
    assert await AuditLog.filter(action="dlq.retry").count() == 1
    refused = await AuditLog.filter(action="dlq.retry_refused")
    assert len(refused) == 49 and {r.details["code"] for r in refused} == {"already_in_flight"}
    assert (await DeadLetter.get(id=entry.id)).retry_count == 1
