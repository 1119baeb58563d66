"""A real worker process killed (-9) in the middle of an attempt: arq never calls us for that
job again, so the reconciler must notice, count the lost try, and retry or dead-letter the
delivery exactly once (DESIGN.md "Reliability facts")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from jobs.deliver import recover_stale_running
from jobs.operations.publish import publish_message
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.enums import DeliveryStatus
from tests.factories import make_endpoint
from tests.receiver import Reply

WORKER = [sys.executable, "-m", "jobs.run_worker"]  # as `observatory up` starts one
REPO = Path(__file__).resolve().parents[2]


def policy(max_retries: int) -> dict:
    return {"max_retries": max_retries, "backoff": "fixed", "base_delay": 1, "max_delay": 1,
            "jitter": False}


async def _kill_worker_mid_attempt(receiver, path: str, delivery_id: int) -> None:
    """Start a real worker, wait until the receiver holds its request, then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen(WORKER, env=env, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):  # a worker starts in a second or two; allow a loaded machine
            if receiver.hits(path):
                break
            await asyncio.sleep(0.05)
        assert receiver.hits(path), "the worker never posted"
        assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.RUNNING
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)


async def test_worker_killed_during_the_last_try_is_dead_lettered_exactly_once(
        db, redis, receiver):
    receiver.script("/hang", Reply(200, "too late", delay_s=6))
    endpoint = await make_endpoint(receiver.url("/hang"), retry_config=policy(0))  # one try
    published = await publish_message(endpoint.app_id, "order.created", {"n": 1}, redis=redis)
    delivery_id = published["deliveries"][0]["id"]

    await _kill_worker_mid_attempt(receiver, "/hang", delivery_id)

    ctx = {"redis": redis}
    assert await recover_stale_running(ctx, older_than_s=0) == 1
    assert await recover_stale_running(ctx, older_than_s=0) == 0  # a second sweep: nothing
    entry = await DeadLetter.get(delivery_id=delivery_id)
    assert (entry.failure_reason, entry.error_history[-1]["error"]) == (
        "max_attempts_exceeded", "worker_lost")
    assert await DeadLetter.filter(delivery_id=delivery_id).count() == 1
    delivery = await Delivery.get(id=delivery_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert len(receiver.hits("/hang")) == 1


async def test_worker_killed_before_the_last_try_is_retried_with_the_same_webhook_id(
        db, redis, receiver, run_worker):
    receiver.script("/flaky", Reply(200, "too late", delay_s=6), Reply(200, "ok"))
    endpoint = await make_endpoint(receiver.url("/flaky"), retry_config=policy(1))  # two tries
    published = await publish_message(endpoint.app_id, "order.created", {"n": 1}, redis=redis)
    delivery_id = published["deliveries"][0]["id"]

    await _kill_worker_mid_attempt(receiver, "/flaky", delivery_id)
    assert await recover_stale_running({"redis": redis}, older_than_s=0) == 1
    # the killed job's in-progress key would expire after job_timeout + 10 s; skip the wait
    for key in await redis.keys("arq:in-progress:*"):
        await redis.delete(key)
    await run_worker()

    delivery = await Delivery.get(id=delivery_id)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 2)
    lost, ok = await Attempt.filter(delivery_id=delivery_id).order_by("number")
    assert (lost.error_class, ok.status_code) == ("worker_lost", 200)
    first, second = receiver.hits("/flaky")  # at least once, de-duplicable by the receiver
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert not await DeadLetter.exists()
