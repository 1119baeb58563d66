"""The demo receiver's routes and the demo producer's set-up and publishing."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from dashboard.demo import (ROUTES, FallbackPublisher, RouteMissingError, demo_response,
                            direct_publisher, ensure_demo_setup, rest_publisher, run_producer,
                            sample_event, start_receiver)
from jobs.embedded_redis import free_port
from models.deliveries import Message
from models.endpoints import Application, Endpoint

REPO_ROOT = Path(__file__).resolve().parents[2]

SLOW_DELAY_S = 0.5


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[httpx.AsyncClient]:
    runner, port = await start_receiver(0, rng=random.Random(7), slow_delay_s=SLOW_DELAY_S)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as client:
        yield client
    await runner.cleanup()


async def test_ok_always_answers_200(receiver: httpx.AsyncClient) -> None:
    statuses = {(await receiver.post("/ok", json={"n": n})).status_code for n in range(5)}
    assert statuses == {200}


async def test_gone_always_answers_410(receiver: httpx.AsyncClient) -> None:
    statuses = {(await receiver.post("/gone", json={})).status_code for _ in range(5)}
    assert statuses == {410}


async def test_flaky_answers_both_200_and_500(receiver: httpx.AsyncClient) -> None:
    statuses = [(await receiver.post("/flaky", json={})).status_code for _ in range(60)]

    assert set(statuses) == {200, 500}
    assert 5 <= statuses.count(500) <= 35  # ~30% of 60, with a seeded random


async def test_slow_answers_200_after_its_delay(receiver: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await receiver.post("/slow", json={})

    assert response.status_code == 200
    assert time.monotonic() - started >= SLOW_DELAY_S


async def test_stats_count_answers_per_route(receiver: httpx.AsyncClient) -> None:
    await receiver.post("/ok", json={})
    await receiver.post("/gone", json={})

    assert (await receiver.get("/stats")).json() == {"gone 410": 1, "ok 200": 1}


def test_flaky_failure_rate_is_about_30_percent() -> None:
    rng = random.Random(1)
    failures = sum(demo_response("flaky", rng).status == 500 for _ in range(10_000))
    assert 2_700 <= failures <= 3_300


def test_slow_defaults_to_about_three_seconds() -> None:
    assert demo_response("slow", random.Random()).delay_s == pytest.approx(3.0)
    assert demo_response("nope", random.Random()).status == 404


async def test_demo_setup_is_idempotent_and_follows_the_receiver_port(db: str) -> None:
    first = await ensure_demo_setup("http://127.0.0.1:4001")
    again = await ensure_demo_setup("http://127.0.0.1:4002")

    assert first == again
    assert await Application.filter(name="demo").count() == 1
    endpoints = await Endpoint.filter(app_id=first).order_by("id")
    assert [e.url for e in endpoints] == [f"http://127.0.0.1:4002/{r}" for r in ROUTES]
    assert all(e.secret.startswith("whsec_") and len(e.secret) == len("whsec_") + 32
               for e in endpoints)


def test_sample_events_cycle_through_event_types_with_small_payloads() -> None:
    rng = random.Random(3)
    events = [sample_event(seq, rng) for seq in range(1, 9)]

    assert {event_type for event_type, _ in events} >= {"order.created", "invoice.paid"}
    assert all(len(str(payload)) < 400 for _, payload in events)


async def test_producer_publishes_through_the_injected_callable() -> None:
    calls: list[tuple[Any, ...]] = []

    async def publish(*args: Any) -> None:
        calls.append(args)

    published = await run_producer(42, publish, interval_s=0.01, stop=asyncio.Event(), limit=3)

    assert published == 3
    assert [c[0] for c in calls] == [42, 42, 42]
    assert len({c[3] for c in calls}) == 3  # a fresh idempotency key per message


async def test_producer_keeps_going_after_a_failed_publish() -> None:
    outcomes = iter([RuntimeError("api restarting"), None, None])

    async def publish(*args: Any) -> None:
        if (outcome := next(outcomes)) is not None:
            raise outcome

    assert await run_producer(1, publish, interval_s=0.01, stop=asyncio.Event(), limit=3) == 2


async def test_rest_publisher_posts_with_the_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": 1, "deliveries": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                 base_url="http://api") as client:
        answer = await rest_publisher(client, "obs_t")(7, "order.created", {"a": 1}, "k1")

    assert answer == {"id": 1, "deliveries": []}
    assert seen[0].url.path == "/v1/messages"
    assert seen[0].headers["authorization"] == "Bearer obs_t"


async def test_missing_messages_route_falls_back_to_the_direct_operation() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "Not Found"}})

    direct: list[tuple[Any, ...]] = []

    async def fallback() -> Any:
        async def publish(*args: Any) -> str:
            direct.append(args)
            return "direct"
        return publish

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                 base_url="http://api") as client:
        publish = FallbackPublisher(rest_publisher(client, "t"), fallback)
        assert await publish(1, "invoice.paid", {}, None) == "direct"
        assert await publish(1, "invoice.paid", {}, None) == "direct"
    assert len(direct) == 2


async def test_api_not_found_error_is_not_mistaken_for_a_missing_route() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found",
                                                   "message": "application 9 does not exist"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                 base_url="http://api") as client:
        with pytest.raises(httpx.HTTPStatusError):
            await rest_publisher(client, "t")(9, "order.created", {}, None)
    assert not issubclass(RouteMissingError, httpx.HTTPError)


async def test_direct_publisher_stores_one_delivery_per_demo_endpoint(db: str, redis: Any) -> None:
    app_id = await ensure_demo_setup("http://127.0.0.1:4003")
    publish = await direct_publisher()

    result = await publish(app_id, "order.created", {"order_id": "ord_1"}, "demo-1")
    everyone = await publish(app_id, "customer.updated", {"changed": ["email"]}, "demo-2")

    assert len(result["deliveries"]) == len(ROUTES) - 1  # /gone hears customer.updated only
    assert len(everyone["deliveries"]) == len(ROUTES)
    assert await Message.filter(app_id=app_id).count() == 2


async def test_demo_process_serves_the_receiver_and_publishes_until_sigterm(db: str) -> None:
    port = free_port()
    env = {**os.environ, "OBSERVATORY_DEMO_TOKEN": ""}  # no token: the direct operation
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dashboard.demo", "--port", str(port), "--interval", "0.2",
        "--api-url", "http://127.0.0.1:9", cwd=REPO_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await _eventually(client.get, f"http://127.0.0.1:{port}/ok")).status_code == 200
        for _ in range(100):
            if await Message.filter(app__name="demo").count() >= 2:
                break
            await asyncio.sleep(0.1)
        assert await Message.filter(app__name="demo").count() >= 2
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, output.decode()


async def _eventually(call: Any, *args: Any) -> Any:
    for _ in range(100):
        try:
            return await call(*args)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    return await call(*args)
