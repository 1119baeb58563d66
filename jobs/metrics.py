"""Fleet-wide delivery metrics: per-worker accumulators flushed to Redis, read back at scrape time.

Workers count in memory (`DeliveryMetrics.record`, pure Python) and add their counts to Redis
in one pipeline per flush (`DeliveryMetrics.flush`: every second while anything was recorded,
and once more at shutdown; see `start_flushing`/`stop_flushing`), so any web process can
expose the whole fleet's totals: `read_fleet_metrics` gathers Redis
counters, the arq queue and the database's gauges; `FleetCollector` turns that into
prometheus-client metric families.

Redis layout (`ns` = models.config.get_settings().namespace; no TTL, counters only grow):
    {ns}:metrics:deliveries  hash    '["failed","server_error"]' -> count  (JSON [outcome, reason])
    {ns}:metrics:retries     string  retries scheduled
    {ns}:metrics:duration    hash    'le:0.25' -> observations in that bucket alone (not
                                     cumulative), 'sum' -> seconds observed
    {ns}:metrics:cron_missed hash    job name -> cron ticks recorded missed (jobs.cron_watch)
    {ns}:metrics:cron_drift  hash    job name -> seconds its last run started after its tick
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString
from redis.asyncio import Redis
from tortoise.functions import Count

from jobs.queue import queue_name
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.enums import DeadLetterStatus, DeliveryStatus

log = logging.getLogger("observatory.metrics")

OUTCOMES = (DeliveryStatus.SUCCEEDED.value, DeliveryStatus.RETRYING.value,
            DeliveryStatus.FAILED.value)
# Attempt durations in seconds; the last finite bound is jobs.attempt.ATTEMPT_DEADLINE_S.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
FLUSH_INTERVAL_S = 1.0
_PENDING = (DeliveryStatus.QUEUED, DeliveryStatus.RUNNING, DeliveryStatus.RETRYING)


@dataclass(frozen=True)
class MetricKeys:
    deliveries: str
    retries: str
    duration: str


def cron_metric_keys() -> tuple[str, str]:
    """(missed, drift): the Redis hashes of the cron metrics, keyed by job name."""
    prefix = f"{get_settings().namespace}:metrics"
    return f"{prefix}:cron_missed", f"{prefix}:cron_drift"


async def count_cron_missed(redis: Redis, job: str, n: int = 1) -> None:
    """Count `n` ticks of `job` recorded missed (a counter: pruning runs never lowers it)."""
    await redis.hincrby(cron_metric_keys()[0], job, n)


async def note_cron_drift(redis: Redis, job: str, drift_s: float) -> None:
    """Keep how late `job`'s latest run started after its tick."""
    await redis.hset(cron_metric_keys()[1], job, f"{max(drift_s, 0.0):.6f}")


def metric_keys() -> MetricKeys:
    """The Redis keys of the fleet's counters, in this instance's namespace."""
    prefix = f"{get_settings().namespace}:metrics"
    return MetricKeys(f"{prefix}:deliveries", f"{prefix}:retries", f"{prefix}:duration")


@dataclass
class _Counts:
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)
    retries: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    duration_sum: float = 0.0


_SUCCEEDED = ("succeeded", "")  # the outcome key of a success


