"""Publish → worker → receiver, against real Redis, the real database and a real HTTP server."""

from __future__ import annotations

import json

from standardwebhooks.webhooks import Webhook

from jobs.operations.publish import publish_message
from jobs.queue import enqueue_batch, queue_name
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_endpoint
from tests.receiver import Reply


async def test_publish_delivers_signed_request_that_verifies(db, redis, receiver, run_worker):
    endpoint = await make_endpoint(receiver.url("/ok"))
    result = await publish_message(endpoint.app_id, "order.created", {"order": 7}, redis=redis)
    await run_worker()

    delivery = await Delivery.get(id=result["deliveries"][0]["id"])
    assert delivery.status == DeliveryStatus.SUCCEEDED
    assert delivery.attempts == 1
    [hit] = receiver.hits("/ok")
    assert hit.headers["webhook-id"] == f"msg_{result['id']}"
    verified = Webhook(endpoint.secret).verify(hit.body, hit.headers)
    assert verified["data"] == {"order": 7} and verified["type"] == "order.created"
    [attempt] = await Attempt.filter(delivery_id=delivery.id)
    assert (attempt.number, attempt.status_code, attempt.outcome) == (1, 200, "success")


async def test_failing_receiver_lands_in_dlq_after_policy_attempts(db, redis, receiver, run_worker):
    receiver.script("/fail", Reply(500, "boom"))
    endpoint = await make_endpoint(receiver.url("/fail"))  # 2 retries, 1 s apart
    result = await publish_message(endpoint.app_id, "invoice.paid", {"n": 1}, redis=redis)
    await run_worker()

    delivery = await Delivery.get(id=result["deliveries"][0]["id"])
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert len(receiver.hits("/fail")) == 3
    ids = {h.headers["webhook-id"] for h in receiver.hits("/fail")}
    assert ids == {f"msg_{result['id']}"}  # stable across retries
    entry = await DeadLetter.get(delivery_id=delivery.id)
    assert entry.status == DeadLetterStatus.ACTIVE
    assert entry.failure_reason == "max_attempts_exceeded"
    assert [h["attempt"] for h in entry.error_history] == [1, 2, 3]
    assert {h["status_code"] for h in entry.error_history} == {500}
    assert entry.policy["max_retries"] == 2


