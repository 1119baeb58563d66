"""The `deliver` job: one signed HTTP attempt of a delivery, its record and what comes next."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import httpx
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from jobs.classify import Outcome, classify_error, classify_status
from jobs.events import publish_events
from jobs.policy import RetryPolicy, policy_for
from jobs.queue import enqueue_delivery
from jobs.signing import signature_headers
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.enums import DeadLetterStatus, DeliveryStatus

log = logging.getLogger("observatory.deliver")

EXCERPT_BYTES = 64 * 1024  # response body kept per attempt; the rest is discarded
ATTEMPT_DEADLINE_S = 30.0  # total per attempt, shorter than the worker's job_timeout


@dataclass
class AttemptResult:
    started_at: datetime
    duration_ms: float
    outcome: Outcome
    status_code: int | None = None
    error_message: str | None = None
    excerpt: str | None = None
    retry_after_s: float | None = None


def webhook_body(message: Any) -> bytes:
    """The JSON body receivers get: type, timestamp and the producer's payload as `data`."""
    return json.dumps({
        "type": message.event_type,
        "timestamp": message.created_at.astimezone(UTC).isoformat(),
        "data": message.payload,
    }, separators=(",", ":")).encode()


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def _read_capped(response: httpx.Response, cap: int = EXCERPT_BYTES) -> bytes:
    body = bytearray()
    async for chunk in response.aiter_raw():
        body.extend(chunk[: cap - len(body)])
        if len(body) >= cap:
            break
    return bytes(body)