class DeliveryMetrics:
    """One worker process's counts since its last flush. Not thread-safe; asyncio-safe."""

    def __init__(self) -> None:
        self._counts = _Counts()

    @property
    def pending(self) -> bool:
        """Whether anything was recorded since the last flush."""
        c = self._counts
        return bool(c.outcomes or c.retries or any(c.buckets))

    def record(self, outcome: str, reason: str | None = None,
               duration_s: float | None = None) -> None:
        """Count one delivery attempt's outcome and, when an HTTP try was made, its duration.

        Args:
            outcome: the delivery's status after the attempt: succeeded, retrying or failed.
            reason: the stable failure reason code (`server_error`, `max_attempts_exceeded`…),
                None on success. Keep it to a closed set: each value is a time series.
            duration_s: the attempt's duration; None when no request was sent.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        key = (outcome, reason or "")
        outcomes = self._counts.outcomes
        outcomes[key] = outcomes.get(key, 0) + 1
        if duration_s is not None:
            self.observe(duration_s)

    def record_successes(self, durations_s: Sequence[float | None]) -> None:
        """`record("succeeded", None, d)` for each of a batch's `durations_s`, in one call."""
        if not durations_s:
            return
        outcomes = self._counts.outcomes
        outcomes[_SUCCEEDED] = outcomes.get(_SUCCEEDED, 0) + len(durations_s)
        for duration_s in durations_s:
            if duration_s is not None:
                self.observe(duration_s)

    def observe(self, duration_s: float) -> None:
        """Add one attempt duration (seconds) to the histogram."""
        duration_s = max(duration_s, 0.0)
        self._counts.buckets[bisect_left(DURATION_BUCKETS, duration_s)] += 1
        self._counts.duration_sum += duration_s

    def record_retry(self, count: int = 1) -> None:
        """Count retries scheduled (a delivery's next try enqueued after a retryable failure)."""
        self._counts.retries += count

    async def flush(self, redis: Redis) -> bool:
        """Add everything recorded since the last flush to Redis in one pipeline, then reset.

        One round trip whatever was recorded; none when nothing was. On failure the counts are
        kept for the next flush (a reply lost after Redis applied them would count them twice).

        Returns:
            Whether anything was written.
        """
        if not self.pending:
            return False
        # Swap before awaiting: what is recorded meanwhile goes to the next flush.
        taken, self._counts = self._counts, _Counts()
        keys = metric_keys()
        try:
            async with redis.pipeline(transaction=True) as pipe:
                for (outcome, reason), n in taken.outcomes.items():
                    pipe.hincrby(keys.deliveries, json.dumps([outcome, reason]), n)
                if taken.retries:
                    pipe.incrby(keys.retries, taken.retries)
                for bound, n in zip(DURATION_BUCKETS, taken.buckets, strict=True):
                    if n:
                        pipe.hincrby(keys.duration, f"le:{floatToGoString(bound)}", n)
                if taken.duration_sum:
                    pipe.hincrbyfloat(keys.duration, "sum", taken.duration_sum)
                await pipe.execute()
        except BaseException:
            self._merge(taken)
            raise
        return True

    def _merge(self, other: _Counts) -> None:
        c = self._counts
        for key, n in other.outcomes.items():
            c.outcomes[key] = c.outcomes.get(key, 0) + n
        c.retries += other.retries
        c.buckets = [a + b for a, b in zip(c.buckets, other.buckets, strict=True)]
        c.duration_sum += other.duration_sum


