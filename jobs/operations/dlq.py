"""DLQ single-entry operations (status, archive, delete), statistics, detail and export.

Statistics live in jobs.operations.dlq_stats (one statement, one snapshot); `stats` is
re-exported here, where every surface calls it.

The one place these rules live: the REST routes, the CLI and the dashboard call these
functions. Every change is a compare-and-set (`UPDATE … WHERE status = <what we read>`), so of
two concurrent changes exactly one applies; it writes one audit row in the same transaction and
publishes a `dlq.changed` event. A refused action raises a `jobs.errors` error and changes
nothing.

Legal status changes (`TRANSITIONS`); `retrying` is entered only by a retry:

    active   → resolved | archived   operator closes the entry, with or without fixing it
    retrying → active                operator un-sticks a retry that never came back
    resolved → archived              tidy away
    archived → active                unarchive

`OBSERVATORY_REQUIRE_REASON` (truthy: 1, true, yes, on) makes a non-empty reason mandatory for
the destructive actions here: archive (also through set_status) and delete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, TypedDict

from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from jobs import audit
from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.events import publish_events
from jobs.operations.dlq_stats import DlqStats, EndpointCount, stats  # noqa: F401 (re-exported)
from jobs.operations.reasons import check_reason
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import DlqFilter, reading, select
from models.enums import DeadLetterStatus, DeliveryStatus
from models.queries import DeadLetterDetail, DeadLetterRow, get_dead_letter, get_dead_letter_detail

S = DeadLetterStatus
TRANSITIONS: dict[DeadLetterStatus, frozenset[DeadLetterStatus]] = {
    S.ACTIVE: frozenset({S.RESOLVED, S.ARCHIVED}),
    S.RETRYING: frozenset({S.ACTIVE}),
    S.RESOLVED: frozenset({S.ARCHIVED}),
    S.ARCHIVED: frozenset({S.ACTIVE}),
}
EXPORT_PAGE = 500


class ExportRow(TypedDict):
    id: int
    status: str
    event_type: str
    app_id: int
    endpoint_id: int | None
    endpoint_url: str
    failure_reason: str
    last_error: str | None
    attempts: int
    retry_count: int
    delivery_id: int
    message_id: int
    last_retry_delivery_id: int | None
    created_at: str
    updated_at: str
    resolved_at: str | None
    payload: Any


async def _entry(entry_id: int) -> DeadLetter:
    entry = await DeadLetter.get_or_none(id=entry_id)
    if entry is None:
        raise NotFoundError(f"DLQ entry {entry_id} does not exist")
    return entry


def _illegal(entry_id: int, current: DeadLetterStatus, wanted: DeadLetterStatus) -> ConflictError:
    allowed = sorted(s.value for s in TRANSITIONS[current])
    return ConflictError(
        f"DLQ entry {entry_id} is {current.value}; it cannot become {wanted.value} "
        f"(from {current.value} it may become: {', '.join(allowed) or 'nothing'})",
        {"current": current.value, "requested": wanted.value, "allowed": allowed})


async def set_status(entry_id: int, status: DeadLetterStatus | str, actor: str, *,
                     reason: str | None = None, redis: Redis,
                     action: str = "dlq.status") -> DeadLetterRow:
    """Move an entry to `status` along a legal transition (see TRANSITIONS).

    Resolving stamps `resolved_at`; unarchiving clears it. Un-sticking a `retrying` entry
    cancels its retry delivery if that has not started (so no duplicate arrives later).

    Raises:
        ValidationError: unknown status, or a missing reason while one is required.
        NotFoundError: no such entry.
        ConflictError: the transition is not allowed from the entry's current status, or the
            entry changed concurrently, or its retry is being delivered right now.
    """
    try:
        wanted = DeadLetterStatus(status)
    except ValueError as exc:
        allowed = ", ".join(s.value for s in DeadLetterStatus)
        raise ValidationError(f"status: must be one of {allowed}", {"fields": [
            {"field": "status", "rule": "enum", "message": f"must be one of {allowed}"}]}) from exc
    reason = check_reason(reason, destructive=wanted == S.ARCHIVED)
    entry = await _entry(entry_id)
    current = entry.status
    if wanted not in TRANSITIONS[current]:
        raise _illegal(entry_id, current, wanted)
    now = datetime.now(UTC)
    changes: dict[str, Any] = {"status": wanted, "updated_at": now}
    if wanted == S.RESOLVED:
        changes["resolved_at"] = now
    elif current == S.ARCHIVED:
        changes["resolved_at"] = None
    details: dict[str, Any] = {"from": current.value, "to": wanted.value, "reason": reason}
    async with in_transaction():
        if not await DeadLetter.filter(id=entry_id, status=current).update(**changes):
            raise await _changed_meanwhile(entry_id, current, wanted)
        if current == S.RETRYING:
            details["cancelled_delivery_id"] = await _cancel_pending_retry(entry)
        await audit.record(actor, action, "dead_letter", entry_id, **details)
    events = [{"type": "dlq.changed", "id": entry_id, "status": wanted.value}]
    if details.get("cancelled_delivery_id"):
        events.append({"type": "delivery.updated", "id": details["cancelled_delivery_id"],
                       "status": DeliveryStatus.CANCELLED.value})
    await publish_events(redis, events)
    row = await get_dead_letter(entry_id)
    assert row is not None
    return row


async def _changed_meanwhile(entry_id: int, was: DeadLetterStatus,
                             wanted: DeadLetterStatus) -> Exception:
    """The error for a lost compare-and-set: someone changed (or deleted) the entry since."""
    now = await DeadLetter.get_or_none(id=entry_id).values_list("status", flat=True)
    if now is None:
        return NotFoundError(f"DLQ entry {entry_id} does not exist")
    error = _illegal(entry_id, DeadLetterStatus(now), wanted)
    error.message = f"{error.message}; it changed from {was.value} meanwhile"
    error.args = (error.message,)
    return error


async def _cancel_pending_retry(entry: DeadLetter) -> int | None:
    """Cancel the entry's retry delivery if it has not started; refuse while it is running."""
    delivery_id = entry.last_retry_delivery_id  # type: ignore[attr-defined]
    if delivery_id is None:
        return None
    now = datetime.now(UTC)
    if await Delivery.filter(id=delivery_id, status__in=[
            DeliveryStatus.QUEUED, DeliveryStatus.RETRYING]).update(
            status=DeliveryStatus.CANCELLED, finished_at=now, updated_at=now):
        return int(delivery_id)
    if await Delivery.exists(id=delivery_id, status=DeliveryStatus.RUNNING):
        raise ConflictError(
            f"DLQ entry {entry.id}: its retry (delivery {delivery_id}) is being delivered "
            "right now; wait for it to finish", {"delivery_id": delivery_id})
    return None


