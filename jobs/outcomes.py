"""Recording what a batch of attempts came to: Attempt rows, delivery states, retries, the DLQ
and endpoint health — in a few statements per batch, with one round of events."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.expressions import F
from tortoise.transactions import in_transaction

from jobs.attempt import AttemptResult
from jobs.events import publish_events
from jobs.operations import bulk
from jobs.policy import RetryPolicy, policy_for
from jobs.queue import enqueue_delivery
from jobs.tracing import NOOP_SPAN, NoopAttemptSpan
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.delivery_batches import AttemptRow, record_attempts
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus, DeliveryStatus

log = logging.getLogger("observatory.deliver")

#: an endpoint failing without a single success for this long is disabled (Svix: 5 days)
DISABLE_AFTER_FAILING_S = 5 * 24 * 3600.0
#: ... and only after at least this many failed attempts in that run
DISABLE_AFTER_FAILURES = 10
#: failure reasons that describe the endpoint, not the message (they count against its health)
_NOT_ENDPOINT_FAULTS = {"endpoint_disabled", "endpoint_deleted", "aborted_by_receiver"}


@dataclass
class Finished:
    """One delivery's attempt outcome, ready to record."""

    delivery: Delivery
    result: AttemptResult
    attempted: bool = True  # False when refused before any request (no Attempt row)
    #: a bulk delivery whose operation was cancelled while it waited for its endpoint's
    #: slot: handed back and marked `cancelled` already (jobs.deliver), nothing to record
    cancelled: bool = False
    span: NoopAttemptSpan = field(default=NOOP_SPAN)  # jobs.tracing; ended once recorded


def _duration_s(f: Finished) -> float | None:
    """The attempt's duration for the histogram; None when no request went out."""
    return f.result.duration_ms / 1000 if f.attempted and f.result.duration_ms > 0 else None


def _attempt_line(ctx: dict[str, Any], f: Finished, status: DeliveryStatus,
                  delay_s: float | None = None) -> str:
    """The JSON log line of one attempt (a batch's lines are written in one call): the text
    `json.dumps` makes of {event, job_id, delivery_id, endpoint_id, attempt, status, outcome,
    error, duration_ms, delivery_status, delay_ms}, written out directly (json.dumps of a dict
    was ~3% of a worker's CPU; this is a third of its cost). Ids, counts and status codes are
    ints; outcome kinds, failure reasons and statuses are a few fixed codes, encoded once."""
    delivery, result = f.delivery, f.result
    endpoint, outcome, code = delivery.endpoint, result.outcome, result.status_code
    return (f'{{"event": "attempt", "job_id": {_json(ctx.get("job_id"))}, '
            f'"delivery_id": {delivery.id:d}, '
            f'"endpoint_id": {"null" if endpoint is None else format(endpoint.id, "d")}, '
            f'"attempt": {delivery.attempts:d}, '
            f'"status": {"null" if code is None else format(code, "d")}, '
            f'"outcome": {_code(outcome.kind)}, "error": {_code(outcome.reason)}, '
            f'"duration_ms": {_json(round(result.duration_ms, 1))}, '
            f'"delivery_status": {_code(status.value)}, '
            f'"delay_ms": {"null" if delay_s is None else format(round(delay_s * 1000), "d")}}}')


_CODES: dict[str | None, str] = {}


def _code(value: str | None) -> str:
    """A fixed code (outcome kind, failure reason, status) as JSON, encoded once per code."""
    if (text := _CODES.get(value)) is None:
        text = _CODES[value] = _json(value)
    return text


