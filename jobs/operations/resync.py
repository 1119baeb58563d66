"""Force re-sync of an endpoint: re-deliver every message it ever received (a Delivery row
exists for it), or those published since a date, as NEW deliveries — a bulk operation on the
bulk lane (paced, pausable, cancellable, live progress; see jobs.operations.bulk).

    start_resync ─► frozen scope {endpoint_id, since?, max_id} + BulkOperation (kind resync)
        + ONE audit row (`endpoint.resync`) + the walker (jobs.operations.bulk_walk), which
        creates one delivery per message (never two, however many the endpoint had of it)

Snapshot-bound: `max_id` is the highest such message id at the start, so messages published
afterwards (delivered by the fast lane anyway) are not re-sent. Each re-sync delivery gets one
attempt, like every bulk delivery.

A failed re-sync delivery is dead-lettered — nothing a re-sync sends fails silently, and the
operator retries it from the DLQ like any failure — but never twice for one message: when the
message already has an active DLQ entry for this endpoint, the re-sync delivery acts as that
entry's retry (entry → `retrying`; success resolves it, failure re-activates it with the
attempt appended, a cancel puts it back). Only a message without one gets a new entry on
failure. (Svix's "recover" re-sends failed messages; a re-sync re-sends all, so it also cleans
up the DLQ entries it makes obsolete.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from arq.connections import ArqRedis
from tortoise.expressions import Subquery
from tortoise.queryset import QuerySet

from jobs.errors import ConflictError, NotFoundError
from jobs.operations.bulk import Preview, Started, launch
from jobs.operations.reasons import check_reason
from models.deliveries import Delivery, Message
from models.endpoints import Endpoint
from models.enums import BulkKind


class NothingToResyncError(ConflictError):
    code = "nothing_to_resync"


class EndpointDisabledError(ConflictError):
    code = "endpoint_disabled"


def resync_messages(endpoint_id: int, since: datetime | None = None,
                    max_id: int | None = None) -> QuerySet[Message]:
    """The messages the endpoint ever received (each once), optionally created at or after
    `since`, bounded by the snapshot `max_id`."""
    query = Message.filter(id__in=Subquery(
        Delivery.filter(endpoint_id=endpoint_id).values("message_id")))
    if since is not None:
        query = query.filter(created_at__gte=since)
    if max_id is not None:
        query = query.filter(id__lte=max_id)
    return query


def scope_messages(scope: dict[str, Any]) -> QuerySet[Message]:
    """`resync_messages` of an operation's stored scope."""
    since = scope.get("since")
    return resync_messages(int(scope["endpoint_id"]),
                           datetime.fromisoformat(since) if since else None,
                           scope.get("max_id"))


def _aware(since: datetime | None) -> datetime | None:
    if since is not None and since.tzinfo is None:
        return since.replace(tzinfo=UTC)  # a naive time is read as UTC, like DlqFilter
    return since


async def _endpoint(endpoint_id: int) -> Endpoint:
    """The endpoint to re-sync: 404 when gone, 409 when disabled (nothing could arrive)."""
    endpoint = await Endpoint.get_or_none(id=endpoint_id)
    if endpoint is None:
        raise NotFoundError(f"endpoint {endpoint_id} does not exist")
    if not endpoint.enabled:
        why = f" ({endpoint.disabled_reason})" if endpoint.disabled_reason else ""
        raise EndpointDisabledError(
            f"endpoint {endpoint_id} is disabled{why}; enable it before re-syncing "
            "(nothing can be delivered to a disabled endpoint)",
            {"endpoint_id": endpoint_id, "disabled_reason": endpoint.disabled_reason})
    return endpoint


async def _frozen(endpoint_id: int, since: datetime | None,
                  snapshot: int | None) -> tuple[int | None, int]:
    """(snapshot, total): the highest matching message id now (or the one given) and the
    number of messages up to it."""
    if snapshot is None:
        top = await resync_messages(endpoint_id, since).order_by("-id").first().values_list(
            "id", flat=True)
        if not top:
            return None, 0
        snapshot = int(top)  # type: ignore[call-overload]
    return snapshot, await resync_messages(endpoint_id, since, snapshot).count()


async def preview_resync(endpoint_id: int, *, since: datetime | None = None,
                         snapshot: int | None = None) -> Preview:
    """How many messages a re-sync of the endpoint would re-send, and the snapshot that
    freezes that selection. Changes nothing.

    Raises:
        NotFoundError: no such endpoint.
        ConflictError: the endpoint is disabled.
    """
    await _endpoint(endpoint_id)
    top, total = await _frozen(endpoint_id, _aware(since), snapshot)
    return Preview(total=total, snapshot=top if total else None)


async def start_resync(endpoint_id: int, actor: str, *, since: datetime | None = None,
                       reason: str | None = None, snapshot: int | None = None,
                       redis: ArqRedis) -> Started:
    """Re-send every message the endpoint received (since `since`), frozen at `snapshot` (or
    now), as new deliveries in the background; returns at once. One audit row.

    Raises:
        ValidationError: a reason is required and missing (or too long).
        NotFoundError: no such endpoint.
        ConflictError: the endpoint is disabled, or it never received a message (in range).
    """
    reason = check_reason(reason, destructive=True)
    await _endpoint(endpoint_id)
    since = _aware(since)
    started_at = datetime.now(UTC)
    top, total = await _frozen(endpoint_id, since, snapshot)
    if not total or top is None:
        when = f" since {since.isoformat()}" if since else ""
        raise NothingToResyncError(
            f"nothing to re-sync: endpoint {endpoint_id} received no message{when}",
            {"endpoint_id": endpoint_id})
    scope: dict[str, Any] = {"endpoint_id": endpoint_id, "max_id": top}
    if since is not None:
        scope["since"] = since.isoformat()
    op_id = await launch(BulkKind.RESYNC, scope, total, actor, reason=reason,
                         started_at=started_at, redis=redis, endpoint_id=endpoint_id)
    return Started(operation_id=op_id, total=total, snapshot=top)
