"""The fast lane and the engine's rules: batching, isolation, Retry-After, body cap, deadline,
410 and abort-message, endpoint health, secret rotation — real Redis, DB and HTTP receivers."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from jobs.attempt import EXCERPT_BYTES, post_once
from jobs.deliver import close_context, deliver_batch, init_context
from jobs.http import make_client
from jobs.operations.publish import publish_message
from jobs.queue import enqueue_batch, queue_name
from jobs.signing import generate_secret
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.endpoints import Application, Endpoint
from models.enums import DeliveryStatus
from tests.factories import make_endpoint
from tests.receiver import Reply


@pytest_asyncio.fixture
async def ctx(redis):
    async with make_client() as client:
        context = {"redis": redis, "http": client}
        init_context(context)
        yield context
        await close_context(context)


async def _publish(endpoint: Endpoint, redis, n: int = 1) -> list[int]:
    ids = []
    for i in range(n):
        result = await publish_message(endpoint.app_id, "x", {"i": i}, redis=redis)  # type: ignore[attr-defined]
        ids += [d["id"] for d in result["deliveries"]]
    return ids


async def test_publish_hands_deliveries_to_batched_jobs(db, redis, receiver, run_worker):
    app = await Application.create(name="many")
    for n in range(3):
        await make_endpoint(receiver.url(f"/e{n}"), app=app)
    await redis.flushdb()
    result = await publish_message(app.id, "x", {}, redis=redis)
    assert len(result["deliveries"]) == 3
    assert await redis.zcard(queue_name()) == 1  # one job carries the three
    await run_worker()
    assert await Delivery.filter(status=DeliveryStatus.SUCCEEDED).count() == 3


async def test_batches_split_at_the_batch_size(db, redis):
    assert await enqueue_batch(redis, range(1, 121), batch_size=50) == 3
    assert await redis.zcard(queue_name()) == 3


async def test_delivery_in_two_batches_is_delivered_once(db, redis, receiver, ctx):
    endpoint = await make_endpoint(receiver.url("/ok"))
    [delivery_id] = await _publish(endpoint, redis)
    first, second = await asyncio.gather(deliver_batch(ctx, [delivery_id]),
                                         deliver_batch(ctx, [delivery_id]))
    assert sorted([first["claimed"], second["claimed"]]) == [0, 1]
    assert len(receiver.hits("/ok")) == 1
    assert await Attempt.filter(delivery_id=delivery_id).count() == 1


async def test_slow_endpoint_does_not_hold_fast_deliveries_hostage(db, redis, receiver, ctx):
    receiver.script("/slow", Reply(200, delay_s=4))
    app = await Application.create(name="mixed")
    slow = await make_endpoint(receiver.url("/slow"), app=app)
    fast = await make_endpoint(receiver.url("/fast"), app=app)
    ids = [d["id"] for _ in range(5)
           for d in (await publish_message(app.id, "x", {}, redis=redis))["deliveries"]]
    t0 = time.monotonic()
    counts = await deliver_batch(ctx, ids)
    returned_after = time.monotonic() - t0
    assert counts["succeeded"] == 5 and counts["detached"] == 5
    assert returned_after < 2.5  # the job did not wait for the slow receiver
    assert await Delivery.filter(endpoint_id=fast.id, status=DeliveryStatus.SUCCEEDED).count() == 5
    assert await Delivery.filter(endpoint_id=slow.id, status=DeliveryStatus.RUNNING).count() == 5
    await asyncio.wait(set(ctx["detached"]), timeout=10)  # the stragglers record themselves
    assert await Delivery.filter(endpoint_id=slow.id, status=DeliveryStatus.SUCCEEDED).count() == 5


async def test_in_flight_cap_per_endpoint(db, redis, ctx):
    seen = {"now": 0, "peak": 0}

    async def handler(request: web.Request) -> web.Response:
        seen["now"] += 1
        seen["peak"] = max(seen["peak"], seen["now"])
        await asyncio.sleep(0.2)
        seen["now"] -= 1
        return web.Response(text="ok")

    runner, port = await _serve(handler)
    try:
        endpoint = await make_endpoint(f"http://127.0.0.1:{port}/capped", max_in_flight=3)
        ids = await _publish(endpoint, redis, 9)
        await deliver_batch(ctx, ids)
        await asyncio.wait(set(ctx["detached"]) or {asyncio.ensure_future(asyncio.sleep(0))})
        assert seen["peak"] == 3
        assert await Delivery.filter(status=DeliveryStatus.SUCCEEDED).count() == 9
    finally:
        await runner.cleanup()


async def test_retry_after_is_honoured_up_to_max_delay(db, redis, receiver, ctx):
    receiver.script("/busy", Reply(429, headers={"Retry-After": "7"}))
    endpoint = await make_endpoint(receiver.url("/busy"), retry_config={
        "max_retries": 3, "backoff": "fixed", "base_delay": 1, "max_delay": 5, "jitter": False})
    [delivery_id] = await _publish(endpoint, redis)
    before = datetime.now(UTC)
    await deliver_batch(ctx, [delivery_id])
    delivery = await Delivery.get(id=delivery_id)
    assert delivery.status == DeliveryStatus.RETRYING
    wait = (delivery.next_attempt_at - before).total_seconds()
    assert 4.5 <= wait <= 6  # Retry-After 7 s, capped at max_delay 5 s (not base_delay 1 s)


async def test_response_body_is_capped(db, redis, receiver, ctx):
    receiver.script("/big", Reply(200, "x" * (EXCERPT_BYTES * 3)))
    endpoint = await make_endpoint(receiver.url("/big"))
    [delivery_id] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [delivery_id])
    attempt = await Attempt.get(delivery_id=delivery_id)
    assert len(attempt.response_excerpt) == EXCERPT_BYTES


async def test_trickling_receiver_is_cut_at_the_attempt_deadline(db):
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(30):
            await response.write(b"x")
            await asyncio.sleep(1)
        return response

    runner, port = await _serve(trickle)
    try:
        async with make_client() as client:
            t0 = time.monotonic()
            result = await post_once(client, f"http://127.0.0.1:{port}/t", b"{}", {},
                                     deadline_s=2.5)
        assert 2.4 <= time.monotonic() - t0 < 5
        assert (result.outcome.kind, result.outcome.reason) == ("retryable", "timeout")
    finally:
        await runner.cleanup()


async def test_410_disables_the_endpoint_and_later_deliveries_go_to_dlq(db, redis, receiver, ctx):
    receiver.script("/gone", Reply(410))
    endpoint = await make_endpoint(receiver.url("/gone"))
    [first] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [first])
    refreshed = await Endpoint.get(id=endpoint.id)
    assert not refreshed.enabled and "410" in refreshed.disabled_reason
    assert (await DeadLetter.get(delivery_id=first)).failure_reason == "endpoint_gone"

    [second] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [second])
    assert len(receiver.hits("/gone")) == 1  # nothing sent to a disabled endpoint
    assert (await DeadLetter.get(delivery_id=second)).failure_reason == "endpoint_disabled"


async def test_abort_message_header_stops_retries(db, redis, receiver, ctx):
    receiver.script("/stop", Reply(500, headers={"webhook-delivery": "abort-message"}))
    endpoint = await make_endpoint(receiver.url("/stop"))
    [delivery_id] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [delivery_id])
    entry = await DeadLetter.get(delivery_id=delivery_id)
    assert entry.failure_reason == "aborted_by_receiver" and entry.attempts == 1
    assert (await Endpoint.get(id=endpoint.id)).enabled


async def test_long_failing_endpoint_is_disabled_and_a_success_heals(db, redis, receiver, ctx):
    receiver.script("/bad", Reply(400))
    endpoint = await make_endpoint(receiver.url("/bad"))
    await Endpoint.filter(id=endpoint.id).update(
        failing_since=datetime.now(UTC) - timedelta(days=6), consecutive_failures=50)
    await deliver_batch(ctx, await _publish(endpoint, redis))
    disabled = await Endpoint.get(id=endpoint.id)
    assert not disabled.enabled and "failing for more than 5 days" in disabled.disabled_reason

    healthy = await make_endpoint(receiver.url("/ok"))
    await Endpoint.filter(id=healthy.id).update(failing_since=datetime.now(UTC),
                                                consecutive_failures=3)
    await deliver_batch(ctx, await _publish(healthy, redis))
    healed = await Endpoint.get(id=healthy.id)
    assert (healed.failing_since, healed.consecutive_failures, healed.enabled) == (None, 0, True)


async def test_rotation_grace_sends_both_signatures(db, redis, receiver, ctx):
    old = generate_secret()
    endpoint = await make_endpoint(receiver.url("/rot"), previous_secret=old,
                                   previous_secret_expires_at=datetime.now(UTC) + timedelta(hours=1))
    await deliver_batch(ctx, await _publish(endpoint, redis))
    [hit] = receiver.hits("/rot")
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(hit.body, hit.headers)
    Webhook(endpoint.secret).verify(hit.body, hit.headers)


async def test_expired_previous_secret_is_not_used(db, redis, receiver, ctx):
    endpoint = await make_endpoint(receiver.url("/rot"), previous_secret=generate_secret(),
                                   previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    await deliver_batch(ctx, await _publish(endpoint, redis))
    [hit] = receiver.hits("/rot")
    assert len(hit.headers["webhook-signature"].split(" ")) == 1


async def _serve(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_blocked_destinations_are_final_without_a_request(db, redis, receiver):
    from jobs.deliver import init_context

    urls = [receiver.url("/private").replace("127.0.0.1", "[::1]"),  # loopback v6, not allowlisted
            "http://169.254.169.254/latest/meta-data", "http://2130706433/", "http://0177.0.0.1/"]
    app = await Application.create(name="ssrf")
    endpoints = [await make_endpoint(url, app=app) for url in urls]
    async with make_client(allowlist="127.0.0.0/8") as client:
        ctx = {"redis": redis, "http": client}
        init_context(ctx)
        result = await publish_message(app.id, "x", {}, redis=redis)
        await deliver_batch(ctx, [d["id"] for d in result["deliveries"]])
        await close_context(ctx)
    reasons = {e.endpoint_id: e.failure_reason for e in await DeadLetter.all()}
    assert reasons == {e.id: reasons[e.id] for e in endpoints}
    assert set(reasons.values()) <= {"destination_blocked", "invalid_url"}
    assert reasons[endpoints[0].id] == reasons[endpoints[1].id] == "destination_blocked"
    assert all(e.attempts == 1 for e in await DeadLetter.all())  # final at once, no retries
    assert receiver.hits("/private") == []


async def test_redirect_following_endpoint_is_guarded_on_every_hop(db, redis, receiver, ctx):
    """Opted-in redirects use the httpx client, whose transport checks each hop."""
    receiver.script("/moved", Reply(302, headers={"Location": "http://[::1]:9/inside"}))
    endpoint = await make_endpoint(receiver.url("/moved"), follow_redirects=True,
                                   retry_config={"max_retries": 0, "backoff": "fixed",
                                                 "base_delay": 1, "max_delay": 1, "jitter": False})
    [delivery_id] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [delivery_id])
    assert (await DeadLetter.get(delivery_id=delivery_id)).failure_reason == "destination_blocked"


async def test_redirect_is_final_when_not_followed(db, redis, receiver, ctx):
    receiver.script("/moved", Reply(301, headers={"Location": receiver.url("/ok")}))
    endpoint = await make_endpoint(receiver.url("/moved"))
    [delivery_id] = await _publish(endpoint, redis)
    await deliver_batch(ctx, [delivery_id])
    assert (await DeadLetter.get(delivery_id=delivery_id)).failure_reason == "redirect_not_followed"
    assert receiver.hits("/ok") == []


async def test_jobs_share_one_connection_pool(db, redis, receiver, run_worker):
    """Every batch job of a worker reuses the same keep-alive connections."""
    app = await Application.create(name="pool")
    await make_endpoint(receiver.url("/ok"), app=app)
    for _ in range(6):  # six separate batch jobs, run one after the other
        await publish_message(app.id, "x", {}, redis=redis)
    await run_worker(max_jobs=1)
    assert len(receiver.hits("/ok")) == 6
    assert len(receiver.peers) == 1  # one connection, kept alive across jobs


async def test_slow_endpoint_does_not_starve_others_on_the_same_host(db, redis, receiver, ctx):
    """Connections are not capped per host: a slow endpoint's full in-flight quota leaves the
    other endpoints on the same receiver host their own."""
    receiver.script("/slow", Reply(200, delay_s=3))
    slow = await make_endpoint(receiver.url("/slow"), max_in_flight=80)
    [*slow_ids] = await _publish(slow, redis, 80)  # 80 stuck connections to 127.0.0.1:port
    await deliver_batch(ctx, slow_ids)
    fast = await make_endpoint(receiver.url("/fast"))
    t0 = time.monotonic()
    await deliver_batch(ctx, await _publish(fast, redis, 5))
    assert await Delivery.filter(endpoint_id=fast.id, status=DeliveryStatus.SUCCEEDED).count() == 5
    assert time.monotonic() - t0 < 2  # not queued behind the slow endpoint's connections
    await asyncio.wait(set(ctx["detached"]), timeout=10)


async def test_batch_size_comes_from_the_setting(db, redis, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BATCH_SIZE", "40")
    assert await enqueue_batch(redis, range(1, 121)) == 3
    jobs = await redis.queued_jobs(queue_name=queue_name())
    assert sorted(len(j.args[0]) for j in jobs) == [40, 40, 40]


def test_a_mistyped_batch_size_is_refused_with_the_rule(monkeypatch):
    from models.config import get_settings

    for bad in ("0", "1001", "fifty"):
        monkeypatch.setenv("OBSERVATORY_BATCH_SIZE", bad)
        with pytest.raises(ValueError, match="OBSERVATORY_BATCH_SIZE: must be a whole number "
                                             "from 1 to 1000"):
            get_settings()