async def post_once(client: httpx.AsyncClient, url: str, body: bytes,
                    headers: dict[str, str], deadline_s: float = ATTEMPT_DEADLINE_S) -> AttemptResult:
    """POST once with a total deadline; never raises for receiver or network failures."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(deadline_s):
            request = client.build_request("POST", url, content=body, headers={
                "content-type": "application/json", **headers})
            response = await client.send(request, stream=True)
            try:
                raw = await _read_capped(response)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as exc:
        if isinstance(exc.__cause__, aiohttp.ClientConnectorError):
            # httpx-aiohttp 0.2 maps a refused connection to ConnectTimeout; it is not one.
            return _failed(started, t0, "connection_error", str(exc.__cause__))
        return _failed(started, t0, "timeout", f"no complete response within the deadline: {exc!r}")
    except httpx.UnsupportedProtocol as exc:
        return _failed(started, t0, "invalid_url", str(exc))
    except httpx.ConnectError as exc:
        return _failed(started, t0, "connection_error", str(exc) or repr(exc))
    except httpx.HTTPError as exc:
        return _failed(started, t0, "network_error", str(exc) or repr(exc))
    outcome = classify_status(response.status_code)
    retry_after = None
    if response.status_code in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
    return AttemptResult(
        started_at=started, duration_ms=(time.perf_counter() - t0) * 1000, outcome=outcome,
        status_code=response.status_code, excerpt=raw.decode("utf-8", "replace"),
        error_message=None if outcome.ok else f"HTTP {response.status_code}",
        retry_after_s=retry_after,
    )


def _failed(started: datetime, t0: float, error_class: str, message: str) -> AttemptResult:
    return AttemptResult(started_at=started, duration_ms=(time.perf_counter() - t0) * 1000,
                         outcome=classify_error(error_class), error_message=message)


async def deliver(ctx: dict[str, Any], delivery_id: int) -> str:
    """arq job: make the next attempt of `delivery_id` and decide what follows.

    Claims the delivery with a compare-and-set (queued/retrying → running), so a duplicate job
    delivers nothing twice. Returns the delivery's new status.
    """
    claimed = await Delivery.filter(
        id=delivery_id, status__in=[DeliveryStatus.QUEUED, DeliveryStatus.RETRYING]
    ).update(status=DeliveryStatus.RUNNING, attempts=F("attempts") + 1,
             updated_at=datetime.now(UTC))
    if not claimed:
        return "skipped"
    try:
        return await _attempt(ctx, delivery_id)
    except asyncio.CancelledError:
        # Worker shutting down mid-attempt: hand the delivery back so arq's re-run (or the
        # reconciler) takes it again. The receiver may have got it: at-least-once.
        await asyncio.shield(release_claim(delivery_id))
        raise


async def release_claim(delivery_id: int) -> bool:
    """Undo a claim: running → queued/retrying with the interrupted try not counted."""
    delivery = await Delivery.get_or_none(id=delivery_id, status=DeliveryStatus.RUNNING)
    if delivery is None:
        return False
    attempts = max(delivery.attempts - 1, 0)
    status = DeliveryStatus.RETRYING if attempts else DeliveryStatus.QUEUED
    return bool(await Delivery.filter(id=delivery_id, status=DeliveryStatus.RUNNING,
                                      attempts=delivery.attempts).update(
        status=status, attempts=attempts, updated_at=datetime.now(UTC)))


async def _attempt(ctx: dict[str, Any], delivery_id: int) -> str:
    delivery = await Delivery.get(id=delivery_id).select_related("message", "endpoint")
    redis = ctx["redis"]
    await publish_events(redis, [{"type": "delivery.updated", "id": delivery_id, "status": "running"}])
    endpoint = delivery.endpoint
    if endpoint is None:
        return await _finish(ctx, delivery, None, _no_attempt("endpoint_deleted"), None)
    policy = policy_for(endpoint.retry_config)
    body = webhook_body(delivery.message)
    headers = signature_headers([endpoint.secret], f"msg_{delivery.message.id}",
                                int(time.time()), body)
    result = await post_once(ctx["http"], endpoint.url, body, headers)
    log.info(json.dumps({"event": "attempt", "job_id": ctx.get("job_id"), "delivery_id": delivery_id,
                         "attempt": delivery.attempts, "status": result.status_code,
                         "outcome": result.outcome.kind, "error": result.outcome.reason,
                         "duration_ms": round(result.duration_ms, 1)}))
    return await _finish(ctx, delivery, endpoint, result, policy)


def _no_attempt(reason: str) -> AttemptResult:
    return AttemptResult(started_at=datetime.now(UTC), duration_ms=0.0,
                         outcome=Outcome("final", reason), error_message=reason)


async def _finish(ctx: dict[str, Any], delivery: Delivery, endpoint: Any,
                  result: AttemptResult, policy: RetryPolicy | None) -> str:
    number = delivery.attempts
    await Attempt.create(
        delivery=delivery, number=number, started_at=result.started_at,
        duration_ms=result.duration_ms, status_code=result.status_code,
        outcome=result.outcome.kind, error_class=result.outcome.reason,
        error_message=result.error_message, response_excerpt=result.excerpt,
    )
    now = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    dlq_id = (delivery.metadata or {}).get("__retry_metadata", {}).get("dead_letter_id")
    if result.outcome.ok:
        status = DeliveryStatus.SUCCEEDED
        await Delivery.filter(id=delivery.id).update(
            status=status, finished_at=now, last_status_code=result.status_code, last_error=None,
            updated_at=now)
        if dlq_id:
            await DeadLetter.filter(id=dlq_id, status=DeadLetterStatus.RETRYING).update(
                status=DeadLetterStatus.RESOLVED, resolved_at=now, updated_at=now)
            events.append({"type": "dlq.changed", "id": dlq_id, "status": "resolved"})
    elif result.outcome.kind == "retryable" and policy and number < policy.max_attempts:
        status = DeliveryStatus.RETRYING
        delay = policy.delay(number)
        if result.retry_after_s is not None:
            delay = min(max(delay, result.retry_after_s), policy.max_delay)
        await Delivery.filter(id=delivery.id).update(
            status=status, next_attempt_at=now + timedelta(seconds=delay),
            last_status_code=result.status_code, last_error=result.error_message, updated_at=now)
        await enqueue_delivery(ctx["redis"], delivery.id, number + 1, defer_s=delay)
    else:
        status = DeliveryStatus.FAILED
        reason = result.outcome.reason or "failed"
        if result.outcome.kind == "retryable":
            reason = "max_attempts_exceeded"
        entry_id = await _dead_letter(delivery, endpoint, result, policy, reason, dlq_id)
        events.append({"type": "dlq.changed", "id": entry_id, "status": "active"})
    events.insert(0, {"type": "delivery.updated", "id": delivery.id, "status": status.value})
    await publish_events(ctx["redis"], events)
    return status.value


async def _dead_letter(delivery: Delivery, endpoint: Any, result: AttemptResult,
                       policy: RetryPolicy | None, reason: str, dlq_id: int | None) -> int:
    """Mark the delivery failed and put it in the DLQ (exactly once).

    A failed manual retry re-activates its original entry instead of adding a second one.
    """
    attempts = await Attempt.filter(delivery_id=delivery.id).order_by("number")
    history = [{"attempt": a.number, "at": a.started_at.isoformat(), "status_code": a.status_code,
                "error": a.error_class, "message": a.error_message,
                "duration_ms": round(a.duration_ms, 1)} for a in attempts]
    now = datetime.now(UTC)
    async with in_transaction():
        await Delivery.filter(id=delivery.id).update(
            status=DeliveryStatus.FAILED, finished_at=now, last_status_code=result.status_code,
            last_error=result.error_message or reason, updated_at=now)
        if dlq_id:
            entry = await DeadLetter.get(id=dlq_id)
            await DeadLetter.filter(id=dlq_id).update(
                status=DeadLetterStatus.ACTIVE, failure_reason=reason,
                error_history=[*entry.error_history, *history],
                attempts=entry.attempts + len(history), updated_at=now)
            return dlq_id
        entry, _ = await DeadLetter.get_or_create(
            delivery_id=delivery.id,
            defaults={
                "message_id": delivery.message.id, "endpoint": endpoint,
                "endpoint_url": endpoint.url if endpoint else "",
                "failure_reason": reason, "error_history": history, "attempts": len(history),
                "policy": policy.model_dump() if policy else {},
                "metadata": {"event_type": delivery.message.event_type},
            },
        )
    return entry.id


STALE_RUNNING_S = ATTEMPT_DEADLINE_S + 90  # past arq's job_timeout + in-progress key expiry


async def recover_stale_running(ctx: dict[str, Any], older_than_s: float = STALE_RUNNING_S) -> int:
    """Deliveries stuck `running` (their worker was killed): count the lost try, then retry or
    dead-letter them through the normal path (exactly once: the claim below is a CAS).

    arq never calls us for a job whose last try was killed, so this is the only way out.
    """
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than_s)
    recovered = 0
    for delivery in await Delivery.filter(status=DeliveryStatus.RUNNING, updated_at__lt=cutoff
                                          ).select_related("message", "endpoint"):
        taken = await Delivery.filter(id=delivery.id, status=DeliveryStatus.RUNNING,
                                      updated_at__lt=cutoff).update(updated_at=now)
        if not taken:
            continue
        lost = AttemptResult(started_at=delivery.updated_at, duration_ms=0.0,
                             outcome=Outcome("retryable", "worker_lost"),
                             error_message="the worker stopped during this attempt")
        endpoint = delivery.endpoint
        await _finish(ctx, delivery, endpoint, lost,
                      policy_for(endpoint.retry_config) if endpoint else None)
        recovered += 1
    return recovered