async def flush_loop(redis: Redis, metrics: DeliveryMetrics,
                     interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Flush `metrics` every `interval_s` until cancelled; failures are logged and retried.

    At most one round trip per interval per worker, however many deliveries it makes.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            await metrics.flush(redis)
        except Exception:  # noqa: BLE001 - metrics must never kill the worker
            log.exception("flushing delivery metrics to Redis failed; kept for the next flush")


def start_flushing(ctx: dict[str, Any], interval_s: float = FLUSH_INTERVAL_S) -> DeliveryMetrics:
    """Worker start-up: `ctx["metrics"]` (kept if already there) and its flush loop."""
    metrics: DeliveryMetrics = ctx.setdefault("metrics", DeliveryMetrics())
    ctx["metrics_flusher"] = asyncio.create_task(flush_loop(ctx["redis"], metrics, interval_s))
    return metrics


async def stop_flushing(ctx: dict[str, Any]) -> None:
    """Worker shutdown, once no more outcomes will be recorded: stop the loop, flush the rest."""
    if task := ctx.pop("metrics_flusher", None):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if (metrics := ctx.get("metrics")) is not None:
        try:
            await metrics.flush(ctx["redis"])
        except Exception:  # noqa: BLE001 - shutting down: report, do not raise
            log.exception("final flush of delivery metrics failed; its counts are lost")


@dataclass
class FleetSnapshot:
    """What /metrics reports, read in one go; None where its source could not be read."""

    outcomes: dict[tuple[str, str], int] | None = None
    retries: int | None = None
    buckets: list[int] | None = None  # per bound of DURATION_BUCKETS, not cumulative
    duration_sum: float | None = None
    queue_depth: int | None = None
    queue_due: int | None = None
    dlq: dict[str, int] | None = None
    pending: dict[str, int] | None = None  # deliveries queued, running, retrying
    oldest_queued_age_s: float | None = None
    cron_missed: dict[str, int] | None = None  # per cron job
    cron_drift: dict[str, float] | None = None  # per cron job, seconds (its latest run)
    sources: dict[str, bool] = field(default_factory=dict)


async def read_fleet_metrics(redis: Redis | None, now: datetime | None = None) -> FleetSnapshot:
    """The fleet's counters and the queue from Redis, the DLQ and waiting work from the DB.

    A source that fails is reported down (`observatory_metrics_source_up`) and its metrics are
    left out rather than shown as zero, which Prometheus would read as a counter reset.
    """
    now = now or datetime.now(UTC)
    snapshot = FleetSnapshot()
    for source, read in (("redis", _read_redis), ("database", _read_database)):
        try:
            await read(snapshot, redis, now)
            snapshot.sources[source] = True
        except Exception:  # noqa: BLE001 - reported as a metric, the scrape goes on
            log.warning("metrics: reading %s failed", source, exc_info=True)
            snapshot.sources[source] = False
    return snapshot


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _read_redis(snapshot: FleetSnapshot, redis: Redis | None, now: datetime) -> None:
    if redis is None:
        raise ConnectionError("no Redis connection")
    keys = metric_keys()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.deliveries)
        pipe.get(keys.retries)
        pipe.hgetall(keys.duration)
        pipe.zcard(queue_name())
        # arq scores jobs with round(time * 1000): compare with the same rounding, read now
        pipe.zcount(queue_name(), "-inf", round(time.time() * 1000))
        for key in cron_metric_keys():
            pipe.hgetall(key)
        outcomes, retries, duration, depth, due, missed, drift = await pipe.execute()
    snapshot.cron_missed = {_text(k): int(v) for k, v in missed.items()}
    snapshot.cron_drift = {_text(k): float(v) for k, v in drift.items()}
    snapshot.outcomes = {}
    for raw_field, n in outcomes.items():
        outcome, reason = json.loads(_text(raw_field))
        snapshot.outcomes[(outcome, reason)] = int(n)
    snapshot.retries = int(retries or 0)
    snapshot.buckets = [0] * len(DURATION_BUCKETS)
    snapshot.duration_sum = 0.0
    for raw_field, value in duration.items():
        name = _text(raw_field)
        if name == "sum":
            snapshot.duration_sum = float(value)
        elif name.startswith("le:"):  # a bound no longer configured joins the next one up
            snapshot.buckets[bisect_left(DURATION_BUCKETS, float(name[3:]))] += int(value)
    snapshot.queue_depth, snapshot.queue_due = int(depth), int(due)


async def _read_database(snapshot: FleetSnapshot, redis: Redis | None, now: datetime) -> None:
    dlq = await _count_by_status(DeadLetter.all(), DeadLetterStatus, tuple(DeadLetterStatus))
    pending = await _count_by_status(Delivery.filter(status__in=_PENDING), DeliveryStatus,
                                     _PENDING)
    # Waiting = queued (first try) since created_at, or retrying whose due time has passed.
    queued = await Delivery.filter(status=DeliveryStatus.QUEUED).order_by(
        "created_at").limit(1).values_list("created_at", flat=True)
    overdue = await Delivery.filter(status=DeliveryStatus.RETRYING, next_attempt_at__lte=now
                                    ).order_by("next_attempt_at").limit(1).values_list(
        "next_attempt_at", flat=True)
    since = [_aware(t) for t in (*queued, *overdue) if t is not None]
    snapshot.dlq, snapshot.pending = dlq, pending
    snapshot.oldest_queued_age_s = max(0.0, (now - min(since)).total_seconds()) if since else 0.0