async def test_non_retryable_status_goes_straight_to_dlq(db, redis, receiver, run_worker):
    receiver.script("/bad", Reply(400, "nope"))
    endpoint = await make_endpoint(receiver.url("/bad"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    await run_worker()

    assert len(receiver.hits("/bad")) == 1
    entry = await DeadLetter.get(delivery_id=result["deliveries"][0]["id"])
    assert entry.failure_reason == "non_retryable_status"
    assert entry.attempts == 1


async def test_retryable_then_success_needs_no_dlq(db, redis, receiver, run_worker):
    receiver.script("/flaky", Reply(503), Reply(200))
    endpoint = await make_endpoint(receiver.url("/flaky"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    await run_worker()

    delivery = await Delivery.get(id=result["deliveries"][0]["id"])
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 2)
    assert not await DeadLetter.exists()


async def test_connection_refused_is_retried_then_dead_lettered(db, redis, run_worker):
    from jobs.embedded_redis import free_port

    endpoint = await make_endpoint(f"http://127.0.0.1:{free_port()}/nobody")
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    await run_worker()

    entry = await DeadLetter.get(delivery_id=result["deliveries"][0]["id"])
    assert entry.failure_reason == "max_attempts_exceeded"
    assert {h["error"] for h in entry.error_history} == {"connection_error"}


async def test_state_changes_are_published_on_redis(db, redis, receiver, run_worker):
    from models.config import get_settings

    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)
    endpoint = await make_endpoint(receiver.url("/ok"))
    await publish_message(endpoint.app_id, "x", {}, redis=redis)
    await run_worker()
    seen = []
    for _ in range(20):  # bounded: get_message returns None for the subscribe confirmation too
        if msg := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2):
            seen.append(json.loads(msg["data"])["status"])
    await pubsub.aclose()
    assert seen == ["queued", "succeeded"]


async def test_duplicate_job_for_one_delivery_delivers_once(db, redis, receiver, run_worker):
    endpoint = await make_endpoint(receiver.url("/ok"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    delivery_id = result["deliveries"][0]["id"]
    await enqueue_batch(redis, [delivery_id])  # handed out a second time
    await redis.enqueue_job("deliver", delivery_id, _job_id="duplicate", _queue_name=queue_name())
    await run_worker()
    assert len(receiver.hits("/ok")) == 1


async def test_idempotency_key_returns_first_message(db, redis, receiver, run_worker):
    endpoint = await make_endpoint(receiver.url("/ok"))
    first = await publish_message(endpoint.app_id, "x", {"a": 1}, "key-1", redis=redis)
    again = await publish_message(endpoint.app_id, "x", {"a": 2}, "key-1", redis=redis)
    assert again["id"] == first["id"] and again["idempotent_replay"]
    await run_worker()
    assert len(receiver.hits("/ok")) == 1


async def _stuck_running(endpoint, redis, attempts: int) -> int:
    from datetime import UTC, datetime, timedelta

    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    delivery_id = result["deliveries"][0]["id"]
    await redis.flushdb()  # the job is gone with the killed worker
    await Delivery.filter(id=delivery_id).update(
        status=DeliveryStatus.RUNNING, attempts=attempts,
        updated_at=datetime.now(UTC) - timedelta(minutes=10))
    return delivery_id


async def test_delivery_stuck_running_is_retried_after_its_worker_died(db, redis, receiver, run_worker):
    from jobs.deliver import recover_stale_running

    endpoint = await make_endpoint(receiver.url("/ok"))  # 3 attempts allowed
    delivery_id = await _stuck_running(endpoint, redis, attempts=1)

    assert await recover_stale_running({"redis": redis}) == 1
    assert await recover_stale_running({"redis": redis}) == 0  # once
    await run_worker()
    delivery = await Delivery.get(id=delivery_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 2)
    lost, ok = await Attempt.filter(delivery_id=delivery_id).order_by("number")
    assert (lost.error_class, ok.status_code) == ("worker_lost", 200)


async def test_killed_last_try_is_dead_lettered_exactly_once(db, redis, receiver):
    from jobs.deliver import recover_stale_running

    endpoint = await make_endpoint(receiver.url("/ok"))
    delivery_id = await _stuck_running(endpoint, redis, attempts=3)  # the last of 3

    assert await recover_stale_running({"redis": redis}) == 1
    assert await recover_stale_running({"redis": redis}) == 0
    entry = await DeadLetter.get(delivery_id=delivery_id)
    assert entry.failure_reason == "max_attempts_exceeded"
    assert entry.error_history[-1]["error"] == "worker_lost"
    assert await DeadLetter.filter(delivery_id=delivery_id).count() == 1
    assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.FAILED


async def test_cancelled_attempt_releases_its_claim(db, redis, receiver):
    import asyncio

    from jobs.deliver import close_context, deliver, init_context
    from jobs.http import make_client

    receiver.script("/slow", Reply(200, delay_s=5))
    endpoint = await make_endpoint(receiver.url("/slow"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    delivery_id = result["deliveries"][0]["id"]
    async with make_client() as client:
        ctx = {"redis": redis, "http": client}
        init_context(ctx)
        task = asyncio.create_task(deliver(ctx, delivery_id))
        for _ in range(100):
            if receiver.hits("/slow"):
                break
            await asyncio.sleep(0.05)
        task.cancel()  # what arq does to running jobs on shutdown
        with __import__("pytest").raises(asyncio.CancelledError):
            await task
        await close_context(ctx)
    delivery = await Delivery.get(id=delivery_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.QUEUED, 0)


async def test_each_attempt_writes_one_json_log_line(db, redis, receiver, run_worker):
    import logging

    receiver.script("/fail", Reply(503, "busy"))  # 2 retries, 1 s apart (make_endpoint)
    ok = await make_endpoint(receiver.url("/ok"))
    failing = await make_endpoint(receiver.url("/fail"), app=await ok.app)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.extend(record.getMessage().splitlines())  # type: ignore[method-assign]
    logger = logging.getLogger("observatory.deliver")
    logger.addHandler(handler)
    try:
        result = await publish_message(ok.app_id, "order.created", {"n": 1}, redis=redis)
        await run_worker()
    finally:
        logger.removeHandler(handler)

    ids = {d["endpoint_id"]: d["id"] for d in result["deliveries"]}
    logged = [json.loads(line) for line in lines if line.startswith('{"event": "attempt"')]
    assert len(logged) == len(lines) == 4  # one line per attempt, nothing else
    by_delivery = {i: [x for x in logged if x["delivery_id"] == i] for i in ids.values()}
    [success] = by_delivery[ids[ok.id]]
    assert success["job_id"] and success["duration_ms"] >= 0
    assert {k: success[k] for k in ("endpoint_id", "attempt", "status", "outcome", "error",
                                    "delivery_status", "delay_ms")} == {
        "endpoint_id": ok.id, "attempt": 1, "status": 200, "outcome": "success", "error": None,
        "delivery_status": "succeeded", "delay_ms": None}
    tries = by_delivery[ids[failing.id]]
    assert [(t["attempt"], t["status"], t["outcome"], t["error"], t["delivery_status"],
             t["delay_ms"]) for t in tries] == [
        (1, 503, "retryable", "server_error", "retrying", 1000),
        (2, 503, "retryable", "server_error", "retrying", 1000),
        (3, 503, "retryable", "server_error", "failed", None)]
    assert tries[1]["job_id"] == f"{ids[failing.id]}:2"  # a retry is its own job


async def test_a_response_with_nul_characters_is_recorded(db, redis, receiver, run_worker):
    """PostgreSQL text cannot hold NUL: a receiver's excerpt (and error) keeps the rest, with
    each NUL as U+FFFD, on both databases, and the outcomes are recorded as usual."""
    receiver.script("/nul", Reply(200, "ok\x00done"))
    receiver.script("/nul-fail", Reply(400, "bad\x00input"))
    ok = await make_endpoint(receiver.url("/nul"))
    bad = await make_endpoint(receiver.url("/nul-fail"))
    sent = await publish_message(ok.app_id, "x", {}, redis=redis)
    failed = await publish_message(bad.app_id, "x", {}, redis=redis)
    await run_worker()

    delivery = await Delivery.get(id=sent["deliveries"][0]["id"])
    assert delivery.status == DeliveryStatus.SUCCEEDED
    [attempt] = await Attempt.filter(delivery_id=delivery.id)
    assert attempt.response_excerpt == "ok\ufffddone"
    entry = await DeadLetter.get(delivery_id=failed["deliveries"][0]["id"])
    assert entry.failure_reason == "non_retryable_status"
    [tried] = await Attempt.filter(delivery_id=entry.delivery_id)
    assert tried.response_excerpt == "bad\ufffdinput"