async def archive(entry_id: int, actor: str, *, reason: str | None = None,
                  redis: Redis) -> DeadLetterRow:
    """Archive an entry (from active or resolved); see set_status for the errors."""
    return await set_status(entry_id, S.ARCHIVED, actor, reason=reason, redis=redis,
                            action="dlq.archive")


async def delete(entry_id: int, actor: str, *, reason: str | None = None,
                 redis: Redis) -> int:
    """Delete an entry for good; the audit row keeps its key facts. Returns the id.

    The failed delivery and its message stay (they are the delivery log).

    Raises:
        ValidationError: a missing reason while one is required.
        NotFoundError: no such entry.
        ConflictError: a retry of the entry is in flight (it reports back to the entry).
    """
    reason = check_reason(reason, destructive=True)
    entry = await _entry(entry_id)
    await entry.fetch_related("message")
    facts = {
        "reason": reason, "status": entry.status.value, "delivery_id": entry.delivery_id,  # type: ignore[attr-defined]
        "message_id": entry.message_id, "endpoint_id": entry.endpoint_id,  # type: ignore[attr-defined]
        "endpoint_url": entry.endpoint_url, "event_type": entry.message.event_type,
        "failure_reason": entry.failure_reason, "attempts": entry.attempts,
        "retry_count": entry.retry_count, "created_at": entry.created_at.isoformat(),
    }
    async with in_transaction():
        gone = await DeadLetter.filter(id=entry_id).exclude(status=S.RETRYING).delete()
        if not gone:
            now = await DeadLetter.get_or_none(id=entry_id).values_list("status", flat=True)
            if now is None:
                raise NotFoundError(f"DLQ entry {entry_id} does not exist")
            raise ConflictError(
                f"DLQ entry {entry_id} is retrying; it cannot be deleted while its retry is in "
                "flight (wait for it, or set it back to active first)",
                {"current": str(now), "requested": "deleted"})
        await audit.record(actor, "dlq.delete", "dead_letter", entry_id, **facts)
    await publish_events(redis, [{"type": "dlq.changed", "id": entry_id, "status": "deleted"}])
    return entry_id


async def entry_detail(entry_id: int) -> DeadLetterDetail:
    """The entry with its payload, error history, policy, metadata and the attempts of the
    original delivery and of the last retry.

    Raises:
        NotFoundError: no such entry.
    """
    detail = await get_dead_letter_detail(entry_id)
    if detail is None:
        raise NotFoundError(f"DLQ entry {entry_id} does not exist")
    return detail


async def export_rows(f: DlqFilter, *, page: int = EXPORT_PAGE) -> AsyncIterator[ExportRow]:
    """Every entry matching `f` (with `f.status` unset: active and retrying, as listed), oldest
    first by id, fetched `page` at a time so memory stays flat however many there are.

    The selection is frozen at the first page: entries dead-lettered during the export are left
    out (they have higher ids), so the file is one consistent snapshot.
    """
    newest = await DeadLetter.all().order_by("-id").limit(1).values_list("id", flat=True)
    if not newest:
        return
    bound = min(newest[0], f.max_id or newest[0])
    query = select(f.model_copy(update={"max_id": bound}), default_statuses=True)
    after = 0
    while True:
        async with reading(f) as conn:
            entries = await query.filter(id__gt=after).order_by("id").limit(
                page).select_related("message", "delivery").using_db(conn)
        for entry in entries:
            yield _export_row(entry)
        if len(entries) < page:
            return
        after = entries[-1].id


def _export_row(entry: DeadLetter) -> ExportRow:
    def iso(value: datetime | None) -> str | None:
        return value.astimezone(UTC).isoformat() if value else None

    return ExportRow(
        id=entry.id, status=entry.status.value, event_type=entry.message.event_type,
        app_id=entry.message.app_id,  # type: ignore[attr-defined]
        endpoint_id=entry.endpoint_id,  # type: ignore[attr-defined]
        endpoint_url=entry.endpoint_url, failure_reason=entry.failure_reason,
        last_error=entry.delivery.last_error, attempts=entry.attempts,
        retry_count=entry.retry_count, delivery_id=entry.delivery_id,  # type: ignore[attr-defined]
        message_id=entry.message_id,  # type: ignore[attr-defined]
        last_retry_delivery_id=entry.last_retry_delivery_id,  # type: ignore[attr-defined]
        created_at=iso(entry.created_at) or "", updated_at=iso(entry.updated_at) or "",
        resolved_at=iso(entry.resolved_at), payload=entry.message.payload)