async def _count_by_status(query: Any, enum: type[StrEnum], statuses: tuple[StrEnum, ...]
                           ) -> dict[str, int]:
    rows = await query.annotate(n=Count("id")).group_by("status").values_list("status", "n")
    counts = {status.value: 0 for status in statuses}
    counts.update({enum(status).value: int(n) for status, n in rows})
    return counts


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class FleetCollector:
    """A prometheus-client collector over one `FleetSnapshot` (register it per scrape)."""

    def __init__(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        if s.outcomes is not None:
            yield _labelled(CounterMetricFamily(
                "webhook_delivery_total", "Delivery attempts by the delivery's resulting status "
                "and failure reason, across all workers.", labels=["outcome", "reason"]),
                sorted(s.outcomes.items()))
        if s.retries is not None:
            yield CounterMetricFamily("webhook_retry_total", "Retries scheduled by the retry "
                                      "policy, across all workers.", value=s.retries)
        if s.buckets is not None:
            yield _histogram(s.buckets, s.duration_sum or 0.0)
        if s.queue_depth is not None:
            yield GaugeMetricFamily(
                "webhook_queue_depth", "Jobs in the arq delivery queue, deferred retries and "
                "running jobs included (a fast-lane job carries up to 50 deliveries).",
                value=s.queue_depth)
            yield GaugeMetricFamily("webhook_queue_due", "Jobs in the arq delivery queue whose "
                                    "time has come (running ones included).", value=s.queue_due)
        yield from self._cron_metrics()
        yield from self._database_gauges()
        yield _labelled(GaugeMetricFamily(
            "observatory_metrics_source_up", "Whether this scrape could read the source (1) or "
            "left its metrics out (0).", labels=["source"]),
            [((source,), float(ok)) for source, ok in s.sources.items()])

    def _cron_metrics(self) -> Iterator[Metric]:
        s = self.snapshot
        if s.cron_missed is not None:
            yield _labelled(CounterMetricFamily(
                "observatory_cron_missed", "Cron ticks that did not start within their grace "
                "window (recorded `missed`), by job.", labels=["job"]),
                [((job,), n) for job, n in sorted(s.cron_missed.items())])
        if s.cron_drift is not None:
            yield _labelled(GaugeMetricFamily(
                "observatory_cron_drift_seconds", "How late the latest run of each cron job "
                "started after its scheduled tick.", labels=["job"]),
                [((job,), v) for job, v in sorted(s.cron_drift.items())])

    def _database_gauges(self) -> Iterator[Metric]:
        s = self.snapshot
        if s.dlq is not None:
            yield _labelled(GaugeMetricFamily("dlq_entries", "Dead-letter entries by status.",
                                              labels=["status"]),
                            [((status,), n) for status, n in s.dlq.items()])
        if s.pending is not None:
            yield _labelled(GaugeMetricFamily(
                "webhook_deliveries_pending", "Deliveries not finished, by status (from the "
                "database).", labels=["status"]),
                [((status,), n) for status, n in s.pending.items()])
        if s.oldest_queued_age_s is not None:
            yield GaugeMetricFamily(
                "webhook_oldest_queued_age_seconds", "Age of the longest-waiting delivery: queued "
                "since creation, or retrying past its due time (0 when none waits).",
                value=s.oldest_queued_age_s)


def _labelled(family: Any, values: Any) -> Metric:
    for labels, value in values:
        family.add_metric(list(labels), value)
    return family


def _histogram(buckets: list[int], duration_sum: float) -> HistogramMetricFamily:
    cumulative: list[Any] = []
    total = 0
    for bound, n in zip(DURATION_BUCKETS, buckets, strict=True):
        total += n
        cumulative.append((floatToGoString(bound), total))
    return HistogramMetricFamily(
        "webhook_delivery_duration_seconds", "Duration of delivery attempts (HTTP tries), "
        "across all workers.", buckets=cumulative, sum_value=duration_sum)
