"""Sandbox retry: another URL, extra headers and payload fields, without touching production
(the entry keeps its status, the outcome neither resolves nor dead-letters, no endpoint health)."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook

from dashboard.api.app import api  # noqa: F401 - the REST route is exercised below
from jobs.errors import ValidationError
from jobs.operations.retry import retry_dead_letter
from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply


async def test_sandbox_retry_goes_to_the_override_url_signed_with_changes(
        db, redis, receiver, run_worker):
    endpoint = await make_endpoint(receiver.url("/production"))
    entry = await make_dead_letter(endpoint, payload={"order": 1, "currency": "EUR"})

    result = await retry_dead_letter(entry.id, "alice", redis=redis, sandbox=True, overrides={
        "url": receiver.url("/sandbox"), "headers": {"X-Debug": "yes"},
        "payload": {"order": 7}})
    await run_worker()

    assert result["sandbox"] is True
    [hit] = receiver.hits("/sandbox")
    assert receiver.hits("/production") == []
    assert hit.headers["X-Debug"] == "yes"
    body = Webhook(endpoint.secret).verify(hit.body, hit.headers)  # signed as usual
    assert body["data"] == {"order": 7, "currency": "EUR"}  # fields replaced, others kept
    assert hit.headers["webhook-id"] == f"msg_{entry.message_id}"  # type: ignore[attr-defined]
    delivery = await Delivery.get(id=result["delivery_id"])
    assert delivery.status == DeliveryStatus.SUCCEEDED
    after = await DeadLetter.get(id=entry.id)
    assert (after.status, after.retry_count) == (DeadLetterStatus.ACTIVE, 0)  # not resolved
    [row] = await AuditLog.filter(action="dlq.sandbox_retry")
    assert row.actor == "alice" and row.details["url"] == receiver.url("/sandbox")
    assert row.details["header_names"] == ["X-Debug"]  # names only, never the values


async def test_failed_sandbox_retry_adds_nothing_to_the_dlq_and_spares_the_endpoint(
        db, redis, receiver, run_worker):
    receiver.script("/sandbox", Reply(500, "still broken"))
    endpoint = await make_endpoint(receiver.url("/production"))
    entry = await make_dead_letter(endpoint)

    result = await retry_dead_letter(entry.id, "alice", redis=redis, sandbox=True,
                                     overrides={"url": receiver.url("/sandbox")})
    await run_worker()

    assert len(receiver.hits("/sandbox")) == 1  # one try, no policy retries
    delivery = await Delivery.get(id=result["delivery_id"])
    assert (delivery.status, delivery.last_status_code) == (DeliveryStatus.FAILED, 500)
    assert await DeadLetter.all().count() == 1  # no new entry
    assert (await DeadLetter.get(id=entry.id)).status == DeadLetterStatus.ACTIVE
    health = await Endpoint.get(id=endpoint.id)
    assert (health.consecutive_failures, health.failing_since) == (0, None)


@pytest.mark.parametrize(("sandbox", "overrides", "field"), [
    (True, {}, "overrides.url"),
    (True, {"headers": {"X": "1"}}, "overrides.url"),
    (False, {"url": "http://127.0.0.1:9/x"}, "overrides"),
    (True, {"url": "http://127.0.0.1:9/x", "headers": {"webhook-signature": "v1,forged"}},
     "overrides.headers"),
    (True, {"url": "http://127.0.0.1:9/x", "headers": {"bad name": "1"}}, "overrides.headers"),
    (True, {"url": "http://169.254.169.254/latest"}, "overrides.url"),
    (True, {"url": "ftp://127.0.0.1/x"}, "overrides.url"),
    (True, {"url": "http://127.0.0.1:9/x", "extra": 1}, "overrides.extra"),
])
async def test_bad_sandbox_requests_are_refused_naming_the_field_and_change_nothing(
        db, redis, sandbox, overrides, field):
    entry = await make_dead_letter(await make_endpoint("http://127.0.0.1:9/hook"))

    with pytest.raises(ValidationError) as refused:
        await retry_dead_letter(entry.id, "alice", redis=redis, sandbox=sandbox,
                                overrides=overrides)

    assert [f["field"] for f in refused.value.details["fields"]][0] == field
    assert await Delivery.all().count() == 1  # only the original
    assert await AuditLog.all().count() == 0
    assert await redis.zcard(__import__("jobs.queue").queue.queue_name()) == 0


async def test_sandbox_retry_over_rest(db, redis, receiver):
    import httpx

    from models.auth import create_user

    entry = await make_dead_letter(await make_endpoint(receiver.url("/production")))
    tokens = {role: (await create_user(role, role))[2] for role in ("operator", "viewer")}
    body = {"sandbox": True, "overrides": {"url": receiver.url("/sandbox")}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api),
                                 base_url="http://test") as client:
        refused = await client.post(f"/v1/dlq/{entry.id}/retry", json=body,
                                    headers={"Authorization": f"Bearer {tokens['viewer']}"})
        bad = await client.post(f"/v1/dlq/{entry.id}/retry", json={"sandbox": True},
                                headers={"Authorization": f"Bearer {tokens['operator']}"})
        ok = await client.post(f"/v1/dlq/{entry.id}/retry", json=body,
                               headers={"Authorization": f"Bearer {tokens['operator']}"})

    assert refused.status_code == 403
    assert bad.status_code == 422 and bad.json()["error"]["details"]["fields"][0]["field"] == \
        "overrides.url"
    assert ok.status_code == 202 and ok.json()["sandbox"] is True
    meta = (await Delivery.get(id=ok.json()["delivery_id"])).metadata["__retry_metadata"]
    assert meta["sandbox"] is True and meta["overrides"] == {"url": receiver.url("/sandbox"), "headers": {}}