def _json(value: str | int | float | None) -> str:
    """One scalar as json.dumps writes it."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")):
        return json.dumps(value)  # the rare cases: true/false, NaN, Infinity
    return int.__repr__(value) if isinstance(value, int) else float.__repr__(value)


_encode_string = json.encoder.encode_basestring_ascii  # json.dumps's (ensure_ascii) escaping


def _retry_metadata(delivery: Delivery) -> dict[str, Any]:
    return (delivery.metadata or {}).get("__retry_metadata") or {}


def sandbox_overrides(delivery: Delivery) -> dict[str, Any] | None:
    """The overrides of a sandbox retry (url, headers, payload); None for any other delivery."""
    meta = _retry_metadata(delivery)
    return meta.get("overrides", {}) if meta.get("sandbox") else None


def _dlq_id(delivery: Delivery) -> int | None:
    """The DLQ entry a retry re-delivers (a sandbox retry's outcome never touches it)."""
    meta = _retry_metadata(delivery)
    return None if meta.get("sandbox") else meta.get("dead_letter_id")


async def record_outcomes(ctx: dict[str, Any], finished: list[Finished]) -> dict[str, int]:
    """Persist a batch of outcomes; returns counts per resulting status."""
    finished = [f for f in finished if not f.cancelled]
    if not finished:
        return {}
    now = datetime.now(UTC)
    lines: list[str] = []  # the JSON log line of each attempt, written together
    events: list[dict[str, Any]] = []
    counts: dict[str, int] = defaultdict(int)
    # one pass over the batch for the Attempt rows and the successes (the hot path: a
    # fast-lane batch is usually all successes)
    rows: list[AttemptRow] = []
    succeeded: list[Finished] = []
    succeeded_ids: list[int] = []
    by_code: dict[int | None, list[int]] = defaultdict(list)
    resolved: list[int] = []  # DLQ entries whose retries worked
    for f in finished:
        delivery, result = f.delivery, f.result
        outcome = result.outcome
        if f.attempted:
            rows.append((delivery.id, delivery.attempts, result.started_at, result.duration_ms,
                         result.status_code, outcome.kind, outcome.reason,
                         result.error_message, result.excerpt))
        if outcome.ok:
            succeeded.append(f)
            succeeded_ids.append(delivery.id)
            by_code[result.status_code].append(delivery.id)
            if entry_id := _dlq_id(delivery):
                resolved.append(entry_id)
    await record_attempts(rows, by_code, now, resolved)
    changed: dict[str, list[int]] = defaultdict(list)  # one event per resulting status
    if succeeded:
        if resolved:  # one event for the batch: a PUBLISH per entry was most of bulk's Redis
            events.append({"type": "dlq.changed", "ids": resolved, "status": "resolved"})
        counts["succeeded"] = len(succeeded)
        changed["succeeded"] = succeeded_ids
        if (metrics := ctx.get("metrics")) is not None:
            metrics.record_successes([_duration_s(f) for f in succeeded])
        lines = [_attempt_line(ctx, f, DeliveryStatus.SUCCEEDED) for f in succeeded]
    dead: list[int] = []  # DLQ entries made or re-activated by this batch
    for f in finished:
        if f.result.outcome.ok:
            continue
        status, entry_id = await _record_failure(ctx, f, now, lines)
        counts[status.value] += 1
        changed[status.value].append(f.delivery.id)
        if entry_id:
            dead.append(entry_id)
    if dead:
        events.append({"type": "dlq.changed", "ids": dead, "status": "active"})
    if lines:
        log.info("\n".join(lines))
    await _update_health(finished, now)
    if progress := _bulk_progress(finished):  # deliveries of bulk operations: once per batch
        events += await bulk.record_progress(ctx["redis"], *progress)
    events = [{"type": "delivery.updated", "status": status, "ids": ids}
              for status, ids in changed.items()] + events
    await publish_events(ctx["redis"], events)
    for f in finished:
        f.span.end()
    return dict(counts)


def _bulk_progress(finished: list[Finished]) -> tuple[dict[int, tuple[int, int]],
                                                    dict[int, dict[int, float]]] | None:
    """Per bulk operation in the batch: (succeeded, failed), and endpoints that said
    Retry-After (the walker holds them back); None when the batch has none (no I/O)."""
    counts: dict[int, list[int]] = {}
    holds: dict[int, dict[int, float]] = defaultdict(dict)
    for f in finished:
        if (op_id := f.delivery.bulk_operation_id) is None:  # type: ignore[attr-defined]
            continue
        counts.setdefault(op_id, [0, 0])[0 if f.result.outcome.ok else 1] += 1
        if f.result.retry_after_s and f.delivery.endpoint:
            holds[op_id][f.delivery.endpoint.id] = time.time() + f.result.retry_after_s
    if not counts:
        return None
    return {k: (v[0], v[1]) for k, v in counts.items()}, dict(holds)


async def _record_failure(ctx: dict[str, Any], f: Finished, now: datetime,
                          lines: list[str]) -> tuple[DeliveryStatus, int | None]:
    delivery, result = f.delivery, f.result
    endpoint: Endpoint | None = delivery.endpoint
    policy = policy_for(endpoint.retry_config) if endpoint else None
    number = delivery.attempts
    bulk_op = delivery.bulk_operation_id  # type: ignore[attr-defined]
    if sandbox_overrides(delivery) is not None:  # one try, reported, never dead-lettered
        await Delivery.filter(id=delivery.id).update(
            status=DeliveryStatus.FAILED, finished_at=now, last_status_code=result.status_code,
            last_error=result.error_message or result.outcome.reason, updated_at=now)
        if (metrics := ctx.get("metrics")) is not None:
            metrics.record("failed", result.outcome.reason, _duration_s(f))
        lines.append(_attempt_line(ctx, f, DeliveryStatus.FAILED))
        return DeliveryStatus.FAILED, None
    # a bulk retry gets one attempt (its operation's progress must end); others follow the policy
    if (result.outcome.kind == "retryable" and policy and number < policy.max_attempts
            and bulk_op is None):
        delay = policy.delay(number)
        if result.retry_after_s is not None:
            delay = min(max(delay, result.retry_after_s), policy.max_delay)
        await Delivery.filter(id=delivery.id).update(
            status=DeliveryStatus.RETRYING, next_attempt_at=now + timedelta(seconds=delay),
            last_status_code=result.status_code, last_error=result.error_message, updated_at=now)
        await enqueue_delivery(ctx["redis"], delivery.id, number + 1, defer_s=delay)
        f.span.set_delay(delay * 1000)
        if (metrics := ctx.get("metrics")) is not None:
            metrics.record("retrying", result.outcome.reason, _duration_s(f))
            metrics.record_retry()
        lines.append(_attempt_line(ctx, f, DeliveryStatus.RETRYING, delay))
        return DeliveryStatus.RETRYING, None
    reason = result.outcome.reason or "failed"
    if result.outcome.kind == "retryable" and bulk_op is None:
        reason = "max_attempts_exceeded"
    entry_id = await dead_letter(delivery, endpoint, result, policy, reason, _dlq_id(delivery))
    if (metrics := ctx.get("metrics")) is not None:
        metrics.record("failed", reason, _duration_s(f))
    lines.append(_attempt_line(ctx, f, DeliveryStatus.FAILED))
    return DeliveryStatus.FAILED, entry_id


async def dead_letter(delivery: Delivery, endpoint: Endpoint | None, result: AttemptResult,
                      policy: RetryPolicy | None, reason: str, dlq_id: int | None) -> int:
    """Mark the delivery failed and put it in the DLQ (exactly once).

    A failed manual retry re-activates its original entry instead of adding a second one.
    """
    attempts = await Attempt.filter(delivery_id=delivery.id).order_by("number")
    history = [{"attempt": a.number, "at": a.started_at.isoformat(), "status_code": a.status_code,
                "error": a.error_class, "message": a.error_message,
                "duration_ms": round(a.duration_ms, 1)} for a in attempts]
    if not history:  # refused before any request
        history = [{"attempt": 0, "at": result.started_at.isoformat(), "status_code": None,
                    "error": reason, "message": result.error_message, "duration_ms": 0.0}]
    now = datetime.now(UTC)
    async with in_transaction():
        await Delivery.filter(id=delivery.id).update(
            status=DeliveryStatus.FAILED, finished_at=now, last_status_code=result.status_code,
            last_error=result.error_message or reason, updated_at=now)
        if dlq_id:
            # its last_error stays the original delivery's (what `q` searches and the export
            # shows); this retry's error is in error_history and on the retry delivery
            entry = await DeadLetter.get(id=dlq_id)
            await DeadLetter.filter(id=dlq_id).update(
                status=DeadLetterStatus.ACTIVE, failure_reason=reason,
                error_history=[*entry.error_history, *history],
                attempts=entry.attempts + len(attempts), updated_at=now)
            return dlq_id
        entry, _ = await DeadLetter.get_or_create(
            delivery_id=delivery.id,
            defaults={
                "message_id": delivery.message.id, "endpoint": endpoint,
                "endpoint_url": endpoint.url if endpoint else "",
                "failure_reason": reason, "error_history": history, "attempts": len(attempts),
                "policy": policy.model_dump() if policy else {},
                "metadata": {"event_type": delivery.message.event_type},
                # copies the DLQ filters and searches on without a join (as just written)
                "event_type": delivery.message.event_type,
                "last_error": result.error_message or reason,
            },
        )
    return entry.id


async def _update_health(finished: list[Finished], now: datetime) -> None:
    """A success heals its endpoint; failures extend its failing run; 410 or a long run of
    failures disables it (new deliveries then go straight to the DLQ)."""
    healthy: dict[int, Any] = {}  # endpoint id -> the Endpoint the batch loaded
    failing: dict[int, int] = defaultdict(int)
    gone: set[int] = set()
    for f in finished:
        endpoint = f.delivery.endpoint
        if endpoint is None or sandbox_overrides(f.delivery) is not None:
            continue  # a sandbox retry went to another URL: not its endpoint's health
        if f.result.outcome.ok:
            healthy[endpoint.id] = endpoint
        elif not f.attempted:
            continue
        elif f.result.outcome.reason == "endpoint_gone":
            gone.add(endpoint.id)
        elif f.result.outcome.reason not in _NOT_ENDPOINT_FAULTS:
            failing[endpoint.id] += 1
    # only endpoints that were failing when the batch loaded them need healing (a failure
    # recorded since by another batch is healed by the next success): no statement otherwise
    if heal := [i for i, e in healthy.items() if e.consecutive_failures or e.failing_since]:
        await Endpoint.filter(id__in=heal, consecutive_failures__gt=0).update(
            consecutive_failures=0, failing_since=None)
    for endpoint_id, n in failing.items():
        if endpoint_id in healthy:
            continue
        await Endpoint.filter(id=endpoint_id, failing_since=None).update(failing_since=now)
        await Endpoint.filter(id=endpoint_id).update(
            consecutive_failures=F("consecutive_failures") + n)
    cutoff = now - timedelta(seconds=DISABLE_AFTER_FAILING_S)
    if failing:
        await Endpoint.filter(id__in=list(failing), enabled=True, failing_since__lte=cutoff,
                              consecutive_failures__gte=DISABLE_AFTER_FAILURES).update(
            enabled=False, disabled_at=now,
            disabled_reason=f"failing for more than {DISABLE_AFTER_FAILING_S / 86400:g} days")
    if gone:
        await Endpoint.filter(id__in=gone, enabled=True).update(
            enabled=False, disabled_at=now,
            disabled_reason="the receiver answered 410 Gone")
