"""Delivery metrics: worker accumulators, their flush to the real Redis, the fleet collector's
gauges from the real database and arq queue; and the attempt spans' no-op path (jobs.tracing)."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from jobs import tracing
from jobs.metrics import (
    DURATION_BUCKETS,
    DeliveryMetrics,
    FleetCollector,
    metric_keys,
    read_fleet_metrics,
    start_flushing,
    stop_flushing,
)
from jobs.queue import enqueue_delivery
from models.deliveries import Delivery, Message
from models.enums import DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by (sample name, its labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(redis) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(FleetCollector(await read_fleet_metrics(redis)))
    return samples(generate_latest(registry).decode())


def label(**labels: str) -> frozenset:
    return frozenset(labels.items())


@pytest.fixture
def round_trips(monkeypatch) -> list[bytes]:
    """Every packet sent to Redis from now on (a pipeline is one)."""
    sent: list[bytes] = []
    original = AbstractConnection.send_packed_command

    async def counting(self, command, check_health=True):
        sent.append(command)
        return await original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def a_batch() -> DeliveryMetrics:
    """50 attempts: 40 succeeded, 6 retrying on 5xx, 3 failed for good, 1 never sent."""
    metrics = DeliveryMetrics()
    for i in range(40):
        metrics.record("succeeded", None, 0.0045 + i * 0.001)  # 4.5 ms .. 43.5 ms
    for _ in range(6):
        metrics.record("retrying", "server_error", 0.2)
        metrics.record_retry()
    for _ in range(3):
        metrics.record("failed", "max_attempts_exceeded", 31.0)  # past the last finite bound
    metrics.record("failed", "endpoint_deleted")  # no request: no duration
    return metrics


def test_record_counts_in_memory_and_rejects_unknown_outcomes():
    metrics = DeliveryMetrics()
    assert not metrics.pending
    metrics.record("succeeded", None, 0.3)
    assert metrics.pending
    with pytest.raises(ValueError, match="outcome: must be one of succeeded, retrying, failed"):
        metrics.record("running", None, 0.1)


async def test_flush_writes_a_batch_in_one_round_trip_and_resets(redis, round_trips):
    metrics = a_batch()
    await redis.ping()  # the connection's handshake is not the flush's
    round_trips.clear()

    assert await metrics.flush(redis) is True

    assert len(round_trips) == 1
    keys = metric_keys()
    stored = await redis.hgetall(keys.deliveries)
    outcomes = {tuple(json.loads(k)): int(v) for k, v in stored.items()}
    assert outcomes == {("succeeded", ""): 40, ("retrying", "server_error"): 6,
                        ("failed", "max_attempts_exceeded"): 3, ("failed", "endpoint_deleted"): 1}
    assert int(await redis.get(keys.retries)) == 6
    duration = {k.decode(): float(v) for k, v in (await redis.hgetall(keys.duration)).items()}
    assert duration["le:0.005"] == 1 and duration["le:+Inf"] == 3 and duration["le:0.25"] == 6
    assert sum(v for k, v in duration.items() if k.startswith("le:")) == 49
    assert duration["sum"] == pytest.approx(sum(0.0045 + i * 0.001 for i in range(40)) + 1.2 + 93)

    round_trips.clear()
    assert await metrics.flush(redis) is False  # nothing new: no round trip at all
    assert round_trips == []


async def test_two_workers_flushes_add_up_in_the_collector(redis):
    first, second = a_batch(), DeliveryMetrics()
    second.record("succeeded", None, 0.6)
    second.record("retrying", "timeout", 30.0)
    second.record_retry()
    await first.flush(redis)
    await second.flush(redis)

    got = await scrape(redis)

    assert got[("webhook_delivery_total", label(outcome="succeeded", reason=""))] == 41
    assert got[("webhook_delivery_total", label(outcome="retrying", reason="server_error"))] == 6
    assert got[("webhook_delivery_total", label(outcome="retrying", reason="timeout"))] == 1
    assert got[("webhook_delivery_total", label(outcome="failed", reason="endpoint_deleted"))] == 1
    assert got[("webhook_retry_total", label())] == 7
    buckets = {le: got[("webhook_delivery_duration_seconds_bucket", label(le=le))]
               for le in ("0.005", "0.05", "0.25", "1.0", "30.0", "+Inf")}
    assert buckets == {"0.005": 1, "0.05": 40, "0.25": 46, "1.0": 47, "30.0": 48, "+Inf": 51}
    assert got[("webhook_delivery_duration_seconds_count", label())] == 51
    assert got[("webhook_delivery_duration_seconds_sum", label())] == pytest.approx(
        sum(0.0045 + i * 0.001 for i in range(40)) + 1.2 + 93 + 30.6)
    assert len([k for k in got if k[0] == "webhook_delivery_duration_seconds_bucket"]) == len(
        DURATION_BUCKETS)


async def test_records_made_while_a_flush_is_in_flight_go_to_the_next_flush(redis):
    metrics = DeliveryMetrics()
    metrics.record("succeeded", None, 0.01)
    flushing = asyncio.create_task(metrics.flush(redis))
    await asyncio.sleep(0)  # the flush has taken its counts and awaits Redis
    metrics.record("failed", "non_retryable_status", 0.02)
    await flushing
    assert metrics.pending
    await metrics.flush(redis)

    got = await scrape(redis)
    assert got[("webhook_delivery_total", label(outcome="succeeded", reason=""))] == 1
    failed = label(outcome="failed", reason="non_retryable_status")
    assert got[("webhook_delivery_total", failed)] == 1
    assert got[("webhook_delivery_duration_seconds_count", label())] == 2


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_failed_flush_keeps_the_counts_for_the_next_one(redis):
    metrics = a_batch()
    unreachable = Redis(host="127.0.0.1", port=_closed_port(), retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(RedisConnectionError):
            await metrics.flush(unreachable)
    finally:
        await unreachable.aclose()
    assert metrics.pending

    await metrics.flush(redis)
    got = await scrape(redis)
    assert got[("webhook_delivery_total", label(outcome="succeeded", reason=""))] == 40
    assert got[("webhook_delivery_duration_seconds_count", label())] == 49


async def test_worker_flushes_periodically_and_once_more_at_shutdown(redis, round_trips):
    ctx = {"redis": redis}
    metrics = start_flushing(ctx, interval_s=0.01)
    assert ctx["metrics"] is metrics
    metrics.record("succeeded", None, 0.1)
    for _ in range(200):
        await asyncio.sleep(0.01)
        if not metrics.pending:
            break
    assert not metrics.pending
    await asyncio.sleep(0.05)  # idle intervals: nothing recorded, nothing sent
    round_trips.clear()
    await asyncio.sleep(0.05)
    assert round_trips == []

    metrics.record("failed", "endpoint_gone", 0.2)  # recorded after the last interval
    flusher = ctx["metrics_flusher"]
    await stop_flushing(ctx)

    assert flusher.cancelled() and "metrics_flusher" not in ctx
    got = await scrape(redis)
    assert got[("webhook_delivery_total", label(outcome="succeeded", reason=""))] == 1
    assert got[("webhook_delivery_total", label(outcome="failed", reason="endpoint_gone"))] == 1


async def test_a_bucket_bound_no_longer_configured_joins_the_next_one_up(redis):
    await redis.hset(metric_keys().duration, mapping={"le:0.3": 4, "sum": 1.2})
    got = await scrape(redis)
    assert got[("webhook_delivery_duration_seconds_bucket", label(le="0.25"))] == 0
    assert got[("webhook_delivery_duration_seconds_bucket", label(le="0.5"))] == 4
    assert got[("webhook_delivery_duration_seconds_count", label())] == 4


async def _queued_delivery(endpoint, waited_s: float, **fields) -> Delivery:
    message = await Message.create(app_id=endpoint.app_id, event_type="order.created", payload={})
    delivery = await Delivery.create(message=message, endpoint=endpoint, **fields)
    await Delivery.filter(id=delivery.id).update(
        created_at=datetime.now(UTC) - timedelta(seconds=waited_s))
    return delivery


async def test_gauges_come_from_the_database_and_the_arq_queue(db, redis):
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    for status in (DeadLetterStatus.ACTIVE, DeadLetterStatus.ACTIVE, DeadLetterStatus.RETRYING,
                   DeadLetterStatus.ARCHIVED):
        await make_dead_letter(endpoint, status=status)
    older = await _queued_delivery(endpoint, 120)
    newer = await _queued_delivery(endpoint, 5)
    await enqueue_delivery(redis, older.id)
    await enqueue_delivery(redis, newer.id)
    await enqueue_delivery(redis, older.id + 1000, 2, defer_s=600)  # a retry due later

    got = await scrape(redis)

    assert {s: got[("dlq_entries", label(status=s))] for s in DeadLetterStatus} == {
        "active": 2, "retrying": 1, "resolved": 0, "archived": 1}
    assert got[("webhook_queue_depth", label())] == 3
    assert got[("webhook_queue_due", label())] == 2
    pending = {s: got[("webhook_deliveries_pending", label(status=s))]
               for s in ("queued", "running", "retrying")}
    assert pending == {"queued": 2, "running": 0, "retrying": 0}
    assert 119 < got[("webhook_oldest_queued_age_seconds", label())] < 180
    assert got[("observatory_metrics_source_up", label(source="redis"))] == 1
    assert got[("observatory_metrics_source_up", label(source="database"))] == 1


async def test_oldest_age_counts_overdue_retries_but_not_future_ones(db, redis):
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    now = datetime.now(UTC)
    await _queued_delivery(endpoint, 0, status=DeliveryStatus.RETRYING, attempts=1,
                           next_attempt_at=now + timedelta(hours=1))
    assert (await scrape(redis))[("webhook_oldest_queued_age_seconds", label())] == 0

    await _queued_delivery(endpoint, 0, status=DeliveryStatus.RETRYING, attempts=1,
                           next_attempt_at=now - timedelta(seconds=300))
    assert 299 < (await scrape(redis))[("webhook_oldest_queued_age_seconds", label())] < 360


async def test_unreadable_redis_leaves_counters_out_instead_of_zero(db):
    got = await scrape(None)
    assert got[("observatory_metrics_source_up", label(source="redis"))] == 0
    assert got[("observatory_metrics_source_up", label(source="database"))] == 1
    assert not [k for k in got if k[0].startswith(("webhook_delivery", "webhook_retry",
                                                   "webhook_queue"))]
    assert ("dlq_entries", label(status="active")) in got


# jobs.tracing: opentelemetry is not a dependency, so the no-op path is what runs here and in CI.

def test_attempt_span_is_a_shared_noop_without_opentelemetry(monkeypatch):
    monkeypatch.setattr(tracing, "otel_trace", None)
    assert not tracing.tracing_enabled()
    with tracing.attempt_span(7, 2, "https://user:pw@example.com/hook?token=s3cret",
                              job_id="7:2") as span:
        span.set_status(503)
        span.set_outcome("retryable", "server_error")
        span.set_delay(5000)
    span.end()
    assert span is tracing.NOOP_SPAN


def test_attempt_span_is_a_noop_until_a_tracer_provider_is_set():
    # True whether or not the package is installed: this test process sets no provider.
    assert not tracing.tracing_enabled()
    assert tracing.attempt_span(1, 1, "http://127.0.0.1/") is tracing.NOOP_SPAN


def test_noop_attempt_span_lets_errors_through():
    with pytest.raises(TimeoutError), tracing.attempt_span(1, 1, "http://127.0.0.1/"):
        raise TimeoutError


def test_span_urls_carry_no_credentials_or_query_values():
    assert tracing.redact_url("https://user:pw@example.com:8443/hook?token=s3cret&v=1#x") == (
        "https://REDACTED:REDACTED@example.com:8443/hook?token=REDACTED&v=REDACTED")
    assert tracing.redact_url("http://example.com/hook") == "http://example.com/hook"
